//! [`PostgresEntityKv`]: entity KV in Postgres, fenced by the leases table of the same prefix.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use shoal_protocol::EntityAddress;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{AssertSqlSafe, Row, SqlSafeStr, SqlStr};

use super::limits::{check_fence, check_keys, check_put, check_query, check_range, last_wins};
use super::postgres_puts;
use super::put_op::{PutOp, PutWriter};
use super::query::{KvEntry, KvQuery};
use super::rows::{Rows, fenced, values_in_order};
use super::storage::EntityKv;
use crate::error::StorageError;
use crate::messages::Fence;
use crate::options::StorageOptions;
use crate::postgres::PostgresRunnerStorage;
use crate::prefix::TablePrefix;
use crate::sql::call::{call, observed};

const BACKEND: &str = "postgres";

/// Entity KV in the `{prefix}_entity_kv` table of a Postgres database, next to the runner
/// storage's `{prefix}_leases`.
///
/// Each write is **one statement**: a common table expression reads the shard's lease row
/// `FOR SHARE` (so no `acquire` can change its epoch until the statement commits) and the write
/// applies only if the lease has no newer epoch than the caller's fence. Concurrent `put`s are
/// group-committed: one statement (and one commit) per batch, each put fenced on its own, batches
/// written one at a time so puts commit in the order they were made. Every call runs under
/// [`StorageOptions::call_timeout`] and closes its connection when it fails or times out.
///
/// The table is created by the runner storage's migrations (`0010_entity_kv.sql`), so build
/// this from a migrated [`PostgresRunnerStorage`]. Cheap to clone.
///
/// ```no_run
/// # async fn demo() -> Result<(), shoal_storage::StorageError> {
/// use shoal_storage::kv::PostgresEntityKv;
/// use shoal_storage::{PostgresRunnerStorage, StorageOptions};
///
/// let runners = PostgresRunnerStorage::connect("postgres://shoal@db/shoal", StorageOptions::new()).await?;
/// let kv = PostgresEntityKv::new(runners.inner());
/// # let _ = kv;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresEntityKv {
    pool: PgPool,
    options: StorageOptions,
    sql: Arc<Queries>,
    /// The put batch writer.
    puts: PutWriter,
}

impl PostgresEntityKv {
    /// Entity KV on the runner storage's pool, table prefix and call deadline.
    pub fn new(runners: &PostgresRunnerStorage) -> Self {
        Self::from_pool(runners.pool().clone(), runners.options().clone())
    }

    /// Entity KV on `pool` with `options` (table prefix, call deadline). The migrations are not
    /// applied here: run [`PostgresRunnerStorage::migrate`] for the same prefix first.
    pub fn from_pool(pool: PgPool, options: StorageOptions) -> Self {
        Self {
            sql: Arc::new(Queries::new(&options.table_prefix)),
            pool,
            options,
            puts: PutWriter::default(),
        }
    }

    /// The options this storage runs with.
    pub fn options(&self) -> &StorageOptions {
        &self.options
    }

    async fn call<T>(
        &self,
        operation: &'static str,
        work: impl AsyncFnOnce(&mut sqlx::PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, StorageError> {
        call(
            BACKEND,
            &self.pool,
            self.options.call_timeout,
            operation,
            0,
            work,
        )
        .await
    }

    /// Runs a fenced write statement whose only row is the shard's current epoch (or NULL).
    async fn fenced_write(
        &self,
        operation: &'static str,
        fence: &Fence,
        statement: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<(), StorageError> {
        let current = self
            .call(operation, async |conn| {
                statement
                    .fetch_one(conn)
                    .await
                    .and_then(|row| row.try_get::<Option<i64>, _>(0))
            })
            .await?;
        fenced(fence, current)
    }
}

fn decode(rows: Vec<PgRow>) -> Rows {
    rows.into_iter()
        .map(|row| {
            (
                row.try_get::<Vec<u8>, _>(0).map_err(|e| e.to_string()),
                row.try_get::<Vec<u8>, _>(1).map_err(|e| e.to_string()),
            )
        })
        .collect()
}

#[async_trait]
impl EntityKv for PostgresEntityKv {
    async fn get(
        &self,
        entity: &EntityAddress,
        keys: &[Bytes],
    ) -> Result<Vec<Option<Bytes>>, StorageError> {
        check_keys("kv_get", keys)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<&[u8]> = keys.iter().map(|k| k.as_ref()).collect();
        let sql = self.sql.get.clone();
        let rows = self
            .call("kv_get", async |conn| {
                sqlx::query(sql)
                    .persistent(false)
                    .bind(entity.entity_type.as_str())
                    .bind(entity.entity_id.as_str())
                    .bind(&list)
                    .fetch_all(conn)
                    .await
            })
            .await?;
        values_in_order(entity, keys, decode(rows))
    }

    async fn list(
        &self,
        entity: &EntityAddress,
        query: &KvQuery,
    ) -> Result<Vec<KvEntry>, StorageError> {
        check_query("kv_list", query)?;
        let limit = query.effective_limit();
        let Some(bounds) = super::query::bounds(query).filter(|_| limit > 0) else {
            return Ok(Vec::new());
        };
        let sql = self.sql.list(bounds.end.is_some(), query.reverse);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .call("kv_list", async |conn| {
                let mut q = sqlx::query(sql)
                    .persistent(false)
                    .bind(entity.entity_type.as_str())
                    .bind(entity.entity_id.as_str())
                    .bind(bounds.start.as_ref())
                    .bind(limit);
                if let Some(end) = &bounds.end {
                    q = q.bind(end.as_ref());
                }
                q.fetch_all(conn).await
            })
            .await?;
        super::rows::entries(entity, decode(rows))
    }

    async fn put(
        &self,
        entity: &EntityAddress,
        entries: &[KvEntry],
        fence: &Fence,
    ) -> Result<(), StorageError> {
        check_fence("kv_put", entity, fence)?;
        check_put("kv_put", entries)?;
        let entries = last_wins(entries);
        let op = PutOp::new(entity, &entries, fence);
        let puts = self.puts.get_or_start(|| {
            postgres_puts::spawn(
                self.pool.clone(),
                &self.options.table_prefix,
                self.options.call_timeout,
            )
        })?;
        observed(
            BACKEND,
            "kv_put",
            1,
            puts.submit("kv_put", op, self.options.call_timeout),
        )
        .await
    }

    async fn delete(
        &self,
        entity: &EntityAddress,
        keys: &[Bytes],
        fence: &Fence,
    ) -> Result<(), StorageError> {
        check_fence("kv_delete", entity, fence)?;
        check_keys("kv_delete", keys)?;
        let list: Vec<&[u8]> = keys.iter().map(|k| k.as_ref()).collect();
        let statement = sqlx::query(self.sql.delete.clone())
            .persistent(false)
            .bind(entity.entity_type.as_str())
            .bind(entity.entity_id.as_str())
            .bind(fence.shard.to_string())
            .bind(epoch_param(fence))
            .bind(list);
        self.fenced_write("kv_delete", fence, statement).await
    }

    async fn delete_range(
        &self,
        entity: &EntityAddress,
        start: &[u8],
        end: &[u8],
        fence: &Fence,
    ) -> Result<(), StorageError> {
        check_fence("kv_delete_range", entity, fence)?;
        check_range("kv_delete_range", start, end)?;
        let statement = sqlx::query(self.sql.delete_range.clone())
            .persistent(false)
            .bind(entity.entity_type.as_str())
            .bind(entity.entity_id.as_str())
            .bind(fence.shard.to_string())
            .bind(epoch_param(fence))
            .bind(start)
            .bind(end);
        self.fenced_write("kv_delete_range", fence, statement).await
    }

    async fn drop_all(&self, entity: &EntityAddress, fence: &Fence) -> Result<(), StorageError> {
        check_fence("kv_drop", entity, fence)?;
        let statement = sqlx::query(self.sql.drop.clone())
            .persistent(false)
            .bind(entity.entity_type.as_str())
            .bind(entity.entity_id.as_str())
            .bind(fence.shard.to_string())
            .bind(epoch_param(fence));
        self.fenced_write("kv_drop", fence, statement).await
    }
}

/// The fence epoch as a Postgres `bigint` (epochs beyond `i64::MAX` cannot exist in the table).
fn epoch_param(fence: &Fence) -> i64 {
    i64::try_from(fence.epoch.0).unwrap_or(i64::MAX)
}

/// Every statement, with the table prefix substituted.
#[derive(Debug)]
struct Queries {
    get: SqlStr,
    /// `[bounded][reverse]`.
    list: [[SqlStr; 2]; 2],
    delete: SqlStr,
    delete_range: SqlStr,
    drop: SqlStr,
}

fn sql(prefix: &TablePrefix, template: &str) -> SqlStr {
    AssertSqlSafe(Arc::<str>::from(prefix.substitute(template))).into_sql_str()
}

/// A fenced write: `$1` entity type, `$2` entity id, `$3` shard text, `$4` the fence epoch, then
/// the write's own parameters. `lease` locks the shard's lease row until the statement commits;
/// `write` runs only when the lease is not newer than the fence; the statement returns the
/// lease's epoch (NULL when the shard was never leased) so the caller can tell a refusal.
fn fenced_sql(prefix: &TablePrefix, write: &str) -> SqlStr {
    sql(
        prefix,
        &format!(
            "WITH lease AS ( \
               SELECT epoch FROM {{prefix}}_leases WHERE shard_id = $3 FOR SHARE \
             ), allowed AS ( \
               SELECT NOT EXISTS (SELECT 1 FROM lease WHERE epoch > $4) AS ok \
             ), write AS ( {write} ) \
             SELECT (SELECT epoch FROM lease) AS epoch, (SELECT count(*) FROM write) AS written"
        ),
    )
}

impl Queries {
    fn new(prefix: &TablePrefix) -> Self {
        let list = |bounded: bool, reverse: bool| {
            sql(
                prefix,
                &format!(
                    "SELECT key, value FROM {{prefix}}_entity_kv \
                     WHERE entity_type = $1 AND entity_id = $2 AND key >= $3 {} \
                     ORDER BY key {} LIMIT $4",
                    if bounded { "AND key < $5" } else { "" },
                    if reverse { "DESC" } else { "ASC" },
                ),
            )
        };
        Self {
            get: sql(
                prefix,
                "SELECT key, value FROM {prefix}_entity_kv \
                 WHERE entity_type = $1 AND entity_id = $2 AND key = ANY($3::bytea[])",
            ),
            list: [
                [list(false, false), list(false, true)],
                [list(true, false), list(true, true)],
            ],
            // $5 keys.
            delete: fenced_sql(
                prefix,
                "DELETE FROM {prefix}_entity_kv \
                 WHERE entity_type = $1 AND entity_id = $2 AND key = ANY($5::bytea[]) \
                   AND (SELECT ok FROM allowed) RETURNING 1",
            ),
            // $5 start, $6 end.
            delete_range: fenced_sql(
                prefix,
                "DELETE FROM {prefix}_entity_kv \
                 WHERE entity_type = $1 AND entity_id = $2 AND key >= $5 AND key < $6 \
                   AND (SELECT ok FROM allowed) RETURNING 1",
            ),
            drop: fenced_sql(
                prefix,
                "DELETE FROM {prefix}_entity_kv \
                 WHERE entity_type = $1 AND entity_id = $2 AND (SELECT ok FROM allowed) \
                 RETURNING 1",
            ),
        }
    }

    fn list(&self, bounded: bool, reverse: bool) -> SqlStr {
        self.list[usize::from(bounded)][usize::from(reverse)].clone()
    }
}
