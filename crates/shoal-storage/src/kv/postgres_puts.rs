//! Group commit of [`PostgresEntityKv::put`](super::PostgresEntityKv): concurrent puts of many
//! entities written by one fenced statement per batch.
//!
//! A put is usually one small row (an entity's state) and its commit, a WAL flush, costs far
//! more than the row. Entities run on many tasks at once, so their puts are collected: one
//! statement share-locks the lease rows of every shard in the batch, refuses the puts whose
//! fence is older than their shard's lease, and upserts the entries of the others. Batches are
//! written **one at a time**, so puts commit in the order they were submitted, across batches
//! too. The price: a batch that waits (on a lease row an `acquire` holds) holds up the puts
//! queued behind it, for at most the call deadline, after which its connection is closed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, SqlSafeStr, SqlStr};

use super::put_op::{PutOp, spawn_writer};
use super::rows::fenced;
use crate::error::StorageError;
use crate::prefix::TablePrefix;
use crate::sql::call::call;
use crate::sql::group_commit::{BatchResult, GroupCommit};

const BACKEND: &str = "postgres";

/// Most puts in one statement.
const MAX_BATCH: usize = 512;

/// The batch writer's side: the pool, the statement and the call deadline.
#[derive(Debug)]
pub(super) struct Writer {
    pool: PgPool,
    statement: SqlStr,
    timeout: Duration,
}

/// Starts the put batch writer on the current tokio runtime.
pub(super) fn spawn(
    pool: PgPool,
    prefix: &TablePrefix,
    timeout: Duration,
) -> Result<GroupCommit<PutOp, ()>, StorageError> {
    let writer = Arc::new(Writer {
        pool,
        statement: AssertSqlSafe(Arc::<str>::from(prefix.substitute(PUT_BATCH))).into_sql_str(),
        timeout,
    });
    spawn_writer("PostgresEntityKv", MAX_BATCH, move |ops| {
        let writer = writer.clone();
        async move { writer.write(ops).await }
    })
}

/// `$1` op ordinals, `$2` entity types, `$3` entity ids, `$4` keys, `$5` values (one element per
/// entry); `$6` shard texts and `$7` fence epochs (one per op, ordinal = position); `$8` the
/// distinct shards, sorted.
///
/// The lease rows are share-locked in shard order, so no acquire changes an epoch between the
/// check and the commit. An op whose shard has a newer epoch writes nothing and comes back in
/// `fenced`. Two accepted ops of one entity and key in a batch are one hosting's consecutive
/// puts (a newer hosting fences the older one's): the later op's value is written. Rows are
/// upserted in key order, so concurrent writers (another process) lock rows in the same order.
const PUT_BATCH: &str = "WITH input AS ( \
       SELECT * FROM unnest($1::integer[], $2::text[], $3::text[], $4::bytea[], $5::bytea[]) \
       AS t(op, entity_type, entity_id, key, value) \
     ), ops AS ( \
       SELECT * FROM unnest($6::text[], $7::bigint[]) WITH ORDINALITY AS o(shard_id, epoch, op) \
     ), lease AS ( \
       SELECT shard_id, epoch FROM {prefix}_leases \
       WHERE shard_id = ANY($8::text[]) ORDER BY shard_id FOR SHARE \
     ), fenced AS ( \
       SELECT o.op, l.epoch FROM ops o JOIN lease l ON l.shard_id = o.shard_id \
       WHERE l.epoch > o.epoch \
     ), latest AS ( \
       SELECT DISTINCT ON (entity_type, entity_id, key) entity_type, entity_id, key, value \
       FROM input i WHERE NOT EXISTS (SELECT 1 FROM fenced f WHERE f.op = i.op) \
       ORDER BY entity_type, entity_id, key, op DESC \
     ), written AS ( \
       INSERT INTO {prefix}_entity_kv (entity_type, entity_id, key, value, updated_at) \
       SELECT entity_type, entity_id, key, value, now() FROM latest \
       ORDER BY entity_type, entity_id, key \
       ON CONFLICT (entity_type, entity_id, key) DO UPDATE \
         SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at \
       RETURNING 1 \
     ) \
     SELECT ARRAY(SELECT op FROM fenced ORDER BY op)::integer[] AS fenced_op, \
       ARRAY(SELECT epoch FROM fenced ORDER BY op) AS fenced_epoch, \
       (SELECT count(*) FROM written) AS written";

impl Writer {
    async fn write(&self, ops: Vec<PutOp>) -> BatchResult<()> {
        let entries: usize = ops.iter().map(|op| op.keys.len()).sum();
        let mut op_ords = Vec::with_capacity(entries);
        let mut types = Vec::with_capacity(entries);
        let mut ids = Vec::with_capacity(entries);
        let mut keys: Vec<&[u8]> = Vec::with_capacity(entries);
        let mut values: Vec<&[u8]> = Vec::with_capacity(entries);
        let mut shards = Vec::with_capacity(ops.len());
        let mut epochs = Vec::with_capacity(ops.len());
        for (index, op) in ops.iter().enumerate() {
            // Ordinals start at 1, as `WITH ORDINALITY` counts.
            let ord = i32::try_from(index + 1).unwrap_or(i32::MAX);
            for (key, value) in op.keys.iter().zip(&op.values) {
                op_ords.push(ord);
                types.push(op.entity_type.as_str());
                ids.push(op.entity_id.as_str());
                keys.push(key.as_ref());
                values.push(value.as_ref());
            }
            shards.push(op.fence.shard.to_string());
            epochs.push(i64::try_from(op.fence.epoch.0).unwrap_or(i64::MAX));
        }
        let distinct: Vec<&str> = shards
            .iter()
            .map(String::as_str)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let (fenced_ops, fenced_epochs) = call(
            BACKEND,
            &self.pool,
            self.timeout,
            "kv_put",
            distinct.len(),
            async |conn| {
                let (ops, epochs, _written) =
                    sqlx::query_as::<_, (Vec<i32>, Vec<i64>, i64)>(self.statement.clone())
                        .persistent(false)
                        .bind(&op_ords)
                        .bind(&types)
                        .bind(&ids)
                        .bind(&keys)
                        .bind(&values)
                        .bind(&shards)
                        .bind(&epochs)
                        .bind(&distinct)
                        .fetch_one(conn)
                        .await?;
                Ok((ops, epochs))
            },
        )
        .await?;
        let mut results: Vec<Result<(), StorageError>> = ops.iter().map(|_| Ok(())).collect();
        for (ord, current) in fenced_ops.into_iter().zip(fenced_epochs) {
            let index = usize::try_from(ord).ok().and_then(|ord| ord.checked_sub(1));
            if let Some(index) = index
                && let (Some(slot), Some(op)) = (results.get_mut(index), ops.get(index))
            {
                *slot = fenced(&op.fence, Some(current));
            }
        }
        Ok(results)
    }
}
