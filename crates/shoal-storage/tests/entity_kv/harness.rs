//! One entity-KV environment per backend: the KV storage, the runner storage whose leases fence
//! it (same database, same prefix), raw SQL access, and clean-up.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shoal_storage::kv::{EntityKv, MemoryEntityKv, PostgresEntityKv, SqliteEntityKv};
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
    Memory,
    SqliteFile {
        _dir: tempfile::TempDir,
        path: PathBuf,
        storage: Typed<SqliteRunnerStorage>,
    },
    SqliteMemory(Typed<SqliteRunnerStorage>),
    Postgres {
        url: String,
        storage: Typed<PostgresRunnerStorage>,
        /// Prefixes created by [`Env::other_prefix`], dropped at clean-up.
        extra: parking_lot::Mutex<Vec<TablePrefix>>,
    },
}

/// A fresh, empty entity KV of one backend, with the runner storage that fences it.
pub struct Env {
    pub kind: Kind,
    pub kv: Arc<dyn EntityKv>,
    pub runners: Arc<dyn RunnerStorage>,
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
        "kv{}_{:x}_{n}",
        std::process::id(),
        nanos & 0xff_ffff_ffff
    ))
    .unwrap()
}

pub fn test_options() -> StorageOptions {
    StorageOptions::new()
        .with_table_prefix(unique_prefix())
        .with_call_timeout(Duration::from_secs(10))
}

async fn connect_postgres(url: &str, options: StorageOptions) -> Typed<PostgresRunnerStorage> {
    PostgresRunnerStorage::connect(url, options)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Postgres at DATABASE_URL (or the default postgres://postgres@127.0.0.1:5432/test) \
                 is unreachable: {e}. Start it (pg_ctlcluster 15 main start) — these tests never \
                 skip."
            )
        })
}

impl Env {
    pub async fn open(kind: Kind) -> Self {
        let options = test_options();
        match kind {
            Kind::Memory => {
                let runners = Arc::new(MemoryRunnerStorage::new());
                Self {
                    kind,
                    kv: Arc::new(MemoryEntityKv::new(runners.clone())),
                    runners,
                    inner: Inner::Memory,
                }
            }
            Kind::SqliteFile => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("shoal.db");
                let storage = SqliteRunnerStorage::open_file(&path, options)
                    .await
                    .unwrap();
                Self {
                    kind,
                    kv: Arc::new(SqliteEntityKv::new(storage.inner())),
                    runners: Arc::new(storage.clone()),
                    inner: Inner::SqliteFile {
                        _dir: dir,
                        path,
                        storage,
                    },
                }
            }
            Kind::SqliteMemory => {
                let storage = SqliteRunnerStorage::in_memory(options).await.unwrap();
                Self {
                    kind,
                    kv: Arc::new(SqliteEntityKv::new(storage.inner())),
                    runners: Arc::new(storage.clone()),
                    inner: Inner::SqliteMemory(storage),
                }
            }
            Kind::Postgres => {
                let url = database_url();
                let storage = connect_postgres(&url, options).await;
                Self {
                    kind,
                    kv: Arc::new(PostgresEntityKv::new(storage.inner())),
                    runners: Arc::new(storage.clone()),
                    inner: Inner::Postgres {
                        url,
                        storage,
                        extra: parking_lot::Mutex::new(Vec::new()),
                    },
                }
            }
        }
    }

    /// The table prefix (SQL backends).
    pub fn prefix(&self) -> TablePrefix {
        match &self.inner {
            Inner::Memory => panic!("the memory backend has no tables"),
            Inner::SqliteFile { storage, .. } | Inner::SqliteMemory(storage) => {
                storage.inner().options().table_prefix.clone()
            }
            Inner::Postgres { storage, .. } => storage.inner().options().table_prefix.clone(),
        }
    }

    /// KV and runner storage in the same database under another table prefix (SQL backends).
    pub async fn other_prefix(&self) -> (Arc<dyn EntityKv>, Arc<dyn RunnerStorage>) {
        let options = test_options();
        match &self.inner {
            Inner::Memory => panic!("the memory backend has no prefixes"),
            Inner::SqliteFile { storage, .. } | Inner::SqliteMemory(storage) => {
                let other = storage.inner().with_options(options).await.unwrap();
                (
                    Arc::new(SqliteEntityKv::new(other.inner())),
                    Arc::new(other),
                )
            }
            Inner::Postgres { storage, extra, .. } => {
                extra.lock().push(options.table_prefix.clone());
                let other = storage.inner().with_options(options).await.unwrap();
                (
                    Arc::new(PostgresEntityKv::new(other.inner())),
                    Arc::new(other),
                )
            }
        }
    }

    /// KV on the same database and prefix with other options, as another process would open
    /// it (its own pool for a SQLite file or Postgres).
    pub async fn kv_with(
        &self,
        change: impl FnOnce(StorageOptions) -> StorageOptions,
    ) -> Arc<dyn EntityKv> {
        match &self.inner {
            Inner::Memory => panic!("the memory backend has no options"),
            Inner::SqliteMemory(storage) => {
                let options = change(storage.inner().options().clone()).with_migrate(false);
                let other = storage.inner().with_options(options).await.unwrap();
                Arc::new(SqliteEntityKv::new(other.inner()))
            }
            Inner::SqliteFile { path, storage, .. } => {
                let options = change(storage.inner().options().clone()).with_migrate(false);
                let other = SqliteRunnerStorage::open_file(path, options).await.unwrap();
                Arc::new(SqliteEntityKv::new(other.inner()))
            }
            Inner::Postgres { url, storage, .. } => {
                let options = change(storage.inner().options().clone()).with_migrate(false);
                let other = connect_postgres(url, options).await;
                Arc::new(PostgresEntityKv::new(other.inner()))
            }
        }
    }

    /// Runs raw SQL (with `{prefix}` substituted) on the backend's database.
    pub async fn exec(&self, sql: &str) {
        match &self.inner {
            Inner::Memory => panic!("the memory backend has no SQL"),
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

    pub fn sqlite_path(&self) -> Option<&std::path::Path> {
        match &self.inner {
            Inner::SqliteFile { path, .. } => Some(path),
            _ => None,
        }
    }

    /// Drops a Postgres test's tables (SQLite temp files and memory go away by themselves).
    pub async fn cleanup(self) {
        if let Inner::Postgres {
            url,
            storage,
            extra,
        } = &self.inner
        {
            let mut prefixes = extra.lock().clone();
            prefixes.push(storage.inner().options().table_prefix.clone());
            for prefix in prefixes {
                drop_postgres_prefix(url, &prefix).await;
            }
        }
    }
}

/// Drops every table (and with them their sequences) whose name starts with `{prefix}_`.
pub async fn drop_postgres_prefix(url: &str, prefix: &TablePrefix) {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let pattern = format!("{}\\_%", prefix.as_str());
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() \
         AND tablename LIKE $1",
    )
    .bind(pattern)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    if !tables.is_empty() {
        conn.execute(sqlx::AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS {} CASCADE",
            tables.join(", ")
        )))
        .await
        .unwrap();
    }
    conn.close().await.unwrap();
}
