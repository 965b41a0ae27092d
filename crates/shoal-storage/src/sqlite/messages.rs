//! [`SqliteMessageStorage`]: durable messages in SQLite.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use shoal_protocol::{EntityAddress, RunnerAddress, ShardId, Snowflake};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnection, SqlitePool};
use tokio::sync::broadcast;

use super::message_queries::MessageQueries;
use super::runner::{SqliteLocation, SqliteRunnerStorage};
use crate::error::StorageError;
use crate::messages::checks::{check_envelope_id, check_reply};
use crate::messages::{
    Claim, ClaimedMessage, EnvelopeKind, Fence, MessageEvent, MessageStorage, PersistedEnvelope,
    PersistedRequest, SaveResult, StoredReply,
};
use crate::options::StorageOptions;
use crate::sql::call::{call, observed};
use crate::sql::group_commit::{BatchResult, GroupCommit};
use crate::sql::messages::{
    InterruptedRequest, MAX_BATCH, MessageRow, OriginalRow, REPLY_FINAL, ReplyInsert, ReplyRow,
    RequestRow, db_epoch, db_id, distinct_ids, from_unix_ms, pending_results, save_results,
    shard_texts, snowflake,
};
use crate::sql::millis;

const BACKEND: &str = "sqlite";

/// How many events a slow subscriber may fall behind before it sees
/// [`broadcast::error::RecvError::Lagged`].
const EVENT_CAPACITY: usize = 4096;

/// Durable messages in SQLite, in the database and under the table prefix of a
/// [`SqliteRunnerStorage`] (fencing compares a reply's epoch with the shard's row in
/// `{prefix}_leases` inside the transaction that writes the reply).
///
/// Concurrent `save_request` and `save_reply` calls are written together by one background
/// writer: one `BEGIN IMMEDIATE` transaction per batch (up to 512 calls) with one multi-row
/// insert for the requests and one for the replies; each caller gets its own result. Claims are
/// one `UPDATE … RETURNING` under the database write lock. Events are published in process, to
/// the subscribers of this storage and its clones. Every call is bounded by
/// [`StorageOptions::call_timeout`].
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use shoal_storage::{MessageStorage, SqliteMessageStorage, SqliteRunnerStorage, StorageOptions};
///
/// let runners = SqliteRunnerStorage::in_memory(StorageOptions::new()).await?;
/// let messages = SqliteMessageStorage::new(runners.inner()).await?;
/// assert!(messages.replies_for(&[]).await?.is_empty());
/// # Ok::<(), shoal_storage::StorageError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct SqliteMessageStorage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    runners: SqliteRunnerStorage,
    sql: Arc<MessageQueries>,
    writer: GroupCommit<Op, Done>,
    /// Reads of pushed requests, batched like the writes.
    pending: GroupCommit<i64, Option<PersistedRequest>>,
    events: broadcast::Sender<MessageEvent>,
}

/// A write waiting for its batch.
#[derive(Debug)]
enum Op {
    Request(RequestRow),
    Reply(ReplyOp),
}

/// What a write did.
#[derive(Debug)]
enum Done {
    Request(SaveResult),
    Reply,
}

#[derive(Debug)]
struct ReplyOp {
    reply: ReplyInsert,
    fence: Fence,
}

/// What the batch writer needs.
#[derive(Debug)]
struct Writer {
    pool: SqlitePool,
    sql: Arc<MessageQueries>,
    timeout: Duration,
    events: broadcast::Sender<MessageEvent>,
}

/// A JSON array, bound as one parameter and read with `json_each`.
fn json<T: Into<serde_json::Value> + Clone>(values: &[T]) -> String {
    serde_json::Value::from(values.to_vec()).to_string()
}

impl SqliteMessageStorage {
    /// Message storage in the database, pool, options and table prefix of `runners` (whose
    /// constructor applied the migrations). Starts the batch writer on the current tokio
    /// runtime.
    pub async fn new(runners: &SqliteRunnerStorage) -> Result<Self, StorageError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| StorageError::InvalidArgument {
                operation: "connect",
                detail: "SqliteMessageStorage must be created inside a tokio runtime".to_owned(),
            })?;
        let options = runners.options();
        let sql = Arc::new(MessageQueries::new(&options.table_prefix));
        let events = broadcast::channel(EVENT_CAPACITY).0;
        let writer = Arc::new(Writer {
            pool: runners.pool().clone(),
            sql: sql.clone(),
            timeout: options.call_timeout,
            events: events.clone(),
        });
        // Pushed requests are read back in batches too: one query for all concurrent pushes.
        let pending = GroupCommit::spawn(&runtime, "pending_request", MAX_BATCH, 2, {
            let writer = writer.clone();
            move |ids| {
                let writer = writer.clone();
                async move { writer.pending_requests(ids).await }
            }
        });
        // One writer: SQLite has one write lock, a second batch would only wait for it.
        let writer = GroupCommit::spawn(&runtime, "save_batch", MAX_BATCH, 1, move |ops| {
            let writer = writer.clone();
            async move { writer.write(ops).await }
        });
        Ok(Self {
            inner: Arc::new(Inner {
                runners: runners.clone(),
                sql,
                writer,
                pending,
                events,
            }),
        })
    }

    /// Opens (creating if needed) the database at `location` with its runner storage, applying
    /// the migrations unless told not to.
    pub async fn open(
        location: SqliteLocation,
        options: StorageOptions,
    ) -> Result<Self, StorageError> {
        let runners = SqliteRunnerStorage::open(location, options).await?;
        Self::new(runners.inner()).await
    }

    /// Opens the database a `sqlite:` URL names (see [`SqliteLocation::from_url`]).
    pub async fn connect(url: &str, options: StorageOptions) -> Result<Self, StorageError> {
        Self::open(SqliteLocation::from_url(url)?, options).await
    }

    /// The runner storage whose leases fence replies (same database and pool).
    pub fn runner_storage(&self) -> &SqliteRunnerStorage {
        &self.inner.runners
    }

    /// The connection pool.
    pub fn pool(&self) -> &SqlitePool {
        self.inner.runners.pool()
    }

    /// The options this storage runs with.
    pub fn options(&self) -> &StorageOptions {
        self.inner.runners.options()
    }

    async fn call<T>(
        &self,
        operation: &'static str,
        shards: usize,
        work: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, StorageError> {
        call(
            BACKEND,
            self.pool(),
            self.options().call_timeout,
            operation,
            shards,
            work,
        )
        .await
    }

    async fn reset(
        &self,
        operation: &'static str,
        query: sqlx::query::Query<'_, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
        wake: bool,
    ) -> Result<(), StorageError> {
        let shards = self
            .call(operation, 0, async |conn| {
                use sqlx::Row;
                let mut shards = BTreeSet::new();
                for row in query.fetch_all(conn).await? {
                    shards.insert(row.try_get::<String, _>(0)?);
                }
                Ok(shards)
            })
            .await?;
        if wake {
            for shard in shards.iter().filter_map(|s| s.parse().ok()) {
                let _ = self.inner.events.send(MessageEvent::Saved { shard });
            }
        }
        Ok(())
    }
}

impl Writer {
    /// One batch of pending-request reads: one query by id.
    async fn pending_requests(&self, ids: Vec<i64>) -> BatchResult<Option<PersistedRequest>> {
        let rows = call(
            BACKEND,
            &self.pool,
            self.timeout,
            "pending_request",
            0,
            async |conn| {
                sqlx::query_as::<_, MessageRow>(self.sql.pending_requests.clone())
                    .bind(json(&ids))
                    .fetch_all(&mut *conn)
                    .await
            },
        )
        .await?;
        Ok(pending_results(&ids, rows))
    }

    /// One batch in one `BEGIN IMMEDIATE` transaction: the requests, then the replies.
    async fn write(&self, ops: Vec<Op>) -> BatchResult<Done> {
        let mut requests = Vec::new();
        let mut replies = Vec::new();
        for (index, op) in ops.iter().enumerate() {
            match op {
                Op::Request(row) => requests.push((index, row)),
                Op::Reply(reply) => replies.push((index, reply)),
            }
        }
        let shard_count = ops.len();
        let (inserted, originals, current_epochs) = call(
            BACKEND,
            &self.pool,
            self.timeout,
            "save_batch",
            shard_count,
            async |conn| {
                let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
                let (inserted, originals) = if requests.is_empty() {
                    (HashSet::new(), Vec::new())
                } else {
                    self.insert_requests(&mut tx, &requests).await?
                };
                let epochs = if replies.is_empty() {
                    HashMap::new()
                } else {
                    self.insert_replies(&mut tx, &replies).await?
                };
                tx.commit().await?;
                Ok((inserted, originals, epochs))
            },
        )
        .await?;

        let mut results: Vec<Option<Result<Done, StorageError>>> =
            (0..ops.len()).map(|_| None).collect();
        let request_rows: Vec<&RequestRow> = requests.iter().map(|(_, r)| *r).collect();
        let saves = save_results(&request_rows, &inserted, originals);
        let mut saved_shards = BTreeSet::new();
        for ((index, row), result) in requests.iter().zip(saves) {
            if matches!(result, Ok(SaveResult::Saved)) && row.claimed_by.is_none() {
                saved_shards.insert(row.shard.clone());
            }
            results[*index] = Some(result.map(Done::Request));
        }
        let mut replied = BTreeSet::new();
        for (index, op) in &replies {
            let result = match current_epochs.get(&op.fence.shard.to_string()) {
                Some(current) if *current > db_epoch(op.fence.epoch) => Err(StorageError::Fenced {
                    shard: op.fence.shard.clone(),
                    epoch: op.fence.epoch.0,
                    current: u64::try_from(*current).unwrap_or(0),
                }),
                _ => {
                    replied.insert(op.reply.request_id);
                    Ok(Done::Reply)
                }
            };
            results[*index] = Some(result);
        }
        for shard in saved_shards {
            let _ = self.events.send(MessageEvent::Saved { shard });
        }
        for request_id in replied {
            let _ = self.events.send(MessageEvent::Replied {
                request_id: snowflake(request_id),
            });
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(StorageError::backend(
                        "save_batch",
                        "internal error: an operation got no result",
                    ))
                })
            })
            .collect())
    }

    async fn insert_requests(
        &self,
        tx: &mut SqliteConnection,
        requests: &[(usize, &RequestRow)],
    ) -> Result<(HashSet<i64>, Vec<OriginalRow>), sqlx::Error> {
        let mut query = sqlx::query_scalar::<_, i64>(self.sql.insert_requests(requests.len()));
        for (_, row) in requests {
            query = query
                .bind(row.id)
                .bind(row.key.as_deref())
                .bind(row.shard_id.as_str())
                .bind(row.entity_type.as_str())
                .bind(row.entity_id.as_str())
                .bind(row.id)
                .bind(row.tag.as_str())
                .bind(&row.payload[..])
                .bind(row.headers.as_deref())
                .bind(row.streaming)
                .bind(row.uninterruptible)
                .bind(row.deliver_at_ms)
                .bind(row.claimed_by.as_deref())
                .bind(row.claim_ms);
        }
        let inserted: HashSet<i64> = query.fetch_all(&mut *tx).await?.into_iter().collect();
        if inserted.len() == requests.len() {
            return Ok((inserted, Vec::new()));
        }
        let missing: Vec<&RequestRow> = requests
            .iter()
            .map(|(_, r)| *r)
            .filter(|r| !inserted.contains(&r.id))
            .collect();
        let keys: Vec<String> = missing.iter().filter_map(|r| r.key.clone()).collect();
        let ids: Vec<i64> = missing.iter().map(|r| r.id).collect();
        let originals = sqlx::query_as::<_, OriginalRow>(self.sql.originals.clone())
            .bind(json(&keys))
            .bind(json(&ids))
            .fetch_all(&mut *tx)
            .await?;
        Ok((inserted, originals))
    }

    /// Stores the replies whose fence holds; returns the current epoch of every fence shard
    /// that has a lease row (the caller fails the fenced replies).
    async fn insert_replies(
        &self,
        tx: &mut SqliteConnection,
        replies: &[(usize, &ReplyOp)],
    ) -> Result<HashMap<String, i64>, sqlx::Error> {
        let shards: Vec<String> = replies
            .iter()
            .map(|(_, op)| op.fence.shard.to_string())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let epochs: HashMap<String, i64> =
            sqlx::query_as::<_, (String, i64)>(self.sql.lease_epochs.clone())
                .bind(json(&shards))
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect();
        let accepted: Vec<&ReplyOp> = replies
            .iter()
            .map(|(_, op)| *op)
            .filter(|op| {
                epochs
                    .get(&op.fence.shard.to_string())
                    .is_none_or(|current| *current <= db_epoch(op.fence.epoch))
            })
            .collect();
        if accepted.is_empty() {
            return Ok(epochs);
        }
        let mut query = sqlx::query_as::<_, (i64, i16)>(self.sql.insert_replies(accepted.len()));
        for op in &accepted {
            let r = &op.reply;
            query = query
                .bind(r.id)
                .bind(r.request_id)
                .bind(r.kind)
                .bind(r.sequence)
                .bind(&r.frame[..])
                .bind(r.acked);
        }
        let finished: Vec<i64> = query
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .filter(|(_, kind)| *kind == REPLY_FINAL)
            .map(|(request_id, _)| request_id)
            .collect();
        if !finished.is_empty() {
            let finished = json(&finished);
            sqlx::query(self.sql.mark_requests_processed.clone())
                .bind(&finished)
                .execute(&mut *tx)
                .await?;
            sqlx::query(self.sql.mark_envelopes_processed.clone())
                .bind(&finished)
                .execute(&mut *tx)
                .await?;
        }
        Ok(epochs)
    }
}

#[async_trait]
impl MessageStorage for SqliteMessageStorage {
    async fn save_request(
        &self,
        request: &PersistedRequest,
        claim: Option<&Claim>,
    ) -> Result<SaveResult, StorageError> {
        let op = Op::Request(RequestRow::new(request, claim));
        let timeout = self.options().call_timeout;
        match observed(
            BACKEND,
            "save_request",
            1,
            self.inner.writer.submit("save_request", op, timeout),
        )
        .await?
        {
            Done::Request(result) => Ok(result),
            Done::Reply => Err(StorageError::backend(
                "save_request",
                "internal error: a request got a reply's result",
            )),
        }
    }

    async fn save_envelope(&self, envelope: &PersistedEnvelope) -> Result<(), StorageError> {
        match envelope.kind {
            EnvelopeKind::AckChunk { reply_id } => {
                let sql = self.inner.sql.ack_chunk.clone();
                self.call("save_envelope", 0, async |conn| {
                    sqlx::query(sql)
                        .bind(db_id(reply_id))
                        .bind(db_id(envelope.request_id))
                        .execute(conn)
                        .await
                        .map(drop)
                })
                .await
            }
            EnvelopeKind::Interrupt => {
                let sql = self.inner.sql.clone();
                let pending = self
                    .call("save_envelope", 1, async |conn| {
                        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
                        let request = sqlx::query_as::<_, InterruptedRequest>(
                            sql.interrupted_request.clone(),
                        )
                        .bind(db_id(envelope.request_id))
                        .fetch_optional(&mut *tx)
                        .await?;
                        // An interrupt of a request storage does not hold (never persisted,
                        // cleared or swept) has nothing to interrupt.
                        let Some(request) = request else {
                            return Ok(Ok(false));
                        };
                        if let Err(refused) = request.admits(envelope) {
                            return Ok(Err(refused));
                        }
                        let processed = request.processed;
                        let stored = sqlx::query(sql.insert_interrupt.clone())
                            .bind(db_id(envelope.id))
                            .bind(db_id(envelope.request_id))
                            .bind(&request.shard_id)
                            .bind(&request.entity_type)
                            .bind(&request.entity_id)
                            .bind(processed)
                            .fetch_optional(&mut *tx)
                            .await?;
                        let result = match stored {
                            Some(_) => Ok(!processed),
                            None => {
                                let holder = sqlx::query_scalar::<_, Option<i64>>(
                                    sql.message_request.clone(),
                                )
                                .bind(db_id(envelope.id))
                                .fetch_optional(&mut *tx)
                                .await?
                                .flatten()
                                .map(snowflake);
                                check_envelope_id(envelope, holder).map(|()| false)
                            }
                        };
                        tx.commit().await?;
                        Ok(result)
                    })
                    .await??;
                if pending {
                    let _ = self.inner.events.send(MessageEvent::Saved {
                        shard: envelope.address.shard.clone(),
                    });
                }
                Ok(())
            }
        }
    }

    async fn pending_request(
        &self,
        id: Snowflake,
    ) -> Result<Option<PersistedRequest>, StorageError> {
        let timeout = self.options().call_timeout;
        observed(
            BACKEND,
            "pending_request",
            1,
            self.inner
                .pending
                .submit("pending_request", db_id(id), timeout),
        )
        .await
    }

    async fn save_reply(&self, reply: &StoredReply, fence: &Fence) -> Result<(), StorageError> {
        check_reply("save_reply", reply)?;
        let op = Op::Reply(ReplyOp {
            reply: ReplyInsert::new(reply)?,
            fence: fence.clone(),
        });
        let timeout = self.options().call_timeout;
        match observed(
            BACKEND,
            "save_reply",
            1,
            self.inner.writer.submit("save_reply", op, timeout),
        )
        .await?
        {
            Done::Reply => Ok(()),
            Done::Request(_) => Err(StorageError::backend(
                "save_reply",
                "internal error: a reply got a request's result",
            )),
        }
    }

    async fn replies_for(&self, requests: &[Snowflake]) -> Result<Vec<StoredReply>, StorageError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let ids = json(&distinct_ids(requests));
        let sql = self.inner.sql.replies_for.clone();
        let rows = self
            .call("replies_for", 0, async |conn| {
                sqlx::query_as::<_, ReplyRow>(sql)
                    .bind(ids)
                    .fetch_all(conn)
                    .await
            })
            .await?;
        rows.into_iter().map(ReplyRow::decode).collect()
    }

    async fn claim_unprocessed(
        &self,
        shards: &[ShardId],
        limit: usize,
        claim: &Claim,
    ) -> Result<Vec<ClaimedMessage>, StorageError> {
        if limit == 0 || shards.is_empty() {
            return Ok(Vec::new());
        }
        let texts = shard_texts(shards);
        let shard_json = json(&texts);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let by = claim.by.to_string();
        let duration = millis(claim.duration);
        let claim_sql = self.inner.sql.claim.clone();
        let acked_sql = self.inner.sql.acked_chunks.clone();
        let (mut rows, acked) = self
            .call("claim_unprocessed", texts.len(), async |conn| {
                let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
                let rows = sqlx::query_as::<_, ClaimRow>(claim_sql)
                    .bind(&by)
                    .bind(duration)
                    .bind(&shard_json)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?;
                let streaming: Vec<i64> = rows
                    .iter()
                    .filter(|r| r.message.streaming)
                    .map(|r| r.message.id)
                    .collect();
                let acked = if streaming.is_empty() {
                    Vec::new()
                } else {
                    sqlx::query_as::<_, ReplyRow>(acked_sql)
                        .bind(json(&streaming))
                        .fetch_all(&mut *tx)
                        .await?
                };
                tx.commit().await?;
                Ok((rows, acked))
            })
            .await?;
        rows.sort_by_key(|r| r.seq);
        let mut acked: HashMap<i64, ReplyRow> =
            acked.into_iter().map(|r| (r.request_id, r)).collect();
        rows.into_iter()
            .map(|row| {
                let mut message = row.message;
                if let Some(chunk) = acked.remove(&message.id) {
                    message.acked_id = Some(chunk.id);
                    message.acked_sequence = chunk.sequence;
                    message.acked_frame = Some(chunk.frame);
                }
                message.decode()
            })
            .collect()
    }

    async fn next_deliver_at(
        &self,
        shards: &[ShardId],
    ) -> Result<Option<SystemTime>, StorageError> {
        if shards.is_empty() {
            return Ok(None);
        }
        let texts = shard_texts(shards);
        let sql = self.inner.sql.next_deliver_at.clone();
        let ms = self
            .call("next_deliver_at", texts.len(), async |conn| {
                sqlx::query_scalar::<_, Option<i64>>(sql)
                    .bind(json(&texts))
                    .fetch_one(conn)
                    .await
            })
            .await?;
        ms.map(|ms| from_unix_ms(ms, || "the earliest deliver_at".to_owned()))
            .transpose()
    }

    async fn reset_shards(&self, shards: &[ShardId]) -> Result<(), StorageError> {
        if shards.is_empty() {
            return Ok(());
        }
        let texts = json(&shard_texts(shards));
        // No wake-up: the caller just acquired these shards and reads them next.
        let query = sqlx::query(self.inner.sql.reset_shards.clone()).bind(texts);
        self.reset("reset_shards", query, false).await
    }

    async fn reset_request(&self, request_id: Snowflake) -> Result<(), StorageError> {
        let query = sqlx::query(self.inner.sql.reset_request.clone()).bind(db_id(request_id));
        self.reset("reset_request", query, true).await
    }

    async fn reset_runner(&self, runner: &RunnerAddress) -> Result<(), StorageError> {
        let query = sqlx::query(self.inner.sql.reset_runner.clone()).bind(runner.to_string());
        self.reset("reset_runner", query, true).await
    }

    async fn reset_address(&self, address: &EntityAddress) -> Result<(), StorageError> {
        let query = sqlx::query(self.inner.sql.reset_address.clone())
            .bind(address.entity_type.to_string())
            .bind(address.entity_id.to_string());
        self.reset("reset_address", query, true).await
    }

    async fn clear_address(&self, address: &EntityAddress) -> Result<(), StorageError> {
        let replies = self.inner.sql.clear_address_replies.clone();
        let messages = self.inner.sql.clear_address_messages.clone();
        self.call("clear_address", 0, async |conn| {
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            for sql in [replies, messages] {
                sqlx::query(sql)
                    .bind(address.entity_type.as_str())
                    .bind(address.entity_id.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        })
        .await
    }

    async fn sweep(&self, older_than: Duration, limit: usize) -> Result<usize, StorageError> {
        if limit == 0 {
            return Ok(0);
        }
        let age = millis(older_than);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = &self.inner.sql;
        let deleted = self
            .call("sweep", 0, async |conn| {
                let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
                let ids: Vec<i64> = sqlx::query_scalar(sql.sweep_pick.clone())
                    .bind(age)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?;
                if ids.is_empty() {
                    return Ok(0);
                }
                let ids_json = json(&ids);
                for statement in [&sql.sweep_replies, &sql.sweep_envelopes] {
                    sqlx::query(statement.clone())
                        .bind(&ids_json)
                        .execute(&mut *tx)
                        .await?;
                }
                let deleted = sqlx::query(sql.sweep_requests.clone())
                    .bind(&ids_json)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                Ok(deleted)
            })
            .await?;
        metrics::counter!("shoal_storage_swept_requests_total", "backend" => BACKEND)
            .increment(deleted);
        Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
    }

    fn subscribe(&self) -> broadcast::Receiver<MessageEvent> {
        self.inner.events.subscribe()
    }
}

/// A claimed row with its insertion sequence (`UPDATE … RETURNING` has no order).
#[derive(Debug, sqlx::FromRow)]
struct ClaimRow {
    seq: i64,
    #[sqlx(flatten)]
    message: MessageRow,
}
