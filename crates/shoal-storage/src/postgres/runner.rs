//! [`PostgresRunnerStorage`]: runner membership and shard leases in Postgres.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::queries::Queries;
use crate::encoded::{EncodedLease, EncodedRunner, EncodedRunnerStorage, Typed};
use crate::error::StorageError;
use crate::options::StorageOptions;
use crate::sql::call::{Checkout, call, map_error, with_deadline};
use crate::sql::{migrations, millis, sorted_shards, ttl_millis};

const BACKEND: &str = "postgres";

/// The Postgres migrations, embedded from `migrations/postgres/` (with `{prefix}` placeholders).
static MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// Runner membership and shard leases in Postgres: the [`EncodedRunnerStorage`] that
/// [`PostgresRunnerStorage::connect`] wraps in [`Typed`] to give a
/// [`RunnerStorage`](crate::RunnerStorage).
///
/// Every call runs under [`StorageOptions::call_timeout`] (the pool wait included) and, on the
/// server, under a `statement_timeout` of the same length; a call that fails or times out closes
/// the connection it used. Cheap to clone (the pool is shared).
///
/// ```no_run
/// # async fn demo() -> Result<(), shoal_storage::StorageError> {
/// use shoal_storage::{PostgresRunnerStorage, RunnerStorage, StorageOptions};
///
/// let storage =
///     PostgresRunnerStorage::connect("postgres://shoal@db/shoal", StorageOptions::new()).await?;
/// let runners = storage.runners().await?;
/// # let _ = runners;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresRunnerStorage {
    pool: PgPool,
    options: StorageOptions,
    sql: Arc<Queries>,
}

impl PostgresRunnerStorage {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`, any
    /// parameter libpq-style URLs take), applies the migrations unless
    /// [`StorageOptions::migrate`] is off (then only checks that the database answers), and
    /// returns the typed storage.
    pub async fn connect(url: &str, options: StorageOptions) -> Result<Typed<Self>, StorageError> {
        let connect_options: PgConnectOptions =
            url.parse().map_err(|e| StorageError::InvalidArgument {
                operation: "connect",
                detail: format!("not a usable Postgres URL: {e}"),
            })?;
        Self::connect_with(connect_options, options).await
    }

    /// Like [`PostgresRunnerStorage::connect`], from parsed connection options.
    pub async fn connect_with(
        connect_options: PgConnectOptions,
        options: StorageOptions,
    ) -> Result<Typed<Self>, StorageError> {
        // The server abandons a statement at the same deadline the client gives up on it, so a
        // statement orphaned by a client-side time-out does not linger holding row locks.
        let connect_options = connect_options.options([(
            "statement_timeout",
            millis(options.call_timeout).max(1).to_string(),
        )]);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.call_timeout)
            .connect_lazy_with(connect_options);
        Self::from_pool(pool, options).await
    }

    /// Uses an existing pool. Its connections should carry a `statement_timeout` no longer than
    /// [`StorageOptions::call_timeout`] ([`PostgresRunnerStorage::connect`] sets one). Applies
    /// the migrations unless [`StorageOptions::migrate`] is off, then only checks the database
    /// answers.
    pub async fn from_pool(
        pool: PgPool,
        options: StorageOptions,
    ) -> Result<Typed<Self>, StorageError> {
        let storage = Self {
            sql: Arc::new(Queries::new(&options.table_prefix)),
            pool,
            options,
        };
        if storage.options.migrate {
            storage.migrate().await?;
        } else {
            storage.ping().await?;
        }
        Ok(Typed(storage))
    }

    /// A storage on the same connection pool with other options, for example another table
    /// prefix (a second cluster in the same database). Applies that prefix's migrations unless
    /// the options say not to. The pool keeps the server-side `statement_timeout` it was
    /// created with.
    pub async fn with_options(&self, options: StorageOptions) -> Result<Typed<Self>, StorageError> {
        Self::from_pool(self.pool.clone(), options).await
    }

    /// Applies the embedded migrations for this storage's table prefix (idempotent; concurrent
    /// callers are serialized by a Postgres advisory lock). Bounded by
    /// [`StorageOptions::migration_timeout`].
    pub async fn migrate(&self) -> Result<(), StorageError> {
        let timeout = self.options.migration_timeout;
        let migrator = migrations::for_prefix(&MIGRATIONS, &self.options.table_prefix);
        with_deadline(BACKEND, "migrate", 0, timeout, async {
            let mut checkout = Checkout::take(BACKEND, &self.pool, "migrate", timeout).await?;
            // Migrations (and the wait for another migrating process) get the longer deadline;
            // the connection is closed afterwards (never `finish`ed) so the setting dies with it.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SET statement_timeout = {}",
                millis(timeout).max(1)
            )))
            .execute(&mut *checkout.conn())
            .await
            .map_err(|e| map_error(BACKEND, "migrate", timeout, e))?;
            migrator
                .run(&mut *checkout.conn())
                .await
                .map_err(|e| StorageError::Migration(Box::new(e)))
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

    /// The connection pool (for example to share it, or to inspect the tables).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The options this storage runs with.
    pub fn options(&self) -> &StorageOptions {
        &self.options
    }

    /// Runs one call: deadline, span, checkout, and closing the connection unless it succeeded.
    async fn call<T>(
        &self,
        operation: &'static str,
        shards: usize,
        work: impl AsyncFnOnce(&mut sqlx::PgConnection) -> Result<T, sqlx::Error>,
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

#[async_trait]
impl EncodedRunnerStorage for PostgresRunnerStorage {
    async fn register(
        &self,
        address: &str,
        runner: &str,
        incarnation: i64,
        healthy: bool,
        ttl: Duration,
    ) -> Result<Option<(i64, i64)>, StorageError> {
        let ttl = ttl_millis("register", ttl)?;
        let sql = self.sql.register.clone();
        let (registered, holder, remaining) = self
            .call("register", 0, async |conn| {
                sqlx::query_as::<_, (i64, Option<i64>, Option<i64>)>(sql)
                    .bind(address)
                    .bind(runner)
                    .bind(incarnation)
                    .bind(healthy)
                    .bind(ttl)
                    .fetch_one(conn)
                    .await
            })
            .await?;
        Ok((registered == 0).then(|| (holder.unwrap_or(0), remaining.unwrap_or(0))))
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
        let sql = self.sql.acquire.clone();
        self.call("acquire", shards.len(), async |conn| {
            sqlx::query_as::<_, (String, i64)>(sql)
                .bind(address)
                .bind(incarnation)
                .bind(&shards)
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
        let sql = self.sql.refresh.clone();
        self.call("refresh", shards.len(), async |conn| {
            sqlx::query_as::<_, (String, i64)>(sql)
                .bind(address)
                .bind(incarnation)
                .bind(&shards)
                .bind(ttl)
                .fetch_all(conn)
                .await
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
        let sql = self.sql.release.clone();
        self.call("release", shards.len(), async |conn| {
            sqlx::query(sql)
                .bind(address)
                .bind(incarnation)
                .bind(&shards)
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
        let sql = self.sql.lease_machine_id.clone();
        self.call("lease_machine_id", 0, async |conn| {
            sqlx::query_as::<_, (i64, i64, i64)>(sql)
                .bind(incarnation)
                .bind(now_ms)
                .bind(ttl)
                .fetch_optional(conn)
                .await
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
        let machine = i32::try_from(machine_id).unwrap_or(-1);
        let sql = self.sql.renew_machine_id.clone();
        self.call("renew_machine_id", 0, async |conn| {
            sqlx::query_scalar::<_, i64>(sql)
                .bind(machine)
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
        let machine = i32::try_from(machine_id).unwrap_or(-1);
        let sql = self.sql.release_machine_id.clone();
        self.call("release_machine_id", 0, async |conn| {
            sqlx::query(sql)
                .bind(machine)
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
        let names: Vec<&str> = proposed.iter().map(|(n, _)| n.as_str()).collect();
        let values: Vec<&str> = proposed.iter().map(|(_, v)| v.as_str()).collect();
        let sql = self.sql.cluster_parameters.clone();
        self.call("cluster_parameters", 0, async |conn| {
            sqlx::query_as::<_, (String, String)>(sql)
                .bind(&names)
                .bind(&values)
                .fetch_all(conn)
                .await
        })
        .await
    }
}
