//! [`PostgresMessageStorage`]: durable messages in Postgres.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use shoal_protocol::{EntityAddress, RunnerAddress, ShardId, Snowflake};
use sqlx::postgres::PgPool;
use tokio::sync::broadcast;

use super::listener::{Wakeups, payloads, replied_line, saved_line};
use super::message_queries::MessageQueries;
use super::runner::PostgresRunnerStorage;
use crate::error::StorageError;
use crate::messages::checks::{check_envelope_id, check_reply};
use crate::messages::{
    Claim, ClaimedMessage, EnvelopeKind, Fence, MessageEvent, MessageStorage, PersistedEnvelope,
    PersistedRequest, SaveResult, StoredReply,
};
use crate::options::StorageOptions;
use crate::sql::call::{call, observed, with_deadline};
use crate::sql::group_commit::{BatchResult, GroupCommit};
use crate::sql::messages::{
    InterruptedRequest, MAX_BATCH, MessageRow, OriginalRow, REPLY_FINAL, ReplyInsert, ReplyRow,
    RequestRow, db_epoch, db_id, distinct_ids, from_unix_ms, pending_results, save_results,
    shard_texts, snowflake,
};
use crate::sql::millis;

const BACKEND: &str = "postgres";

/// How many batch writes of each kind (requests, replies) may run at once. Two keep a batch
/// forming while another commits, without taking many pooled connections.
const WRITE_SLOTS: usize = 2;

/// How many events a slow subscriber may fall behind before it sees
/// [`broadcast::error::RecvError::Lagged`].
const EVENT_CAPACITY: usize = 4096;

/// Durable messages in Postgres, in the database and under the table prefix of a
/// [`PostgresRunnerStorage`] (fencing compares a reply's epoch with the shard's row in
/// `{prefix}_leases`, inside the statement that writes the reply).
///
/// - **Group commit.** Concurrent `save_request` calls are written by a background writer as one
///   multi-row `INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING` per batch (up to 512), and
///   concurrent `save_reply` calls as one statement per batch that checks every reply's fence,
///   stores the replies and marks finished requests processed; each caller gets its own result
///   (a fenced reply fails only its own caller). An idle writer writes at once.
/// - **Claims** are one `UPDATE … FROM (SELECT … FOR UPDATE SKIP LOCKED)` statement on the
///   database clock.
/// - **Wake-ups.** Writes `NOTIFY` a channel named after the prefix with their commit; every
///   instance that has subscribers `LISTEN`s on a pooled connection and republishes other
///   instances' events (reconnecting with backoff after a broken connection).
/// - Every call is bounded by [`StorageOptions::call_timeout`] (the wait for a batch included);
///   a connection whose call failed or timed out is closed, not pooled.
///
/// Cheap to clone; dropping the last clone stops its writers and listener.
///
/// ```no_run
/// # async fn demo() -> Result<(), shoal_storage::StorageError> {
/// use shoal_storage::{PostgresMessageStorage, PostgresRunnerStorage, StorageOptions};
///
/// let runners =
///     PostgresRunnerStorage::connect("postgres://shoal@db/shoal", StorageOptions::new()).await?;
/// // The same pool, the same tables prefix: replies are fenced by these leases.
/// let messages = PostgresMessageStorage::new(runners.inner()).await?;
/// # let _ = messages;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresMessageStorage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    options: StorageOptions,
    sql: Arc<MessageQueries>,
    requests: GroupCommit<RequestRow, SaveResult>,
    replies: GroupCommit<ReplyOp, ()>,
    /// Reads of pushed requests, batched like the writes.
    pending: GroupCommit<i64, Option<PersistedRequest>>,
    wakeups: Wakeups,
}

/// A reply waiting for its batch, with its fence.
#[derive(Debug)]
struct ReplyOp {
    reply: ReplyInsert,
    fence: Fence,
    fence_shard: String,
}

/// What the batch writers need.
#[derive(Debug)]
struct Writer {
    pool: PgPool,
    sql: Arc<MessageQueries>,
    timeout: Duration,
    events: broadcast::Sender<MessageEvent>,
    origin: Arc<str>,
    channel: Arc<str>,
}

impl PostgresMessageStorage {
    /// Connects to the database at `url` and applies the migrations (unless
    /// [`StorageOptions::migrate`] is off), like [`PostgresRunnerStorage::connect`].
    pub async fn connect(url: &str, options: StorageOptions) -> Result<Self, StorageError> {
        let runners = PostgresRunnerStorage::connect(url, options).await?;
        Self::new(runners.inner()).await
    }

    /// Uses an existing pool, like [`PostgresRunnerStorage::from_pool`] (migrates unless told
    /// not to).
    pub async fn from_pool(pool: PgPool, options: StorageOptions) -> Result<Self, StorageError> {
        let runners = PostgresRunnerStorage::from_pool(pool, options).await?;
        Self::new(runners.inner()).await
    }

    /// Message storage on the pool, options and table prefix of `runners` (whose constructor
    /// applied the migrations). Starts the batch writers on the current tokio runtime.
    pub async fn new(runners: &PostgresRunnerStorage) -> Result<Self, StorageError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| StorageError::InvalidArgument {
                operation: "connect",
                detail: "PostgresMessageStorage must be created inside a tokio runtime".to_owned(),
            })?;
        let pool = runners.pool().clone();
        let options = runners.options().clone();
        let sql = Arc::new(MessageQueries::new(&options.table_prefix));
        let wakeups = Wakeups::new(
            pool.clone(),
            options.table_prefix.table("messages"),
            runtime.clone(),
            EVENT_CAPACITY,
        );
        let writer = Arc::new(Writer {
            pool: pool.clone(),
            sql: sql.clone(),
            timeout: options.call_timeout,
            events: wakeups.events.clone(),
            origin: wakeups.origin.clone(),
            channel: wakeups.channel.clone(),
        });
        let requests = GroupCommit::spawn(&runtime, "save_request", MAX_BATCH, WRITE_SLOTS, {
            let writer = writer.clone();
            move |rows| {
                let writer = writer.clone();
                async move { writer.save_requests(rows).await }
            }
        });
        let replies = GroupCommit::spawn(&runtime, "save_reply", MAX_BATCH, WRITE_SLOTS, {
            let writer = writer.clone();
            move |ops| {
                let writer = writer.clone();
                async move { writer.save_replies(ops).await }
            }
        });
        let pending = GroupCommit::spawn(&runtime, "pending_request", MAX_BATCH, WRITE_SLOTS, {
            move |ids| {
                let writer = writer.clone();
                async move { writer.pending_requests(ids).await }
            }
        });
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                options,
                sql,
                requests,
                replies,
                pending,
                wakeups,
            }),
        })
    }

    /// Starts listening for other processes' events (if no subscriber has yet) and waits until
    /// the listener is connected, within the call deadline. Events published before that moment
    /// by other processes are not seen (they are hints; polling finds the messages).
    pub async fn listen(&self) -> Result<(), StorageError> {
        let timeout = self.inner.options.call_timeout;
        with_deadline(BACKEND, "listen", 0, timeout, async {
            self.inner.wakeups.listening().await;
            Ok(())
        })
        .await
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The options this storage runs with.
    pub fn options(&self) -> &StorageOptions {
        &self.inner.options
    }

    /// The `LISTEN/NOTIFY` channel of this table prefix (`{prefix}_messages`).
    pub fn channel(&self) -> &str {
        &self.inner.wakeups.channel
    }

    async fn call<T>(
        &self,
        operation: &'static str,
        shards: usize,
        work: impl AsyncFnOnce(&mut sqlx::PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, StorageError> {
        call(
            BACKEND,
            &self.inner.pool,
            self.inner.options.call_timeout,
            operation,
            shards,
            work,
        )
        .await
    }

    /// Lifts claims with `sql` (which returns the shard of every row it changed), then wakes
    /// those shards' owners in this and other processes.
    async fn reset(
        &self,
        operation: &'static str,
        sql: sqlx::SqlStr,
        bind: impl FnOnce(
            sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
        )
            -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
        wake: bool,
    ) -> Result<(), StorageError> {
        let wakeups = &self.inner.wakeups;
        let notify = self.inner.sql.notify.clone();
        let shards = self
            .call(operation, 0, async |conn| {
                use sqlx::Row;
                let rows = bind(sqlx::query(sql).persistent(false))
                    .fetch_all(&mut *conn)
                    .await?;
                let mut shards = BTreeSet::new();
                for row in rows {
                    shards.insert(row.try_get::<String, _>(0)?);
                }
                if wake && !shards.is_empty() {
                    let lines = shards.iter().map(|s| format!("s:{s}"));
                    let payloads = payloads(&wakeups.origin, lines);
                    sqlx::query(notify)
                        .persistent(false)
                        .bind(&*wakeups.channel)
                        .bind(&payloads)
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(shards)
            })
            .await?;
        if wake {
            wakeups.publish(
                shards
                    .iter()
                    .filter_map(|s| s.parse().ok())
                    .map(|shard| MessageEvent::Saved { shard }),
            );
        }
        Ok(())
    }
}

impl Writer {
    /// One batch of pending-request reads: one query by primary key.
    async fn pending_requests(&self, ids: Vec<i64>) -> BatchResult<Option<PersistedRequest>> {
        let rows = call(
            BACKEND,
            &self.pool,
            self.timeout,
            "pending_request",
            0,
            async |conn| {
                sqlx::query_as::<_, MessageRow>(self.sql.pending_requests.clone())
                    .persistent(false)
                    .bind(&ids)
                    .fetch_all(&mut *conn)
                    .await
            },
        )
        .await?;
        Ok(pending_results(&ids, rows))
    }

    /// One batch of requests: one insert, then one query for the originals of duplicates.
    async fn save_requests(&self, rows: Vec<RequestRow>) -> BatchResult<SaveResult> {
        // Insert in key order (then id order) so that concurrent batches with common keys wait
        // for one another instead of deadlocking. Rows of one batch are concurrent calls: any
        // order among them is a valid FIFO order.
        let mut order: Vec<&RequestRow> = rows.iter().collect();
        order.sort_by(|a, b| (&a.key, a.id).cmp(&(&b.key, b.id)));
        let ids: Vec<i64> = order.iter().map(|r| r.id).collect();
        let keys: Vec<Option<&str>> = order.iter().map(|r| r.key.as_deref()).collect();
        let shard_ids: Vec<&str> = order.iter().map(|r| r.shard_id.as_str()).collect();
        let types: Vec<&str> = order.iter().map(|r| r.entity_type.as_str()).collect();
        let entity_ids: Vec<&str> = order.iter().map(|r| r.entity_id.as_str()).collect();
        let tags: Vec<&str> = order.iter().map(|r| r.tag.as_str()).collect();
        let payload: Vec<&[u8]> = order.iter().map(|r| &r.payload[..]).collect();
        let headers: Vec<Option<&[u8]>> = order.iter().map(|r| r.headers.as_deref()).collect();
        let streaming: Vec<bool> = order.iter().map(|r| r.streaming).collect();
        let uninterruptible: Vec<bool> = order.iter().map(|r| r.uninterruptible).collect();
        let deliver_at: Vec<Option<i64>> = order.iter().map(|r| r.deliver_at_ms).collect();
        let claimed_by: Vec<Option<&str>> = order.iter().map(|r| r.claimed_by.as_deref()).collect();
        let claim_ms: Vec<Option<i64>> = order.iter().map(|r| r.claim_ms).collect();
        // Only unclaimed rows wake the shard's owner (see `MessageEvent::Saved`); a batch of
        // pushed requests sends no notification at all.
        let claimable: BTreeSet<&ShardId> = rows
            .iter()
            .filter(|r| r.claimed_by.is_none())
            .map(|r| &r.shard)
            .collect();
        let notifications = payloads(&self.origin, claimable.iter().map(|s| saved_line(s)));

        let (inserted, originals) = call(
            BACKEND,
            &self.pool,
            self.timeout,
            "save_request",
            rows.iter().map(|r| &r.shard).collect::<BTreeSet<_>>().len(),
            async |conn| {
                let inserted: HashSet<i64> =
                    sqlx::query_as::<_, (i64, Option<i64>)>(self.sql.save_requests.clone())
                        .persistent(false)
                        .bind(&ids)
                        .bind(&keys)
                        .bind(&shard_ids)
                        .bind(&types)
                        .bind(&entity_ids)
                        .bind(&tags)
                        .bind(&payload)
                        .bind(&headers)
                        .bind(&streaming)
                        .bind(&uninterruptible)
                        .bind(&deliver_at)
                        .bind(&claimed_by)
                        .bind(&claim_ms)
                        .bind(&*self.channel)
                        .bind(&notifications)
                        .fetch_all(&mut *conn)
                        .await?
                        .into_iter()
                        .map(|(id, _)| id)
                        .collect();
                let originals = if inserted.len() < rows.len() {
                    let missing: Vec<&RequestRow> =
                        rows.iter().filter(|r| !inserted.contains(&r.id)).collect();
                    let keys: Vec<&str> = missing.iter().filter_map(|r| r.key.as_deref()).collect();
                    let ids: Vec<i64> = missing.iter().map(|r| r.id).collect();
                    sqlx::query_as::<_, OriginalRow>(self.sql.originals.clone())
                        .persistent(false)
                        .bind(&keys)
                        .bind(&ids)
                        .fetch_all(&mut *conn)
                        .await?
                } else {
                    Vec::new()
                };
                Ok((inserted, originals))
            },
        )
        .await?;

        let saved: BTreeSet<&ShardId> = rows
            .iter()
            .filter(|r| r.claimed_by.is_none() && inserted.contains(&r.id))
            .map(|r| &r.shard)
            .collect();
        for shard in saved {
            let _ = self.events.send(MessageEvent::Saved {
                shard: shard.clone(),
            });
        }
        Ok(save_results(&rows, &inserted, originals))
    }

    /// One batch of replies: one statement checks the fences, stores the replies and marks
    /// finished requests processed.
    async fn save_replies(&self, ops: Vec<ReplyOp>) -> BatchResult<()> {
        // Insert in (request, kind, sequence) order so that concurrent batches touching the same
        // request wait for one another instead of deadlocking.
        let mut order: Vec<usize> = (0..ops.len()).collect();
        order.sort_by_key(|i| {
            let r = &ops[*i].reply;
            (r.request_id, r.kind, r.sequence, r.id)
        });
        let ids: Vec<i64> = order.iter().map(|i| ops[*i].reply.id).collect();
        let request_ids: Vec<i64> = order.iter().map(|i| ops[*i].reply.request_id).collect();
        let kinds: Vec<i16> = order.iter().map(|i| ops[*i].reply.kind).collect();
        let sequences: Vec<Option<i32>> = order.iter().map(|i| ops[*i].reply.sequence).collect();
        let frames: Vec<&[u8]> = order.iter().map(|i| &ops[*i].reply.frame[..]).collect();
        let acked: Vec<bool> = order.iter().map(|i| ops[*i].reply.acked).collect();
        let fence_shards: Vec<&str> = order.iter().map(|i| ops[*i].fence_shard.as_str()).collect();
        let fence_epochs: Vec<i64> = order
            .iter()
            .map(|i| db_epoch(ops[*i].fence.epoch))
            .collect();
        let distinct_shards: Vec<&str> = fence_shards
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let requests: BTreeSet<i64> = request_ids.iter().copied().collect();
        let notifications = payloads(
            &self.origin,
            requests.iter().map(|id| replied_line(snowflake(*id))),
        );

        let (fenced_ord, fenced_epoch) = call(
            BACKEND,
            &self.pool,
            self.timeout,
            "save_reply",
            distinct_shards.len(),
            async |conn| {
                let (ords, epochs, _processed, _notified) =
                    sqlx::query_as::<_, (Vec<i64>, Vec<i64>, i64, Option<i64>)>(
                        self.sql.save_replies.clone(),
                    )
                    .persistent(false)
                    .bind(&ids)
                    .bind(&request_ids)
                    .bind(&kinds)
                    .bind(&sequences)
                    .bind(&frames)
                    .bind(&acked)
                    .bind(&fence_shards)
                    .bind(&fence_epochs)
                    .bind(&*self.channel)
                    .bind(&notifications)
                    .bind(&distinct_shards)
                    .fetch_one(&mut *conn)
                    .await?;
                Ok((ords, epochs))
            },
        )
        .await?;

        let mut results: Vec<Result<(), StorageError>> = (0..ops.len()).map(|_| Ok(())).collect();
        for (ord, current) in fenced_ord.into_iter().zip(fenced_epoch) {
            let index = usize::try_from(ord - 1)
                .ok()
                .and_then(|position| order.get(position))
                .copied();
            if let Some(index) = index
                && let Some(slot) = results.get_mut(index)
            {
                let fence = &ops[index].fence;
                *slot = Err(StorageError::Fenced {
                    shard: fence.shard.clone(),
                    epoch: fence.epoch.0,
                    current: u64::try_from(current).unwrap_or(0),
                });
            }
        }
        let replied: BTreeSet<i64> = ops
            .iter()
            .zip(&results)
            .filter(|(_, result)| result.is_ok())
            .map(|(op, _)| op.reply.request_id)
            .collect();
        for request_id in replied {
            let _ = self.events.send(MessageEvent::Replied {
                request_id: snowflake(request_id),
            });
        }
        Ok(results)
    }
}

#[async_trait]
impl MessageStorage for PostgresMessageStorage {
    async fn save_request(
        &self,
        request: &PersistedRequest,
        claim: Option<&Claim>,
    ) -> Result<SaveResult, StorageError> {
        let row = RequestRow::new(request, claim);
        let timeout = self.inner.options.call_timeout;
        observed(
            BACKEND,
            "save_request",
            1,
            self.inner.requests.submit("save_request", row, timeout),
        )
        .await
    }

    async fn save_envelope(&self, envelope: &PersistedEnvelope) -> Result<(), StorageError> {
        match envelope.kind {
            EnvelopeKind::AckChunk { reply_id } => {
                let sql = self.inner.sql.ack_chunk.clone();
                self.call("save_envelope", 0, async |conn| {
                    sqlx::query(sql)
                        .persistent(false)
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
                let wakeups = &self.inner.wakeups;
                let payloads = payloads(&wakeups.origin, [saved_line(&envelope.address.shard)]);
                let pending = self
                    .call("save_envelope", 1, async |conn| {
                        use sqlx::Connection;
                        let mut tx = conn.begin().await?;
                        let request = sqlx::query_as::<_, InterruptedRequest>(
                            sql.interrupted_request.clone(),
                        )
                        .persistent(false)
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
                            .persistent(false)
                            .bind(db_id(envelope.id))
                            .bind(db_id(envelope.request_id))
                            .bind(&request.shard_id)
                            .bind(&request.entity_type)
                            .bind(&request.entity_id)
                            .bind(processed)
                            .fetch_optional(&mut *tx)
                            .await?;
                        if stored.is_none() {
                            let holder =
                                sqlx::query_scalar::<_, Option<i64>>(sql.message_request.clone())
                                    .persistent(false)
                                    .bind(db_id(envelope.id))
                                    .fetch_optional(&mut *tx)
                                    .await?
                                    .flatten()
                                    .map(snowflake);
                            tx.commit().await?;
                            return Ok(check_envelope_id(envelope, holder).map(|()| false));
                        }
                        if !processed {
                            sqlx::query(sql.notify.clone())
                                .persistent(false)
                                .bind(&*wakeups.channel)
                                .bind(&payloads)
                                .execute(&mut *tx)
                                .await?;
                        }
                        tx.commit().await?;
                        Ok(Ok(!processed))
                    })
                    .await??;
                if pending {
                    wakeups.publish([MessageEvent::Saved {
                        shard: envelope.address.shard.clone(),
                    }]);
                }
                Ok(())
            }
        }
    }

    async fn save_reply(&self, reply: &StoredReply, fence: &Fence) -> Result<(), StorageError> {
        check_reply("save_reply", reply)?;
        let op = ReplyOp {
            reply: ReplyInsert::new(reply)?,
            fence: fence.clone(),
            fence_shard: fence.shard.to_string(),
        };
        debug_assert!(op.reply.kind == REPLY_FINAL || op.reply.sequence.is_some());
        let timeout = self.inner.options.call_timeout;
        observed(
            BACKEND,
            "save_reply",
            1,
            self.inner.replies.submit("save_reply", op, timeout),
        )
        .await
    }

    async fn pending_request(
        &self,
        id: Snowflake,
    ) -> Result<Option<PersistedRequest>, StorageError> {
        let timeout = self.inner.options.call_timeout;
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

    async fn replies_for(&self, requests: &[Snowflake]) -> Result<Vec<StoredReply>, StorageError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let ids = distinct_ids(requests);
        let sql = self.inner.sql.replies_for.clone();
        let rows = self
            .call("replies_for", 0, async |conn| {
                sqlx::query_as::<_, ReplyRow>(sql)
                    .persistent(false)
                    .bind(&ids)
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
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let by = claim.by.to_string();
        let duration = millis(claim.duration);
        let sql = self.inner.sql.claim.clone();
        let rows = self
            .call("claim_unprocessed", texts.len(), async |conn| {
                // Prepared, unlike the other statements on the messages table: planned for
                // its parameters against statistics that lag a fast-growing backlog, the
                // per-shard candidates became a bitmap scan and sort of each shard's whole
                // backlog (87 ms per claim of 100 from a 50k backlog, against 13 ms for the
                // cached plan's ordered index scans).
                sqlx::query_as::<_, MessageRow>(sql)
                    .bind(&texts)
                    .bind(limit)
                    .bind(&by)
                    .bind(duration)
                    .fetch_all(conn)
                    .await
            })
            .await?;
        rows.into_iter().map(MessageRow::decode).collect()
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
                    .persistent(false)
                    .bind(&texts)
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
        let texts = shard_texts(shards);
        // No wake-up: the caller just acquired these shards and reads them next.
        self.reset(
            "reset_shards",
            self.inner.sql.reset_shards.clone(),
            |q| q.bind(texts),
            false,
        )
        .await
    }

    async fn reset_request(&self, request_id: Snowflake) -> Result<(), StorageError> {
        self.reset(
            "reset_request",
            self.inner.sql.reset_request.clone(),
            |q| q.bind(db_id(request_id)),
            true,
        )
        .await
    }

    async fn reset_runner(&self, runner: &RunnerAddress) -> Result<(), StorageError> {
        let runner = runner.to_string();
        self.reset(
            "reset_runner",
            self.inner.sql.reset_runner.clone(),
            |q| q.bind(runner),
            true,
        )
        .await
    }

    async fn reset_address(&self, address: &EntityAddress) -> Result<(), StorageError> {
        let (entity_type, entity_id) = (
            address.entity_type.to_string(),
            address.entity_id.to_string(),
        );
        self.reset(
            "reset_address",
            self.inner.sql.reset_address.clone(),
            |q| q.bind(entity_type).bind(entity_id),
            true,
        )
        .await
    }

    async fn clear_address(&self, address: &EntityAddress) -> Result<(), StorageError> {
        let sql = self.inner.sql.clear_address.clone();
        self.call("clear_address", 0, async |conn| {
            sqlx::query(sql)
                .persistent(false)
                .bind(address.entity_type.as_str())
                .bind(address.entity_id.as_str())
                .execute(conn)
                .await
                .map(drop)
        })
        .await
    }

    async fn sweep(&self, older_than: Duration, limit: usize) -> Result<usize, StorageError> {
        if limit == 0 {
            return Ok(0);
        }
        let age = millis(older_than);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = self.inner.sql.sweep.clone();
        let deleted = self
            .call("sweep", 0, async |conn| {
                sqlx::query_scalar::<_, i64>(sql)
                    .persistent(false)
                    .bind(age)
                    .bind(limit)
                    .fetch_one(conn)
                    .await
            })
            .await?;
        metrics::counter!("shoal_storage_swept_requests_total", "backend" => BACKEND)
            .increment(u64::try_from(deleted).unwrap_or(0));
        Ok(usize::try_from(deleted).unwrap_or(0))
    }

    fn subscribe(&self) -> broadcast::Receiver<MessageEvent> {
        let receiver = self.inner.wakeups.events.subscribe();
        self.inner.wakeups.start();
        receiver
    }

    fn events_reach_other_processes(&self) -> bool {
        true
    }
}
