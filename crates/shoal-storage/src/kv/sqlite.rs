//! [`SqliteEntityKv`]: entity KV in SQLite, fenced by the leases table of the same prefix.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use shoal_protocol::EntityAddress;
use sqlx::sqlite::{SqliteConnection, SqlitePool, SqliteRow};
use sqlx::{AssertSqlSafe, Connection, Row, SqlSafeStr, SqlStr};

use super::limits::{check_fence, check_keys, check_put, check_query, check_range, last_wins};
use super::put_op::{PutOp, PutWriter};
use super::query::{KvEntry, KvQuery};
use super::rows::{Rows, entries, fenced, values_in_order};
use super::storage::EntityKv;
use crate::error::StorageError;
use crate::messages::Fence;
use crate::options::StorageOptions;
use crate::prefix::TablePrefix;
use crate::sql::call::{call, observed};
use crate::sqlite::SqliteRunnerStorage;

const BACKEND: &str = "sqlite";

/// The database clock in unix milliseconds (as the runner storage writes it).
const NOW_MS: &str = "CAST(round(unixepoch('subsec') * 1000) AS INTEGER)";

/// Entity KV in the `{prefix}_entity_kv` table of a SQLite database (file or in-memory), next to
/// the runner storage's `{prefix}_leases`.
///
/// Each write is a `BEGIN IMMEDIATE` transaction (it holds SQLite's write lock from the start):
/// read the shard's lease epoch, refuse when it is newer than the caller's fence, write, commit —
/// no `acquire` can slip in between. Concurrent `put`s share one such transaction per batch
/// (each fenced on its own; batches written one at a time, so puts commit in the order they were
/// made) instead of queueing one by one on the write lock. Every call runs under
/// [`StorageOptions::call_timeout`] and closes its connection when it fails or times out.
///
/// The table is created by the runner storage's migrations (`0010_entity_kv.sql`), so build this
/// from a migrated [`SqliteRunnerStorage`]; it shares that storage's pool (and, for an in-memory
/// database, the database itself). Cheap to clone.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use shoal_protocol::EntityAddress;
/// use shoal_storage::kv::{EntityKv, KvQuery, SqliteEntityKv};
/// use shoal_storage::{SqliteRunnerStorage, StorageOptions};
///
/// let runners = SqliteRunnerStorage::in_memory(StorageOptions::new()).await?;
/// let kv = SqliteEntityKv::new(runners.inner());
/// let entity = EntityAddress::new("default:1".parse()?, "counter".parse()?, "a".parse()?);
/// assert!(kv.list(&entity, &KvQuery::all()).await?.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct SqliteEntityKv {
    runners: SqliteRunnerStorage,
    sql: Arc<Queries>,
    /// The put batch writer.
    puts: PutWriter,
}

impl SqliteEntityKv {
    /// Entity KV on the runner storage's database, pool, table prefix and call deadline.
    pub fn new(runners: &SqliteRunnerStorage) -> Self {
        Self {
            sql: Arc::new(Queries::new(&runners.options().table_prefix)),
            runners: runners.clone(),
            puts: PutWriter::default(),
        }
    }

    /// The options this storage runs with.
    pub fn options(&self) -> &StorageOptions {
        self.runners.options()
    }

    fn pool(&self) -> &SqlitePool {
        self.runners.pool()
    }

    async fn call<T>(
        &self,
        operation: &'static str,
        work: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, StorageError> {
        call(
            BACKEND,
            self.pool(),
            self.options().call_timeout,
            operation,
            0,
            work,
        )
        .await
    }

    /// Runs `write` in a `BEGIN IMMEDIATE` transaction after checking `fence`; rolls back and
    /// reports [`StorageError::Fenced`] when the lease is newer.
    async fn fenced_write(
        &self,
        operation: &'static str,
        fence: &Fence,
        write: impl AsyncFnOnce(&mut SqliteConnection) -> Result<(), sqlx::Error>,
    ) -> Result<(), StorageError> {
        let lease = self.sql.lease.clone();
        let shard = fence.shard.to_string();
        let current = self
            .call(operation, async |conn| {
                let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
                let current: Option<i64> = sqlx::query_scalar(lease)
                    .bind(shard)
                    .fetch_optional(&mut *tx)
                    .await?;
                if fenced(fence, current).is_err() {
                    tx.rollback().await?;
                    return Ok(current);
                }
                write(&mut tx).await?;
                tx.commit().await?;
                Ok(current)
            })
            .await?;
        fenced(fence, current)
    }
}

fn decode(rows: Vec<SqliteRow>) -> Rows {
    rows.into_iter()
        .map(|row| {
            (
                row.try_get::<Vec<u8>, _>(0).map_err(|e| e.to_string()),
                row.try_get::<Vec<u8>, _>(1).map_err(|e| e.to_string()),
            )
        })
        .collect()
}

/// `sql` followed by `(?n, ?n+1, ...)` with `count` placeholders starting at `first`.
fn with_placeholders(sql: &str, first: usize, count: usize) -> SqlStr {
    let mut text = String::with_capacity(sql.len() + count * 5 + 2);
    text.push_str(sql);
    text.push('(');
    for i in 0..count {
        if i > 0 {
            text.push(',');
        }
        text.push('?');
        text.push_str(&(first + i).to_string());
    }
    text.push(')');
    AssertSqlSafe(text).into_sql_str()
}

#[async_trait]
impl EntityKv for SqliteEntityKv {
    async fn get(
        &self,
        entity: &EntityAddress,
        keys: &[Bytes],
    ) -> Result<Vec<Option<Bytes>>, StorageError> {
        check_keys("kv_get", keys)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let sql = with_placeholders(&self.sql.get_prefix, 3, keys.len());
        let rows = self
            .call("kv_get", async |conn| {
                let mut q = sqlx::query(sql)
                    .bind(entity.entity_type.as_str())
                    .bind(entity.entity_id.as_str());
                for key in keys {
                    q = q.bind(key.as_ref());
                }
                q.fetch_all(conn).await
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
        entries(entity, decode(rows))
    }

    async fn put(
        &self,
        entity: &EntityAddress,
        entries: &[KvEntry],
        fence: &Fence,
    ) -> Result<(), StorageError> {
        check_fence("kv_put", entity, fence)?;
        check_put("kv_put", entries)?;
        let op = PutOp::new(entity, &last_wins(entries), fence);
        let puts = self.puts.get_or_start(|| {
            super::sqlite_puts::spawn(
                self.pool().clone(),
                self.sql.lease.clone(),
                self.sql.put.clone(),
                self.options().call_timeout,
            )
        })?;
        observed(
            BACKEND,
            "kv_put",
            1,
            puts.submit("kv_put", op, self.options().call_timeout),
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
        let sql = with_placeholders(&self.sql.delete_prefix, 3, keys.len());
        self.fenced_write("kv_delete", fence, async |conn| {
            if keys.is_empty() {
                return Ok(());
            }
            let mut q = sqlx::query(sql)
                .bind(entity.entity_type.as_str())
                .bind(entity.entity_id.as_str());
            for key in keys {
                q = q.bind(key.as_ref());
            }
            q.execute(conn).await.map(drop)
        })
        .await
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
        let sql = self.sql.delete_range.clone();
        self.fenced_write("kv_delete_range", fence, async |conn| {
            sqlx::query(sql)
                .bind(entity.entity_type.as_str())
                .bind(entity.entity_id.as_str())
                .bind(start)
                .bind(end)
                .execute(conn)
                .await
                .map(drop)
        })
        .await
    }

    async fn drop_all(&self, entity: &EntityAddress, fence: &Fence) -> Result<(), StorageError> {
        check_fence("kv_drop", entity, fence)?;
        let sql = self.sql.drop.clone();
        self.fenced_write("kv_drop", fence, async |conn| {
            sqlx::query(sql)
                .bind(entity.entity_type.as_str())
                .bind(entity.entity_id.as_str())
                .execute(conn)
                .await
                .map(drop)
        })
        .await
    }
}

/// Every statement, with the table prefix and the clock substituted.
#[derive(Debug)]
struct Queries {
    /// Followed by the placeholder list of the keys (from `?3`).
    get_prefix: String,
    /// `[bounded][reverse]`.
    list: [[SqlStr; 2]; 2],
    lease: SqlStr,
    put: SqlStr,
    /// Followed by the placeholder list of the keys (from `?3`).
    delete_prefix: String,
    delete_range: SqlStr,
    drop: SqlStr,
}

fn sql(prefix: &TablePrefix, template: &str) -> SqlStr {
    AssertSqlSafe(Arc::<str>::from(
        prefix.substitute(template).replace("{now}", NOW_MS),
    ))
    .into_sql_str()
}

impl Queries {
    fn new(prefix: &TablePrefix) -> Self {
        let list = |bounded: bool, reverse: bool| {
            sql(
                prefix,
                &format!(
                    "SELECT key, value FROM {{prefix}}_entity_kv \
                     WHERE entity_type = ?1 AND entity_id = ?2 AND key >= ?3 {} \
                     ORDER BY key {} LIMIT ?4",
                    if bounded { "AND key < ?5" } else { "" },
                    if reverse { "DESC" } else { "ASC" },
                ),
            )
        };
        Self {
            get_prefix: prefix.substitute(
                "SELECT key, value FROM {prefix}_entity_kv \
                 WHERE entity_type = ?1 AND entity_id = ?2 AND key IN ",
            ),
            list: [
                [list(false, false), list(false, true)],
                [list(true, false), list(true, true)],
            ],
            lease: sql(
                prefix,
                "SELECT epoch FROM {prefix}_leases WHERE shard_id = ?1",
            ),
            put: sql(
                prefix,
                "INSERT INTO {prefix}_entity_kv (entity_type, entity_id, key, value, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, {now}) \
                 ON CONFLICT (entity_type, entity_id, key) DO UPDATE \
                   SET value = excluded.value, updated_at = excluded.updated_at",
            ),
            delete_prefix: prefix.substitute(
                "DELETE FROM {prefix}_entity_kv \
                 WHERE entity_type = ?1 AND entity_id = ?2 AND key IN ",
            ),
            delete_range: sql(
                prefix,
                "DELETE FROM {prefix}_entity_kv \
                 WHERE entity_type = ?1 AND entity_id = ?2 AND key >= ?3 AND key < ?4",
            ),
            drop: sql(
                prefix,
                "DELETE FROM {prefix}_entity_kv WHERE entity_type = ?1 AND entity_id = ?2",
            ),
        }
    }

    fn list(&self, bounded: bool, reverse: bool) -> SqlStr {
        self.list[usize::from(bounded)][usize::from(reverse)].clone()
    }
}
