//! One storage call: a deadline around everything (pool wait included), a tracing span, and a
//! connection that is closed instead of returned to the pool unless the call finished cleanly.
//!
//! A query stuck on a dead or wedged connection must not hang the caller (Effect #6508: a refresh
//! that never returned let two runners run the same entity), and the connection it was stuck on
//! must not be handed to the next call.

use std::future::Future;
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool};
use tracing::Instrument;

use crate::error::StorageError;

/// Which backend a call runs on, for spans and metrics.
pub(crate) type Backend = &'static str;

/// Runs `work` under `timeout`, in a span naming the backend, operation and shard count.
pub(crate) async fn with_deadline<T>(
    backend: Backend,
    operation: &'static str,
    shards: usize,
    timeout: Duration,
    work: impl Future<Output = Result<T, StorageError>>,
) -> Result<T, StorageError> {
    observed(backend, operation, shards, async {
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(StorageError::Timeout { operation, timeout }),
        }
    })
    .await
}

/// Runs `work`, which bounds itself (a group-commit submission), in a span naming the backend,
/// operation and shard count, with the same logs and metrics as [`with_deadline`].
pub(crate) async fn observed<T>(
    backend: Backend,
    operation: &'static str,
    shards: usize,
    work: impl Future<Output = Result<T, StorageError>>,
) -> Result<T, StorageError> {
    let span = tracing::debug_span!("storage_call", backend, operation, shards);
    async move {
        let started = Instant::now();
        let result = work.await;
        let elapsed = started.elapsed();
        let outcome = match &result {
            Ok(_) => {
                tracing::debug!(?elapsed, "storage call finished");
                "ok"
            }
            Err(error @ StorageError::Timeout { .. }) => {
                tracing::warn!(?elapsed, %error, "storage call timed out; its connection is closed");
                "timeout"
            }
            Err(error @ StorageError::NotStarted { .. }) => {
                tracing::warn!(?elapsed, %error, "storage call did not start in time");
                "not_started"
            }
            Err(error) => {
                tracing::warn!(?elapsed, %error, "storage call failed");
                "error"
            }
        };
        metrics::counter!(
            "shoal_storage_calls_total",
            "backend" => backend,
            "operation" => operation,
            "outcome" => outcome,
        )
        .increment(1);
        result
    }
    .instrument(span)
    .await
}

/// A pooled connection checked out for one call. Unless [`Checkout::finish`] is called, dropping
/// it (an error, or the deadline dropping the call's future) closes the connection instead of
/// returning it to the pool, so the pool opens a fresh one for the next call.
#[derive(Debug)]
pub(crate) struct Checkout<DB: Database> {
    conn: PoolConnection<DB>,
    finished: bool,
}

impl<DB: Database> Checkout<DB> {
    /// Waits for a pooled connection (the caller's deadline bounds the wait).
    pub(crate) async fn take(
        backend: Backend,
        pool: &Pool<DB>,
        operation: &'static str,
        timeout: Duration,
    ) -> Result<Self, StorageError> {
        let conn = pool
            .acquire()
            .await
            .map_err(|e| map_error(backend, operation, timeout, e))?;
        Ok(Self {
            conn,
            finished: false,
        })
    }

    /// The connection.
    pub(crate) fn conn(&mut self) -> &mut DB::Connection {
        &mut self.conn
    }

    /// The call finished cleanly: the connection goes back to the pool.
    pub(crate) fn finish(mut self) {
        self.finished = true;
    }
}

impl<DB: Database> Drop for Checkout<DB> {
    fn drop(&mut self) {
        if !self.finished {
            self.conn.close_on_drop();
        }
    }
}

/// Maps a sqlx error to a [`StorageError`]. Waits that ran out are time-outs: the pool's, a
/// Postgres `statement_timeout` (SQLSTATE 57014), and SQLite's busy timeout (`SQLITE_BUSY`, its
/// primary result code 5); everything else is a backend error.
pub(crate) fn map_error(
    backend: Backend,
    operation: &'static str,
    timeout: Duration,
    error: sqlx::Error,
) -> StorageError {
    let timed_out = match &error {
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => match (backend, db.code()) {
            ("postgres", Some(code)) => code == "57014",
            ("sqlite", Some(code)) => code.parse::<i32>().is_ok_and(|c| c & 0xff == 5),
            _ => false,
        },
        _ => false,
    };
    if timed_out {
        StorageError::Timeout { operation, timeout }
    } else {
        StorageError::backend(operation, error)
    }
}

/// One call on `pool`: [`with_deadline`] around a [`Checkout`] that `work` runs on; the
/// connection goes back to the pool only if `work` succeeded in time.
pub(crate) async fn call<DB: Database, T>(
    backend: Backend,
    pool: &Pool<DB>,
    timeout: Duration,
    operation: &'static str,
    shards: usize,
    work: impl AsyncFnOnce(&mut DB::Connection) -> Result<T, sqlx::Error>,
) -> Result<T, StorageError> {
    with_deadline(backend, operation, shards, timeout, async {
        let mut checkout = Checkout::take(backend, pool, operation, timeout).await?;
        let value = work(checkout.conn())
            .await
            .map_err(|e| map_error(backend, operation, timeout, e))?;
        checkout.finish();
        Ok(value)
    })
    .await
}
