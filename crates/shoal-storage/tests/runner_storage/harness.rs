//! One storage environment per backend: how to open it, open another process's view of the
//! same database, reach its tables directly, and clean up.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shoal_storage::{
    MemoryRunnerStorage, PostgresRunnerStorage, RunnerStorage, SqliteRunnerStorage, StorageOptions,
    TablePrefix, Typed,
};
use sqlx::{Connection, Executor};

/// Which backend a test module runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Memory,
    SqliteFile,
    SqliteMemory,
    Postgres,
}

enum Inner {
    Memory(Arc<MemoryRunnerStorage>),
    SqliteFile {
        _dir: tempfile::TempDir,
        path: PathBuf,
        storage: Typed<SqliteRunnerStorage>,
    },
    SqliteMemory(Typed<SqliteRunnerStorage>),
    Postgres {
        url: String,
        storage: Typed<PostgresRunnerStorage>,
    },
}

/// A fresh, empty storage of one backend.
pub struct Env {
    pub kind: Kind,
    pub storage: Arc<dyn RunnerStorage>,
    inner: Inner,
}

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A table prefix no other test (or test run) uses.
pub fn unique_prefix() -> TablePrefix {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    TablePrefix::new(&format!(
        "t{}_{:x}_{n}",
        std::process::id(),
        nanos & 0xff_ffff_ffff
    ))
    .unwrap()
}

/// Options for tests: a unique prefix (so parallel tests share a database safely), a call
/// deadline generous enough for a loaded 2-core machine.
pub fn test_options() -> StorageOptions {
    StorageOptions::new()
        .with_table_prefix(unique_prefix())
        .with_call_timeout(Duration::from_secs(10))
}

impl Env {
    pub async fn open(kind: Kind) -> Self {
        Self::open_with(kind, test_options()).await
    }

    pub async fn open_with(kind: Kind, options: StorageOptions) -> Self {
        let inner = match kind {
            Kind::Memory => Inner::Memory(Arc::new(MemoryRunnerStorage::new())),
            Kind::SqliteFile => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("shoal.db");
                let storage = SqliteRunnerStorage::open_file(&path, options)
                    .await
                    .unwrap();
                Inner::SqliteFile {
                    _dir: dir,
                    path,
                    storage,
                }
            }
            Kind::SqliteMemory => {
                Inner::SqliteMemory(SqliteRunnerStorage::in_memory(options).await.unwrap())
            }
            Kind::Postgres => {
                let url = database_url();
                let storage = PostgresRunnerStorage::connect(&url, options)
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "Postgres at DATABASE_URL (or the default \
                             postgres://postgres@127.0.0.1:5432/test) is unreachable: {e}. \
                             Start it (pg_ctlcluster 15 main start) — these tests never skip."
                        )
                    });
                Inner::Postgres { url, storage }
            }
        };
        let storage: Arc<dyn RunnerStorage> = match &inner {
            Inner::Memory(s) => s.clone(),
            Inner::SqliteFile { storage, .. } => Arc::new(storage.clone()),
            Inner::SqliteMemory(s) => Arc::new(s.clone()),
            Inner::Postgres { storage, .. } => Arc::new(storage.clone()),
        };
        Self {
            kind,
            storage,
            inner,
        }
    }

    /// The SQL options this environment runs with (None for memory).
    pub fn options(&self) -> Option<&StorageOptions> {
        match &self.inner {
            Inner::Memory(_) => None,
            Inner::SqliteFile { storage, .. } | Inner::SqliteMemory(storage) => {
                Some(storage.inner().options())
            }
            Inner::Postgres { storage, .. } => Some(storage.inner().options()),
        }
    }

    /// Another handle on the same database, as a separate process would have it: its own pool for
    /// a SQLite file or Postgres (migrations already applied), the same instance otherwise.
    pub async fn handle(&self) -> Arc<dyn RunnerStorage> {
        self.handle_with(|o| o).await
    }

    /// Like [`Env::handle`], with changed options (same prefix unless changed).
    pub async fn handle_with(
        &self,
        change: impl FnOnce(StorageOptions) -> StorageOptions,
    ) -> Arc<dyn RunnerStorage> {
        match &self.inner {
            Inner::Memory(s) => s.clone(),
            Inner::SqliteMemory(s) => {
                let options = change(s.inner().options().clone());
                Arc::new(s.inner().with_options(options).await.unwrap())
            }
            Inner::SqliteFile { path, storage, .. } => {
                let options = change(storage.inner().options().clone());
                Arc::new(SqliteRunnerStorage::open_file(path, options).await.unwrap())
            }
            Inner::Postgres { url, storage } => {
                let options = change(storage.inner().options().clone());
                Arc::new(PostgresRunnerStorage::connect(url, options).await.unwrap())
            }
        }
    }

    /// Runs raw SQL (with `{prefix}` substituted) on the backend's database.
    pub async fn exec(&self, sql: &str) {
        match &self.inner {
            Inner::Memory(_) => panic!("the memory backend has no SQL"),
            Inner::SqliteFile { storage, .. } | Inner::SqliteMemory(storage) => {
                let sql = storage.inner().options().table_prefix.substitute(sql);
                storage
                    .inner()
                    .pool()
                    .execute(sqlx::AssertSqlSafe(sql))
                    .await
                    .unwrap();
            }
            Inner::Postgres { storage, .. } => {
                let sql = storage.inner().options().table_prefix.substitute(sql);
                storage
                    .inner()
                    .pool()
                    .execute(sqlx::AssertSqlSafe(sql))
                    .await
                    .unwrap();
            }
        }
    }

    /// An SQL expression for "now plus one hour" in this backend's time representation.
    pub fn in_one_hour(&self) -> &'static str {
        match self.kind {
            Kind::Postgres => "now() + interval '1 hour'",
            _ => "(CAST(unixepoch('subsec') * 1000 AS INTEGER) + 3600000)",
        }
    }

    pub fn sqlite_path(&self) -> Option<&std::path::Path> {
        match &self.inner {
            Inner::SqliteFile { path, .. } => Some(path),
            _ => None,
        }
    }

    /// Drops a Postgres test's tables (SQLite temp files and memory go away by themselves).
    pub async fn cleanup(self) {
        if let Inner::Postgres { url, storage } = &self.inner {
            drop_postgres_tables(url, &storage.inner().options().table_prefix).await;
        }
    }
}

/// Drops every object a prefix created in Postgres.
pub async fn drop_postgres_tables(url: &str, prefix: &TablePrefix) {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    conn.execute(sqlx::AssertSqlSafe(prefix.substitute(
        "DROP TABLE IF EXISTS {prefix}_messages, {prefix}_replies, {prefix}_leases, \
         {prefix}_runners, {prefix}_migrations CASCADE",
    )))
    .await
    .unwrap();
    conn.close().await.unwrap();
}
