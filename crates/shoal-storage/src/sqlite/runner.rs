//! [`SqliteRunnerStorage`]: runner membership and shard leases in SQLite.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};

use super::queries::Queries;
use crate::encoded::{EncodedLease, EncodedRunner, EncodedRunnerStorage, Typed};
use crate::error::StorageError;
use crate::options::StorageOptions;
use crate::sql::call::{Checkout, call, map_error, with_deadline};
use crate::sql::{migrations, millis, sorted_shards, ttl_millis};

const BACKEND: &str = "sqlite";

/// The SQLite migrations, embedded from `migrations/sqlite/` (with `{prefix}` placeholders).
static MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");

/// Where a [`SqliteRunnerStorage`] keeps its database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqliteLocation {
    /// A database file, created if missing. Several processes may share it: SQLite's file locks
    /// serialize their writes.
    File(PathBuf),
    /// A private in-memory database, shared by every connection of this storage (and its
    /// clones) and gone when the last clone is dropped.
    Memory,
}

impl SqliteLocation {
    /// Reads a `sqlite:` URL: `sqlite::memory:` (or `sqlite://:memory:`) for memory,
    /// `sqlite:relative/path.db`, `sqlite://relative/path.db` or `sqlite:///absolute/path.db`
    /// for a file. A query string (`?...`) is not accepted: options come from
    /// [`StorageOptions`].
    ///
    /// ```
    /// use std::path::PathBuf;
    /// use shoal_storage::SqliteLocation;
    ///
    /// assert_eq!(SqliteLocation::from_url("sqlite::memory:")?, SqliteLocation::Memory);
    /// assert_eq!(
    ///     SqliteLocation::from_url("sqlite:///var/lib/shoal/cluster.db")?,
    ///     SqliteLocation::File(PathBuf::from("/var/lib/shoal/cluster.db")),
    /// );
    /// assert_eq!(
    ///     SqliteLocation::from_url("sqlite:shoal.db")?,
    ///     SqliteLocation::File(PathBuf::from("shoal.db")),
    /// );
    /// # Ok::<(), shoal_storage::StorageError>(())
    /// ```
    pub fn from_url(url: &str) -> Result<Self, StorageError> {
        let invalid = |detail: &str| StorageError::InvalidArgument {
            operation: "connect",
            detail: format!("SQLite URL {url:?}: {detail}"),
        };
        let rest = url
            .strip_prefix("sqlite:")
            .ok_or_else(|| invalid("it must start with `sqlite:`"))?;
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        if rest.contains('?') {
            return Err(invalid(
                "query parameters are not supported; set options through StorageOptions",
            ));
        }
        match rest {
            ":memory:" => Ok(Self::Memory),
            "" => Err(invalid("no database path")),
            path => Ok(Self::File(PathBuf::from(path))),
        }
    }
}

/// Keeps a private in-memory database alive while the pool's connections come and go (a
/// connection closed after a time-out must not take the database with it).
struct MemoryKeeper {
    _conn: parking_lot::Mutex<SqliteConnection>,
}

impl std::fmt::Debug for MemoryKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryKeeper")
    }
}

/// Runner membership and shard leases in SQLite: the [`EncodedRunnerStorage`] that
/// [`SqliteRunnerStorage::open`] wraps in [`Typed`] to give a
/// [`RunnerStorage`](crate::RunnerStorage).
///
/// A file database runs in WAL mode with `synchronous = NORMAL` and a busy timeout equal to
/// [`StorageOptions::call_timeout`]; every lease change is one statement or a `BEGIN IMMEDIATE`
/// transaction, so processes sharing the file never give a shard two live owners. Every call runs
/// under the call deadline and closes its connection on failure. Cheap to clone.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use shoal_protocol::{Incarnation, Runner, RunnerId, ShardGroup};
/// use shoal_storage::{RunnerStorage, SqliteLocation, SqliteRunnerStorage, StorageOptions};
///
/// let storage = SqliteRunnerStorage::open(SqliteLocation::Memory, StorageOptions::new()).await?;
/// let runner = Runner::new("127.0.0.1:34431".parse()?, [ShardGroup::default_group()], 1.try_into()?);
/// let me = RunnerId::new(runner.address.clone(), Incarnation::random());
/// storage.register(&runner, me.incarnation, true, Duration::from_secs(30)).await?;
/// let held = storage.acquire(&me, &["default:7".parse()?], Duration::from_secs(30)).await?;
/// assert_eq!(held[0].epoch.0, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct SqliteRunnerStorage {
    pool: SqlitePool,
    options: StorageOptions,
    sql: Arc<Queries>,
    location: SqliteLocation,
    _keeper: Option<Arc<MemoryKeeper>>,
}

/// Distinguishes the in-memory databases of one process.
static MEMORY_DATABASES: AtomicU64 = AtomicU64::new(0);

impl SqliteRunnerStorage {
    /// Opens (creating if needed) the database at `location`, applies the migrations unless
    /// [`StorageOptions::migrate`] is off (then only checks the database answers), and returns
    /// the typed storage.
    pub async fn open(
        location: SqliteLocation,
        options: StorageOptions,
    ) -> Result<Typed<Self>, StorageError> {
        let call_timeout = options.call_timeout;
        let base = SqliteConnectOptions::new()
            .busy_timeout(options.call_timeout)
            .synchronous(SqliteSynchronous::Normal);
        let (connect_options, keeper) = match &location {
            SqliteLocation::File(path) => (
                base.filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal),
                None,
            ),
            SqliteLocation::Memory => {
                // The `memdb` VFS shares a database named with a leading `/` between the
                // connections of this process, with ordinary locking (busy timeout applies).
                let n = MEMORY_DATABASES.fetch_add(1, Ordering::Relaxed);
                let name = format!("/shoal-memory-{}-{n}", std::process::id());
                let options = base.filename(name).vfs("memdb");
                let keeper = with_deadline(BACKEND, "connect", 0, call_timeout, {
                    let options = options.clone();
                    async move {
                        options
                            .connect()
                            .await
                            .map_err(|e| StorageError::backend("connect", e))
                    }
                })
                .await?;
                let keeper = MemoryKeeper {
                    _conn: parking_lot::Mutex::new(keeper),
                };
                (options, Some(Arc::new(keeper)))
            }
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.call_timeout)
            .connect_lazy_with(connect_options);
        Self {
            sql: Arc::new(Queries::new(&options.table_prefix)),
            pool,
            options,
            location,
            _keeper: keeper,
        }
        .ready()
        .await
    }

    /// Migrates or pings, per the options.
    async fn ready(self) -> Result<Typed<Self>, StorageError> {
        if self.options.migrate {
            self.migrate().await?;
        } else {
            self.ping().await?;
        }
        Ok(Typed(self))
    }

    /// A storage on the same database and connection pool with other options, for example
    /// another table prefix (a second cluster in the same database). Applies that prefix's
    /// migrations unless the options say not to. The pool keeps the busy timeout it was created
    /// with.
    pub async fn with_options(&self, options: StorageOptions) -> Result<Typed<Self>, StorageError> {
        Self {
            sql: Arc::new(Queries::new(&options.table_prefix)),
            pool: self.pool.clone(),
            options,
            location: self.location.clone(),
            _keeper: self._keeper.clone(),
        }
        .ready()
        .await
    }

    /// Opens the database a `sqlite:` URL names (see [`SqliteLocation::from_url`]).
    pub async fn connect(url: &str, options: StorageOptions) -> Result<Typed<Self>, StorageError> {
        Self::open(SqliteLocation::from_url(url)?, options).await
    }

    /// Opens (creating if needed) the database file at `path`.
    pub async fn open_file(
        path: impl AsRef<Path>,
        options: StorageOptions,
    ) -> Result<Typed<Self>, StorageError> {
        Self::open(SqliteLocation::File(path.as_ref().to_owned()), options).await
    }

    /// A new private in-memory database.
    pub async fn in_memory(options: StorageOptions) -> Result<Typed<Self>, StorageError> {
        Self::open(SqliteLocation::Memory, options).await
    }

    /// Applies the embedded migrations for this storage's table prefix (idempotent). The whole
    /// run holds SQLite's write lock (`BEGIN IMMEDIATE`), so processes opening the same file at
    /// once migrate one after the other. Bounded by [`StorageOptions::migration_timeout`].
    pub async fn migrate(&self) -> Result<(), StorageError> {
        let timeout = self.options.migration_timeout;
        let migrator = migrations::for_prefix(&MIGRATIONS, &self.options.table_prefix);
        with_deadline(BACKEND, "migrate", 0, timeout, async {
            let mut checkout = Checkout::take(BACKEND, &self.pool, "migrate", timeout).await?;
            let mut tx = checkout
                .conn()
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(|e| map_error(BACKEND, "migrate", timeout, e))?;
            migrator
                .run(&mut *tx)
                .await
                .map_err(|e| StorageError::Migration(Box::new(e)))?;
            tx.commit()
                .await
                .map_err(|e| map_error(BACKEND, "migrate", timeout, e))?;
            checkout.finish();
            Ok(())
        })
        .await
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.call("ping", 0, async |conn| {
            sqlx::query("SELECT 1").execute(conn).await.map(drop)
        })
        .await
    }

    /// The connection pool (for example to inspect the tables).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Where the database is.
    pub fn location(&self) -> &SqliteLocation {
        &self.location
    }

    /// The options this storage runs with.
    pub fn options(&self) -> &StorageOptions {
        &self.options
    }

    async fn call<T>(
        &self,
        operation: &'static str,
        shards: usize,
        work: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, StorageError> {
        call(
            BACKEND,
            &self.pool,
            self.options.call_timeout,
            operation,
            shards,
            work,
        )
        .await
    }
}

/// A JSON array of shard texts, bound as one parameter and read with `json_each`.
fn shards_json(shards: &[&str]) -> String {
    serde_json::Value::from(shards.to_vec()).to_string()
}

#[async_trait]
impl EncodedRunnerStorage for SqliteRunnerStorage {
    async fn register(
        &self,
        address: &str,
        runner: &str,
        incarnation: i64,
        healthy: bool,
        ttl: Duration,
    ) -> Result<Option<(i64, i64)>, StorageError> {
        let ttl = ttl_millis("register", ttl)?;
        let register = self.sql.register.clone();
        let registered = self.sql.registered.clone();
        self.call("register", 0, async |conn| {
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            let written = sqlx::query(register)
                .bind(address)
                .bind(runner)
                .bind(incarnation)
                .bind(healthy)
                .bind(ttl)
                .fetch_optional(&mut *tx)
                .await?;
            let holder = match written {
                Some(_) => None,
                None => Some(
                    sqlx::query_as::<_, (i64, i64)>(registered)
                        .bind(address)
                        .fetch_optional(&mut *tx)
                        .await?
                        .unwrap_or((0, 0)),
                ),
            };
            tx.commit().await?;
            Ok(holder)
        })
        .await
    }

    async fn unregister(&self, address: &str, incarnation: i64) -> Result<(), StorageError> {
        let sql = self.sql.unregister.clone();
        let keep = millis(self.options.forget_dead_runners_after);
        self.call("unregister", 0, async |conn| {
            sqlx::query(sql)
                .bind(address)
                .bind(incarnation)
                .bind(keep)
                .execute(conn)
                .await
                .map(drop)
        })
        .await
    }

    async fn runners(&self) -> Result<Vec<EncodedRunner>, StorageError> {
        let sql = self.sql.runners.clone();
        let rows = self
            .call("runners", 0, async |conn| {
                sqlx::query_as::<_, (String, String, i64, bool, String)>(sql)
                    .fetch_all(conn)
                    .await
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(address, runner, incarnation, healthy, unreachable)| EncodedRunner {
                    address,
                    runner,
                    incarnation,
                    healthy,
                    unreachable,
                },
            )
            .collect())
    }

    async fn set_runner_health(&self, address: &str, healthy: bool) -> Result<(), StorageError> {
        let sql = self.sql.set_runner_health.clone();
        self.call("set_runner_health", 0, async |conn| {
            sqlx::query(sql)
                .bind(address)
                .bind(healthy)
                .execute(conn)
                .await
                .map(drop)
        })
        .await
    }

    async fn report_unreachable(
        &self,
        address: &str,
        incarnation: i64,
        unreachable: &str,
    ) -> Result<(), StorageError> {
        let sql = self.sql.report_unreachable.clone();
        self.call("report_unreachable", 0, async |conn| {
            sqlx::query(sql)
                .bind(address)
                .bind(incarnation)
                .bind(unreachable)
                .execute(conn)
                .await
                .map(drop)
        })
        .await
    }

    async fn leases(&self) -> Result<Vec<EncodedLease>, StorageError> {
        let sql = self.sql.leases.clone();
        self.call("leases", 0, async |conn| {
            sqlx::query_as::<_, EncodedLease>(sql).fetch_all(conn).await
        })
        .await
    }

    async fn acquire(
        &self,
        address: &str,
        incarnation: i64,
        shards: &[String],
        ttl: Duration,
    ) -> Result<Vec<(String, i64)>, StorageError> {
        let ttl = ttl_millis("acquire", ttl)?;
        if shards.is_empty() {
            return Ok(Vec::new());
        }
        let shards = sorted_shards(shards);
        let json = shards_json(&shards);
        let sql = self.sql.acquire.clone();
        self.call("acquire", shards.len(), async |conn| {
            sqlx::query_as::<_, (String, i64)>(sql)
                .bind(address)
                .bind(incarnation)
                .bind(json)
                .bind(ttl)
                .fetch_all(conn)
                .await
        })
        .await
    }

    async fn refresh(
        &self,
        address: &str,
        incarnation: i64,
        shards: &[String],
        ttl: Duration,
    ) -> Result<Vec<(String, i64)>, StorageError> {
        let ttl = ttl_millis("refresh", ttl)?;
        let shards = sorted_shards(shards);
        let json = shards_json(&shards);
        let heartbeat = self.sql.heartbeat.clone();
        let refresh = self.sql.refresh.clone();
        self.call("refresh", shards.len(), async |conn| {
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            sqlx::query(heartbeat)
                .bind(address)
                .bind(incarnation)
                .bind(ttl)
                .execute(&mut *tx)
                .await?;
            let held = sqlx::query_as::<_, (String, i64)>(refresh)
                .bind(address)
                .bind(incarnation)
                .bind(json)
                .bind(ttl)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(held)
        })
        .await
    }

    async fn release(
        &self,
        address: &str,
        incarnation: i64,
        shards: &[String],
    ) -> Result<(), StorageError> {
        if shards.is_empty() {
            return Ok(());
        }
        let shards = sorted_shards(shards);
        let json = shards_json(&shards);
        let sql = self.sql.release.clone();
        self.call("release", shards.len(), async |conn| {
            sqlx::query(sql)
                .bind(address)
                .bind(incarnation)
                .bind(json)
                .execute(conn)
                .await
                .map(drop)
        })
        .await
    }

    async fn release_all(&self, address: &str, incarnation: i64) -> Result<(), StorageError> {
        let sql = self.sql.release_all.clone();
        self.call("release_all", 0, async |conn| {
            sqlx::query(sql)
                .bind(address)
                .bind(incarnation)
                .execute(conn)
                .await
                .map(drop)
        })
        .await
    }

    async fn lease_machine_id(
        &self,
        incarnation: i64,
        now_ms: i64,
        ttl: Duration,
    ) -> Result<Option<(i64, i64, i64)>, StorageError> {
        let ttl = ttl_millis("lease_machine_id", ttl)?;
        let free = self.sql.free_machine_id.clone();
        let take = self.sql.take_machine_id.clone();
        self.call("lease_machine_id", 0, async |conn| {
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            let candidate = sqlx::query_as::<_, (i64, i64)>(free)
                .bind(incarnation)
                .bind(now_ms)
                .fetch_optional(&mut *tx)
                .await?;
            let Some((machine, floor)) = candidate else {
                return Ok(None);
            };
            let reserved = sqlx::query_scalar::<_, i64>(take)
                .bind(machine)
                .bind(incarnation)
                .bind(ttl)
                .bind(now_ms)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some((machine, floor, reserved)))
        })
        .await
    }

    async fn renew_machine_id(
        &self,
        machine_id: i64,
        incarnation: i64,
        now_ms: i64,
        ttl: Duration,
    ) -> Result<Option<i64>, StorageError> {
        let ttl = ttl_millis("renew_machine_id", ttl)?;
        let sql = self.sql.renew_machine_id.clone();
        self.call("renew_machine_id", 0, async |conn| {
            sqlx::query_scalar::<_, i64>(sql)
                .bind(machine_id)
                .bind(incarnation)
                .bind(now_ms)
                .bind(ttl)
                .fetch_optional(conn)
                .await
        })
        .await
    }

    async fn release_machine_id(
        &self,
        machine_id: i64,
        incarnation: i64,
        minted_until: i64,
    ) -> Result<(), StorageError> {
        let sql = self.sql.release_machine_id.clone();
        self.call("release_machine_id", 0, async |conn| {
            sqlx::query(sql)
                .bind(machine_id)
                .bind(incarnation)
                .bind(minted_until)
                .execute(conn)
                .await
                .map(drop)
        })
        .await
    }

    async fn machine_ids(&self) -> Result<Vec<(i64, i64)>, StorageError> {
        let sql = self.sql.machine_ids.clone();
        self.call("machine_ids", 0, async |conn| {
            sqlx::query_as::<_, (i64, i64)>(sql).fetch_all(conn).await
        })
        .await
    }

    async fn cluster_parameters(
        &self,
        proposed: &[(String, String)],
    ) -> Result<Vec<(String, String)>, StorageError> {
        let json = serde_json::Value::Object(
            proposed
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
                .collect(),
        )
        .to_string();
        let store = self.sql.store_parameters.clone();
        let read = self.sql.parameters.clone();
        self.call("cluster_parameters", 0, async |conn| {
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            sqlx::query(store).bind(json).execute(&mut *tx).await?;
            let stored = sqlx::query_as::<_, (String, String)>(read)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(stored)
        })
        .await
    }
}

impl FromStr for SqliteLocation {
    type Err = StorageError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        Self::from_url(url)
    }
}
