//! One message-storage environment per backend: the message storage, the runner storage of the
//! same backend (to move shard leases for fencing), raw SQL access, other handles on the same
//! database, and clean-up.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shoal_storage::{
    MemoryMessageStorage, MemoryRunnerStorage, MessageStorage, PostgresMessageStorage,
    PostgresRunnerStorage, RunnerStorage, SqliteMessageStorage, SqliteRunnerStorage,
    StorageOptions, TablePrefix,
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
        runners: SqliteRunnerStorage,
    },
    SqliteMemory {
        runners: SqliteRunnerStorage,
    },
    Postgres {
        url: String,
        runners: PostgresRunnerStorage,
        messages: PostgresMessageStorage,
    },
}

/// A fresh, empty message storage of one backend, with the runner storage it is fenced by.
pub struct Env {
    pub kind: Kind,
    pub messages: Arc<dyn MessageStorage>,
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
        "m{}_{:x}_{n}",
        std::process::id(),
        nanos & 0xff_ffff_ffff
    ))
    .unwrap()
}

/// Options for tests: a unique prefix, a deadline generous enough for a loaded 2-core machine.
pub fn test_options() -> StorageOptions {
    StorageOptions::new()
        .with_table_prefix(unique_prefix())
        .with_call_timeout(Duration::from_secs(10))
}

fn unreachable_postgres(error: impl std::fmt::Display) -> ! {
    panic!(
        "Postgres at DATABASE_URL (or the default postgres://postgres@127.0.0.1:5432/test) is \
         unreachable: {error}. Start it (pg_ctlcluster 15 main start) — these tests never skip."
    )
}

impl Env {
    pub async fn open(kind: Kind) -> Self {
        let options = test_options();
        match kind {
            Kind::Memory => {
                let runners = Arc::new(MemoryRunnerStorage::new());
                let messages = Arc::new(MemoryMessageStorage::new(runners.clone()));
                Self {
                    kind,
                    messages,
                    runners,
                    inner: Inner::Memory,
                }
            }
            Kind::SqliteFile => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("shoal.db");
                let runners = SqliteRunnerStorage::open_file(&path, options)
                    .await
                    .unwrap()
                    .0;
                let messages = SqliteMessageStorage::new(&runners).await.unwrap();
                Self {
                    kind,
                    messages: Arc::new(messages),
                    runners: Arc::new(shoal_storage::Typed(runners.clone())),
                    inner: Inner::SqliteFile {
                        _dir: dir,
                        path,
                        runners,
                    },
                }
            }
            Kind::SqliteMemory => {
                let runners = SqliteRunnerStorage::in_memory(options).await.unwrap().0;
                let messages = SqliteMessageStorage::new(&runners).await.unwrap();
                Self {
                    kind,
                    messages: Arc::new(messages),
                    runners: Arc::new(shoal_storage::Typed(runners.clone())),
                    inner: Inner::SqliteMemory { runners },
                }
            }
            Kind::Postgres => {
                let url = database_url();
                let runners = PostgresRunnerStorage::connect(&url, options)
                    .await
                    .unwrap_or_else(|e| unreachable_postgres(e))
                    .0;
                let messages = PostgresMessageStorage::new(&runners).await.unwrap();
                Self {
                    kind,
                    messages: Arc::new(messages.clone()),
                    runners: Arc::new(shoal_storage::Typed(runners.clone())),
                    inner: Inner::Postgres {
                        url,
                        runners,
                        messages,
                    },
                }
            }
        }
    }

    /// The SQL options (None for memory).
    pub fn options(&self) -> Option<&StorageOptions> {
        match &self.inner {
            Inner::Memory => None,
            Inner::SqliteFile { runners, .. } | Inner::SqliteMemory { runners } => {
                Some(runners.options())
            }
            Inner::Postgres { runners, .. } => Some(runners.options()),
        }
    }

    /// Another message storage on the same database, as another process would open it (its own
    /// pool for a SQLite file or Postgres; for memory and SQLite memory, the same database).
    pub async fn other_process(&self) -> Arc<dyn MessageStorage> {
        match &self.inner {
            Inner::Memory => self.messages.clone(),
            Inner::SqliteMemory { runners } => {
                Arc::new(SqliteMessageStorage::new(runners).await.unwrap())
            }
            Inner::SqliteFile { path, runners, .. } => {
                let options = runners.options().clone().with_migrate(false);
                let runners = SqliteRunnerStorage::open_file(path, options).await.unwrap();
                Arc::new(SqliteMessageStorage::new(runners.inner()).await.unwrap())
            }
            Inner::Postgres { .. } => Arc::new(self.postgres_process(|o| o).await),
        }
    }

    /// The Postgres message storage of this environment.
    pub fn postgres(&self) -> &PostgresMessageStorage {
        match &self.inner {
            Inner::Postgres { messages, .. } => messages,
            _ => panic!("not a Postgres environment"),
        }
    }

    /// Another Postgres message storage on its own pool, with changed options.
    pub async fn postgres_process(
        &self,
        change: impl FnOnce(StorageOptions) -> StorageOptions,
    ) -> PostgresMessageStorage {
        match &self.inner {
            Inner::Postgres { url, runners, .. } => {
                let options = change(runners.options().clone().with_migrate(false));
                PostgresMessageStorage::connect(url, options).await.unwrap()
            }
            _ => panic!("not a Postgres environment"),
        }
    }

    /// The SQLite database file of this environment.
    pub fn sqlite_path(&self) -> &std::path::Path {
        match &self.inner {
            Inner::SqliteFile { path, .. } => path,
            _ => panic!("not a SQLite file environment"),
        }
    }

    /// An SQL expression of the database clock in this backend's time representation.
    pub fn now_sql(&self) -> &'static str {
        match self.kind {
            Kind::Postgres => "now()",
            _ => "CAST(unixepoch('subsec') * 1000 AS INTEGER)",
        }
    }

    /// An SQL literal of the bytes given in hex, in this backend's dialect.
    pub fn blob_sql(&self, hex: &str) -> String {
        match self.kind {
            Kind::Postgres => format!("'\\x{hex}'::bytea"),
            _ => format!("X'{hex}'"),
        }
    }

    /// Runs raw SQL (with `{prefix}` substituted) on the backend's database.
    pub async fn exec(&self, sql: &str) {
        match &self.inner {
            Inner::Memory => panic!("the memory backend has no SQL"),
            Inner::SqliteFile { runners, .. } | Inner::SqliteMemory { runners } => {
                let sql = runners.options().table_prefix.substitute(sql);
                runners
                    .pool()
                    .execute(sqlx::AssertSqlSafe(sql))
                    .await
                    .unwrap();
            }
            Inner::Postgres { runners, .. } => {
                let sql = runners.options().table_prefix.substitute(sql);
                runners
                    .pool()
                    .execute(sqlx::AssertSqlSafe(sql))
                    .await
                    .unwrap();
            }
        }
    }

    /// Drops a Postgres test's tables (SQLite temp files and memory go away by themselves).
    pub async fn cleanup(self) {
        if let Inner::Postgres { url, runners, .. } = &self.inner {
            drop_postgres_tables(url, &runners.options().table_prefix).await;
        }
    }
}

/// Drops every object a prefix created in Postgres.
pub async fn drop_postgres_tables(url: &str, prefix: &TablePrefix) {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| unreachable_postgres(e));
    conn.execute(sqlx::AssertSqlSafe(prefix.substitute(
        "DROP TABLE IF EXISTS {prefix}_messages, {prefix}_replies, {prefix}_leases, \
         {prefix}_runners, {prefix}_migrations CASCADE",
    )))
    .await
    .unwrap();
    conn.close().await.unwrap();
}
