//! A durable queue in Postgres: `FOR UPDATE SKIP LOCKED` claims with a visibility timeout, attempts
//! counted in the row, a dead-letter table, and `LISTEN/NOTIFY` to wake consumers at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Row};
use tokio::sync::{Notify, OnceCell};
use tokio_util::sync::CancellationToken;

use super::{EventQueue, QueueError};
use crate::envelope::{DeadLetter, Envelope, NewEnvelope, StoredEnvelope};

/// Embedded migrations, applied in order per table prefix (`{prefix}` is substituted).
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    include_str!("../../migrations/postgres/0001_event_lane_queue.sql"),
)];

/// Settings of a [`PostgresQueue`].
#[derive(Debug, Clone)]
pub struct PostgresQueueOptions {
    url: String,
    table_prefix: String,
    visibility_timeout: Duration,
    call_timeout: Duration,
    poll_interval: Duration,
    max_connections: u32,
}

impl PostgresQueueOptions {
    /// A queue in the database at `url`, in tables named `<table_prefix>_lane_messages` and
    /// `<table_prefix>_lane_dead_letters` (the prefix: a lowercase letter or `_`, then up to 39
    /// lowercase letters, digits or `_`).
    pub fn new(url: impl Into<String>, table_prefix: impl Into<String>) -> Self {
        PostgresQueueOptions {
            url: url.into(),
            table_prefix: table_prefix.into(),
            visibility_timeout: Duration::from_secs(30),
            call_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_secs(1),
            max_connections: 8,
        }
    }

    /// How long a claimed message stays invisible to other consumers (default 30 s). A consumer
    /// that crashes mid-message loses it to another consumer after this long; a handler that
    /// runs longer than this may see its message delivered twice (delivery is at least once).
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = timeout;
        self
    }

    /// The deadline of every database call (default 10 s).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// How often an idle consumer looks for work when no notification arrives (default 1 s; the
    /// fallback if `LISTEN` is down, and the bound on the wait for a delayed retry).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The pool size (default 8).
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max;
        self
    }
}

#[derive(Debug)]
struct Statements {
    enqueue: Arc<str>,
    claim: Arc<str>,
    next_visible: Arc<str>,
    ack: Arc<str>,
    retry: Arc<str>,
    release: Arc<str>,
    dead_letter: Arc<str>,
    dead_letters: Arc<str>,
    waiting: Arc<str>,
}

impl Statements {
    fn new(p: &str) -> Self {
        let columns = "m.id, m.lane, m.event, m.payload, m.source, m.context, m.auth_token, \
                       (extract(epoch FROM m.created_at) * 1000)::bigint, m.attempts";
        Statements {
            enqueue: format!(
                "INSERT INTO {p}_lane_messages \
                 (lane, event, payload, source, context, auth_token) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id"
            )
            .into(),
            claim: format!(
                "WITH picked AS (SELECT id FROM {p}_lane_messages WHERE visible_at <= now() \
                 ORDER BY visible_at, id LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 UPDATE {p}_lane_messages AS m SET attempts = m.attempts + 1, \
                 visible_at = now() + make_interval(secs => $2::float8), claimed_at = now() \
                 FROM picked WHERE m.id = picked.id RETURNING {columns}"
            )
            .into(),
            next_visible: format!(
                "SELECT (extract(epoch FROM (min(visible_at) - now())) * 1000)::bigint \
                 FROM {p}_lane_messages"
            )
            .into(),
            ack: format!("DELETE FROM {p}_lane_messages WHERE id = $1 AND attempts = $2").into(),
            retry: format!(
                "UPDATE {p}_lane_messages SET visible_at = now() + make_interval(secs => $3::float8), \
                 claimed_at = NULL WHERE id = $1 AND attempts = $2"
            )
            .into(),
            release: format!(
                "UPDATE {p}_lane_messages SET attempts = attempts - 1, \
                 visible_at = now() + make_interval(secs => $3::float8), claimed_at = NULL \
                 WHERE id = $1 AND attempts = $2"
            )
            .into(),
            dead_letter: format!(
                "WITH moved AS (DELETE FROM {p}_lane_messages WHERE id = $1 AND attempts = $2 \
                 RETURNING *) INSERT INTO {p}_lane_dead_letters (id, lane, event, payload, source, \
                 context, auth_token, created_at, attempts, reason) SELECT id, lane, event, payload, \
                 source, context, auth_token, created_at, attempts, $3 FROM moved"
            )
            .into(),
            dead_letters: format!(
                "SELECT {columns}, m.reason FROM {p}_lane_dead_letters AS m ORDER BY m.id LIMIT $1"
            )
            .into(),
            waiting: format!("SELECT count(*) FROM {p}_lane_messages").into(),
        }
    }
}

/// A durable [`EventQueue`] in Postgres.
///
/// Claims take up to `max` visible rows with `FOR UPDATE SKIP LOCKED` (competing consumers never
/// block each other), raise `attempts` and push `visible_at` out by the visibility timeout, so a
/// consumer that dies mid-message gives it back when the timeout passes. Ack, retry, release and
/// dead-letter are fenced by `(id, attempts)`: a consumer whose claim expired and was taken over
/// cannot settle the new delivery. Enqueues are followed by a (coalesced) `NOTIFY` that wakes idle
/// consumers at once.
///
/// The pool is created lazily: constructing a queue opens no connection; the first use (or
/// [`EventQueue::init`]) connects and applies the migrations for the table prefix.
#[derive(Debug)]
pub struct PostgresQueue {
    name: String,
    options: PostgresQueueOptions,
    pool: PgPool,
    sql: Statements,
    channel: String,
    wake: Arc<Notify>,
    ready: OnceCell<()>,
    listening: OnceCell<()>,
    /// Set by enqueues; the notifier task turns it into one `NOTIFY` per round trip.
    pending_notify: Arc<Notify>,
    closed: AtomicBool,
    stop: CancellationToken,
}

impl Drop for PostgresQueue {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn check_prefix(prefix: &str) -> Result<(), QueueError> {
    let mut bytes = prefix.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    if !first_ok
        || prefix.len() > 40
        || !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(QueueError::Config(format!(
            "table prefix \"{prefix}\" must be a lowercase letter or '_' followed by up to 39 \
             lowercase letters, digits or '_'"
        )));
    }
    Ok(())
}

impl PostgresQueue {
    /// A queue with its own (lazily connected) pool.
    pub fn new(options: PostgresQueueOptions) -> Result<Self, QueueError> {
        check_prefix(&options.table_prefix)?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.call_timeout)
            .connect_lazy(&options.url)
            .map_err(|e| QueueError::Config(e.to_string()))?;
        Self::with_pool(pool, options)
    }

    /// A queue on an existing pool (the options' URL and pool size are ignored).
    pub fn with_pool(pool: PgPool, options: PostgresQueueOptions) -> Result<Self, QueueError> {
        check_prefix(&options.table_prefix)?;
        let prefix = options.table_prefix.clone();
        Ok(PostgresQueue {
            name: format!("postgres:{prefix}"),
            sql: Statements::new(&prefix),
            channel: format!("{prefix}_lane_wake"),
            options,
            pool,
            wake: Arc::new(Notify::new()),
            ready: OnceCell::new(),
            listening: OnceCell::new(),
            pending_notify: Arc::new(Notify::new()),
            closed: AtomicBool::new(false),
            stop: CancellationToken::new(),
        })
    }

    async fn deadline<T>(
        &self,
        fut: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, QueueError> {
        match tokio::time::timeout(self.options.call_timeout, fut).await {
            Err(_) => Err(QueueError::Timeout(self.options.call_timeout)),
            Ok(Err(err)) => Err(QueueError::Backend(err.to_string())),
            Ok(Ok(value)) => Ok(value),
        }
    }

    async fn ensure_ready(&self) -> Result<(), QueueError> {
        self.ready
            .get_or_try_init(|| async {
                self.deadline(migrate(&self.pool, &self.options.table_prefix))
                    .await?;
                tokio::spawn(notify_after_enqueues(
                    self.pool.clone(),
                    self.channel.clone(),
                    Arc::clone(&self.pending_notify),
                    self.options.call_timeout,
                    self.stop.clone(),
                ));
                Ok::<(), QueueError>(())
            })
            .await
            .map(|_| ())
    }

    /// Dead letters, oldest first (at most `limit`).
    pub async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetter>, QueueError> {
        self.ensure_ready().await?;
        let rows = self
            .deadline(
                sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.dead_letters)))
                    .bind(limit)
                    .fetch_all(&self.pool),
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(DeadLetter {
                    envelope: envelope_from_row(row)?,
                    reason: row.try_get(9).map_err(backend)?,
                })
            })
            .collect()
    }

    /// Messages not yet acknowledged or dead-lettered (waiting, delayed or in flight).
    pub async fn pending(&self) -> Result<i64, QueueError> {
        self.ensure_ready().await?;
        self.deadline(
            sqlx::query_scalar::<_, i64>(AssertSqlSafe(Arc::clone(&self.sql.waiting)))
                .fetch_one(&self.pool),
        )
        .await
    }

    /// Drops this prefix's tables (for tests and teardown).
    pub async fn drop_tables(&self) -> Result<(), QueueError> {
        let p = &self.options.table_prefix;
        let sql = format!(
            "DROP TABLE IF EXISTS {p}_lane_messages, {p}_lane_dead_letters, {p}_lanes_schema"
        );
        self.deadline(sqlx::raw_sql(AssertSqlSafe(sql)).execute(&self.pool))
            .await
            .map(|_| ())
    }

    async fn claim(&self, max: usize) -> Result<Vec<Envelope>, QueueError> {
        let rows = self
            .deadline(
                sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.claim)))
                    .bind(i64::try_from(max).unwrap_or(i64::MAX))
                    .bind(self.options.visibility_timeout.as_secs_f64())
                    .fetch_all(&self.pool),
            )
            .await?;
        let mut batch = rows
            .iter()
            .map(envelope_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        batch.sort_by_key(|e| e.id.parse::<i64>().unwrap_or(i64::MAX));
        Ok(batch)
    }

    async fn settle(
        &self,
        sql: &Arc<str>,
        message: &Envelope,
        extra: Option<f64>,
    ) -> Result<(), QueueError> {
        let id = message_id(message)?;
        let mut query = sqlx::query(AssertSqlSafe(Arc::clone(sql)))
            .bind(id)
            .bind(i32::try_from(message.attempts).unwrap_or(i32::MAX));
        if let Some(seconds) = extra {
            query = query.bind(seconds);
        }
        let done = self.deadline(query.execute(&self.pool)).await?;
        if done.rows_affected() == 0 {
            return Err(QueueError::ClaimLost {
                id: message.id.clone(),
            });
        }
        Ok(())
    }
}

impl PostgresQueue {
    /// A message became visible sooner than the visibility timeout a waiting consumer may be
    /// sleeping until (a retry or release of an in-flight message): wake this process's
    /// consumers and, through the notifier, other processes', so they look again.
    fn visible_sooner(&self) {
        self.wake.notify_waiters();
        self.pending_notify.notify_one();
    }
}

fn backend(err: sqlx::Error) -> QueueError {
    QueueError::Backend(err.to_string())
}

fn message_id(message: &Envelope) -> Result<i64, QueueError> {
    message.id.parse().map_err(|_| QueueError::ClaimLost {
        id: message.id.clone(),
    })
}

fn envelope_from_row(row: &PgRow) -> Result<Envelope, QueueError> {
    Ok(Envelope::from(StoredEnvelope {
        id: row.try_get(0).map_err(backend)?,
        lane: row.try_get(1).map_err(backend)?,
        event: row.try_get(2).map_err(backend)?,
        payload: row.try_get(3).map_err(backend)?,
        source: row.try_get(4).map_err(backend)?,
        context: row.try_get(5).map_err(backend)?,
        auth_token: row.try_get(6).map_err(backend)?,
        created_at_ms: row.try_get(7).map_err(backend)?,
        attempts: row.try_get(8).map_err(backend)?,
    }))
}

async fn migrate(pool: &PgPool, prefix: &str) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("{prefix}_lanes_schema"))
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {prefix}_lanes_schema \
         (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )))
    .execute(&mut *tx)
    .await?;
    let applied: Vec<i32> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT version FROM {prefix}_lanes_schema"
    )))
    .fetch_all(&mut *tx)
    .await?;
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        sqlx::raw_sql(AssertSqlSafe(sql.replace("{prefix}", prefix)))
            .execute(&mut *tx)
            .await?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {prefix}_lanes_schema (version) VALUES ($1)"
        )))
        .bind(version)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Sends `NOTIFY channel` after enqueues, coalescing: every enqueue sets `pending` after its
/// insert committed, and each `NOTIFY` covers every enqueue that happened before it started. A
/// `NOTIFY` inside the insert's transaction would serialize all enqueues on the notification
/// queue's lock at commit; this keeps inserts free to group-commit and sends one notification per
/// round trip under load. If it fails, consumers still find the messages by polling.
async fn notify_after_enqueues(
    pool: PgPool,
    channel: String,
    pending: Arc<Notify>,
    call_timeout: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = pending.notified() => {}
        }
        let sent = tokio::time::timeout(
            call_timeout,
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(&channel)
                .execute(&pool),
        )
        .await;
        match sent {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                tracing::warn!(target: "shoal_lanes", %err, channel, "NOTIFY failed; consumers will poll");
            }
            Err(_) => {
                tracing::warn!(target: "shoal_lanes", channel, "NOTIFY timed out; consumers will poll");
            }
        }
    }
}

/// Forwards `NOTIFY`s on `channel` to `wake` until `stop`; reconnects after failures.
async fn listen(pool: PgPool, channel: String, wake: Arc<Notify>, stop: CancellationToken) {
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => match listener.listen(&channel).await {
                Ok(()) => {
                    // Anything enqueued while we were not listening is picked up now.
                    wake.notify_waiters();
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => return,
                            received = listener.recv() => match received {
                                Ok(_) => wake.notify_waiters(),
                                Err(err) => {
                                    tracing::warn!(target: "shoal_lanes", %err, channel, "queue listener failed; reconnecting");
                                    break;
                                }
                            }
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(target: "shoal_lanes", %err, channel, "LISTEN failed; polling until it works");
                }
            },
            Err(err) => {
                tracing::warn!(target: "shoal_lanes", %err, channel, "queue listener could not connect; polling until it can");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[async_trait]
impl EventQueue for PostgresQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn init(&self) -> Result<(), QueueError> {
        self.ensure_ready().await
    }

    async fn enqueue(&self, message: NewEnvelope) -> Result<String, QueueError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(QueueError::Closed);
        }
        self.ensure_ready().await?;
        let id: i64 = self
            .deadline(
                sqlx::query_scalar(AssertSqlSafe(Arc::clone(&self.sql.enqueue)))
                    .bind(&message.lane)
                    .bind(&message.event)
                    .bind(message.payload.as_ref())
                    .bind(&message.source)
                    .bind(message.context.to_json())
                    .bind(message.auth_token.as_deref())
                    .fetch_one(&self.pool),
            )
            .await?;
        // Wake consumers: this instance's at once, other processes' through the notifier.
        self.wake.notify_waiters();
        self.pending_notify.notify_one();
        Ok(id.to_string())
    }

    async fn receive(&self, max: usize) -> Result<Vec<Envelope>, QueueError> {
        self.ensure_ready().await?;
        // Only consumers listen; producers never hold a LISTEN connection.
        self.listening
            .get_or_init(|| async {
                tokio::spawn(listen(
                    self.pool.clone(),
                    self.channel.clone(),
                    Arc::clone(&self.wake),
                    self.stop.clone(),
                ));
            })
            .await;
        let max = max.max(1);
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(QueueError::Closed);
            }
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let batch = self.claim(max).await?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            let next: Option<i64> = self
                .deadline(
                    sqlx::query_scalar(AssertSqlSafe(Arc::clone(&self.sql.next_visible)))
                        .fetch_one(&self.pool),
                )
                .await?;
            let poll = self.options.poll_interval;
            let wait = next.map_or(poll, |ms| {
                Duration::from_millis(u64::try_from(ms.max(1)).unwrap_or(1)).min(poll)
            });
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(wait) => {}
                () = self.stop.cancelled() => return Err(QueueError::Closed),
            }
        }
    }

    async fn ack(&self, message: &Envelope) -> Result<(), QueueError> {
        self.settle(&self.sql.ack, message, None).await
    }

    async fn retry(&self, message: &Envelope, delay: Duration) -> Result<(), QueueError> {
        self.settle(&self.sql.retry, message, Some(delay.as_secs_f64()))
            .await?;
        self.visible_sooner();
        Ok(())
    }

    async fn release(&self, message: &Envelope, delay: Duration) -> Result<(), QueueError> {
        self.settle(&self.sql.release, message, Some(delay.as_secs_f64()))
            .await?;
        self.visible_sooner();
        Ok(())
    }

    async fn dead_letter(&self, message: &Envelope, reason: &str) -> Result<(), QueueError> {
        let id = message_id(message)?;
        let done = self
            .deadline(
                sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.dead_letter)))
                    .bind(id)
                    .bind(i32::try_from(message.attempts).unwrap_or(i32::MAX))
                    .bind(reason)
                    .execute(&self.pool),
            )
            .await?;
        if done.rows_affected() == 0 {
            return Err(QueueError::ClaimLost {
                id: message.id.clone(),
            });
        }
        Ok(())
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.stop.cancel();
        self.wake.notify_waiters();
    }
}
