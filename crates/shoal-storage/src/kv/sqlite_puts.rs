//! Group commit of [`SqliteEntityKv::put`](super::SqliteEntityKv): concurrent puts of many
//! entities written in one transaction per batch.
//!
//! SQLite has one writer at a time. Puts that each open their own `BEGIN IMMEDIATE` queue up on
//! the database lock, and under load (the busy handler sleeping between retries) some wait past
//! their deadline. One writer task takes what has queued up instead: one transaction reads the
//! lease epoch of every shard in the batch, writes the entries of the puts whose fence is
//! current, in the order they were made, and commits once. Batches are written one at a time.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::SqlitePool;
use sqlx::{Connection, SqlStr};

use super::put_op::{PutOp, spawn_writer};
use super::rows::fenced;
use crate::error::StorageError;
use crate::sql::call::call;
use crate::sql::group_commit::{BatchResult, GroupCommit};

const BACKEND: &str = "sqlite";

/// Most puts in one transaction.
const MAX_BATCH: usize = 256;

/// The batch writer's side: the pool, the statements and the call deadline.
#[derive(Debug)]
pub(super) struct Writer {
    pool: SqlitePool,
    /// `?1` shard: the lease epoch, if the shard was ever leased.
    lease: SqlStr,
    /// `?1` type, `?2` id, `?3` key, `?4` value: one upsert.
    put: SqlStr,
    timeout: Duration,
}

/// Starts the put batch writer on the current tokio runtime.
pub(super) fn spawn(
    pool: SqlitePool,
    lease: SqlStr,
    put: SqlStr,
    timeout: Duration,
) -> Result<GroupCommit<PutOp, ()>, StorageError> {
    let writer = Arc::new(Writer {
        pool,
        lease,
        put,
        timeout,
    });
    spawn_writer("SqliteEntityKv", MAX_BATCH, move |ops| {
        let writer = writer.clone();
        async move { writer.write(ops).await }
    })
}

impl Writer {
    async fn write(&self, ops: Vec<PutOp>) -> BatchResult<()> {
        let shards: BTreeSet<String> = ops.iter().map(|op| op.fence.shard.to_string()).collect();
        let epochs = call(
            BACKEND,
            &self.pool,
            self.timeout,
            "kv_put",
            shards.len(),
            async |conn| {
                let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
                let mut epochs: HashMap<String, Option<i64>> = HashMap::new();
                for shard in &shards {
                    let current: Option<i64> = sqlx::query_scalar(self.lease.clone())
                        .bind(shard.as_str())
                        .fetch_optional(&mut *tx)
                        .await?;
                    epochs.insert(shard.clone(), current);
                }
                for op in &ops {
                    let current = epochs.get(&op.fence.shard.to_string()).copied().flatten();
                    if fenced(&op.fence, current).is_err() {
                        continue;
                    }
                    for (key, value) in op.keys.iter().zip(&op.values) {
                        sqlx::query(self.put.clone())
                            .bind(op.entity_type.as_str())
                            .bind(op.entity_id.as_str())
                            .bind(key.as_ref())
                            .bind(value.as_ref())
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                tx.commit().await?;
                Ok(epochs)
            },
        )
        .await?;
        Ok(ops
            .iter()
            .map(|op| {
                let current = epochs.get(&op.fence.shard.to_string()).copied().flatten();
                fenced(&op.fence, current)
            })
            .collect())
    }
}
