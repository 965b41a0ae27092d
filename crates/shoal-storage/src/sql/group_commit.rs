//! Group commit: concurrent calls collected into one write per batch.
//!
//! A durable single-row write costs a commit (a WAL flush); a thousand rows in one statement cost
//! about the same. Callers [`GroupCommit::submit`] one operation each and wait for their own
//! result; a background task takes whatever is queued (up to `max_batch`) as one batch and hands
//! it to the write function. When a write slot is free the first operation is written at once
//! (no added latency when idle); while every slot is busy, operations accumulate into the next
//! batch.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::StorageError;

/// What a batch write returns: one result per operation, in order, or one error for all.
pub(crate) type BatchResult<Out> = Result<Vec<Result<Out, StorageError>>, StorageError>;

/// How many operations may wait for a batch before submitters wait for room.
const QUEUE: usize = 8192;

/// An operation waits in the queue.
const QUEUED: u8 = 0;
/// The writer took it into a batch: it may be written.
const TAKEN: u8 = 1;
/// Its caller gave up before the writer took it: it is never written.
const WITHDRAWN: u8 = 2;

struct Pending<Op, Out> {
    op: Op,
    reply: oneshot::Sender<Result<Out, StorageError>>,
    state: Arc<AtomicU8>,
}

/// The submitting side of a group-commit writer. Dropping every clone stops the writer after the
/// batches under way.
pub(crate) struct GroupCommit<Op, Out> {
    name: &'static str,
    queue: mpsc::Sender<Pending<Op, Out>>,
}

impl<Op, Out> Clone for GroupCommit<Op, Out> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            queue: self.queue.clone(),
        }
    }
}

impl<Op, Out> fmt::Debug for GroupCommit<Op, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupCommit")
            .field("name", &self.name)
            .field("queued", &(QUEUE - self.queue.capacity()))
            .finish()
    }
}

impl<Op: Send + 'static, Out: Send + 'static> GroupCommit<Op, Out> {
    /// Starts a writer on `runtime` that runs at most `slots` batch writes at once, each of at
    /// most `max_batch` operations. `name` labels spans, metrics and errors.
    pub(crate) fn spawn<W, Fut>(
        runtime: &tokio::runtime::Handle,
        name: &'static str,
        max_batch: usize,
        slots: usize,
        write: W,
    ) -> Self
    where
        W: Fn(Vec<Op>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = BatchResult<Out>> + Send + 'static,
    {
        let (queue, rx) = mpsc::channel(QUEUE);
        runtime.spawn(run(
            name,
            rx,
            max_batch.max(1),
            Arc::new(Semaphore::new(slots.max(1))),
            Arc::new(write),
        ));
        Self { name, queue }
    }

    /// Queues `op` and waits for its result, at most `timeout`. When the deadline passes while
    /// `op` is still queued, it is withdrawn and never written
    /// ([`StorageError::NotStarted`]: nothing was written); once its batch has started, a
    /// deadline means the outcome is unknown ([`StorageError::Timeout`]). An operation whose
    /// caller stopped waiting before its batch was written is dropped unwritten. Errors of the
    /// whole batch name the caller's `operation`.
    pub(crate) async fn submit(
        &self,
        operation: &'static str,
        op: Op,
        timeout: Duration,
    ) -> Result<Out, StorageError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (reply, result) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        let pending = Pending {
            op,
            reply,
            state: state.clone(),
        };
        match tokio::time::timeout_at(deadline, self.queue.send(pending)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(self.stopped()),
            // The queue stayed full: nothing was queued.
            Err(_) => return Err(StorageError::NotStarted { operation, timeout }),
        }
        let result = match tokio::time::timeout_at(deadline, result).await {
            Ok(result) => result.map_err(|_| self.stopped())?,
            Err(_) => {
                let withdrawn = state
                    .compare_exchange(QUEUED, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                return Err(if withdrawn {
                    StorageError::NotStarted { operation, timeout }
                } else {
                    StorageError::Timeout { operation, timeout }
                });
            }
        };
        result.map_err(|error| match error {
            StorageError::Timeout { timeout, .. } => StorageError::Timeout { operation, timeout },
            StorageError::Backend { source, .. } => StorageError::Backend { operation, source },
            other => other,
        })
    }

    fn stopped(&self) -> StorageError {
        StorageError::backend(self.name, WriterStopped(self.name))
    }
}

/// The writer task ended (its runtime shut down).
#[derive(Debug)]
struct WriterStopped(&'static str);

impl fmt::Display for WriterStopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the `{}` group-commit writer has stopped (its tokio runtime shut down)",
            self.0
        )
    }
}

impl Error for WriterStopped {}

async fn run<Op, Out, W, Fut>(
    name: &'static str,
    mut rx: mpsc::Receiver<Pending<Op, Out>>,
    max_batch: usize,
    slots: Arc<Semaphore>,
    write: Arc<W>,
) where
    Op: Send + 'static,
    Out: Send + 'static,
    W: Fn(Vec<Op>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = BatchResult<Out>> + Send + 'static,
{
    loop {
        // Wait for a free slot first: while all are busy, operations pile up in the queue and
        // go out together.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = Vec::with_capacity(max_batch.min(64));
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        // Callers that gave up (their deadline passed) are not written for; the others' operations
        // are taken, so their callers know a deadline now leaves the outcome unknown.
        batch.retain(|pending| {
            !pending.reply.is_closed()
                && pending
                    .state
                    .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
        });
        if batch.is_empty() {
            continue;
        }
        metrics::histogram!("shoal_storage_batch_size", "operation" => name)
            .record(batch.len() as f64);
        let write = write.clone();
        tokio::spawn(async move {
            let (ops, replies): (Vec<Op>, Vec<_>) =
                batch.into_iter().map(|p| (p.op, p.reply)).unzip();
            let count = ops.len();
            let results = match write(ops).await {
                Ok(results) if results.len() == count => results,
                Ok(results) => share(
                    StorageError::backend(
                        name,
                        format!(
                            "internal error: a batch of {count} gave {} results",
                            results.len()
                        ),
                    ),
                    count,
                ),
                Err(error) => share(error, count),
            };
            for (reply, result) in replies.into_iter().zip(results) {
                // A caller that stopped waiting is not an error.
                let _ = reply.send(result);
            }
            drop(permit);
        });
    }
}

/// One error for each of `count` callers.
pub(crate) fn share<Out>(error: StorageError, count: usize) -> Vec<Result<Out, StorageError>> {
    let error = SharedError::from(error);
    (0..count).map(|_| Err(error.to_storage_error())).collect()
}

/// A [`StorageError`] handed to several callers.
#[derive(Debug, Clone)]
enum SharedError {
    Timeout {
        operation: &'static str,
        timeout: std::time::Duration,
    },
    Backend {
        operation: &'static str,
        source: Arc<dyn Error + Send + Sync>,
    },
    Malformed {
        what: String,
        detail: String,
    },
    InvalidArgument {
        operation: &'static str,
        detail: String,
    },
    Fenced {
        shard: shoal_protocol::ShardId,
        epoch: u64,
        current: u64,
    },
    Conflict {
        operation: &'static str,
        detail: String,
    },
    Refused {
        operation: &'static str,
        reason: String,
    },
    AddressInUse {
        address: shoal_protocol::RunnerAddress,
        holder: shoal_protocol::Incarnation,
        expires_in: std::time::Duration,
    },
    NoMachineId,
    NotStarted {
        operation: &'static str,
        timeout: std::time::Duration,
    },
    Migration(Arc<dyn Error + Send + Sync>),
}

impl From<StorageError> for SharedError {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::Timeout { operation, timeout } => Self::Timeout { operation, timeout },
            StorageError::Backend { operation, source } => Self::Backend {
                operation,
                source: Arc::from(source),
            },
            StorageError::Malformed { what, detail } => Self::Malformed { what, detail },
            StorageError::InvalidArgument { operation, detail } => {
                Self::InvalidArgument { operation, detail }
            }
            StorageError::Fenced {
                shard,
                epoch,
                current,
            } => Self::Fenced {
                shard,
                epoch,
                current,
            },
            StorageError::Conflict { operation, detail } => Self::Conflict { operation, detail },
            StorageError::Refused { operation, reason } => Self::Refused { operation, reason },
            StorageError::AddressInUse {
                address,
                holder,
                expires_in,
            } => Self::AddressInUse {
                address,
                holder,
                expires_in,
            },
            StorageError::NoMachineId => Self::NoMachineId,
            StorageError::NotStarted { operation, timeout } => {
                Self::NotStarted { operation, timeout }
            }
            StorageError::Migration(source) => Self::Migration(Arc::from(source)),
        }
    }
}

impl SharedError {
    fn to_storage_error(&self) -> StorageError {
        match self.clone() {
            Self::Timeout { operation, timeout } => StorageError::Timeout { operation, timeout },
            Self::Backend { operation, source } => StorageError::Backend {
                operation,
                source: Box::new(Shared(source)),
            },
            Self::Malformed { what, detail } => StorageError::Malformed { what, detail },
            Self::InvalidArgument { operation, detail } => {
                StorageError::InvalidArgument { operation, detail }
            }
            Self::Fenced {
                shard,
                epoch,
                current,
            } => StorageError::Fenced {
                shard,
                epoch,
                current,
            },
            Self::Conflict { operation, detail } => StorageError::Conflict { operation, detail },
            Self::Refused { operation, reason } => StorageError::Refused { operation, reason },
            Self::AddressInUse {
                address,
                holder,
                expires_in,
            } => StorageError::AddressInUse {
                address,
                holder,
                expires_in,
            },
            Self::NoMachineId => StorageError::NoMachineId,
            Self::NotStarted { operation, timeout } => {
                StorageError::NotStarted { operation, timeout }
            }
            Self::Migration(source) => StorageError::Migration(Box::new(Shared(source))),
        }
    }
}

/// An error shared by the callers of one batch.
#[derive(Debug)]
struct Shared(Arc<dyn Error + Send + Sync>);

impl fmt::Display for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Error for Shared {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;

    use super::*;

    #[tokio::test]
    async fn batches_what_accumulates_and_answers_each_caller() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let seen = batches.clone();
        let writer = GroupCommit::spawn(
            &tokio::runtime::Handle::current(),
            "test",
            4,
            1,
            move |ops: Vec<u32>| {
                seen.lock().unwrap().push(ops.len());
                async move {
                    tokio::task::yield_now().await;
                    Ok(ops
                        .into_iter()
                        .map(|op| {
                            if op == 7 {
                                Err(StorageError::InvalidArgument {
                                    operation: "test",
                                    detail: "seven".to_owned(),
                                })
                            } else {
                                Ok(op * 10)
                            }
                        })
                        .collect())
                }
            },
        );
        let calls: Vec<_> = (0..10u32)
            .map(|op| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    (op, writer.submit("test", op, Duration::from_secs(10)).await)
                })
            })
            .collect();
        for call in calls {
            let (op, result) = call.await.unwrap();
            match result {
                Ok(out) => assert_eq!(out, op * 10),
                Err(StorageError::InvalidArgument { .. }) => assert_eq!(op, 7),
                Err(other) => panic!("{other}"),
            }
        }
        let batches = batches.lock().unwrap();
        assert_eq!(batches.iter().sum::<usize>(), 10);
        assert!(batches.iter().all(|n| *n <= 4), "{batches:?}");
    }

    #[tokio::test]
    async fn a_deadline_while_queued_withdraws_the_operation() {
        let started = Arc::new(tokio::sync::Notify::new());
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let written = Arc::new(Mutex::new(Vec::new()));
        let writer = GroupCommit::spawn(&tokio::runtime::Handle::current(), "test", 1, 1, {
            let (started, gate, written) = (started.clone(), gate.clone(), written.clone());
            move |ops: Vec<u32>| {
                let (started, gate, written) = (started.clone(), gate.clone(), written.clone());
                async move {
                    // Every batch holds the only slot until the test lets it go.
                    started.notify_one();
                    let _permit = gate.acquire().await;
                    written.lock().unwrap().extend(ops.iter().copied());
                    Ok(ops.into_iter().map(Ok).collect())
                }
            }
        });
        let first = tokio::spawn({
            let writer = writer.clone();
            async move { writer.submit("test", 1, Duration::from_secs(10)).await }
        });
        started.notified().await;
        // The second operation queues behind the busy slot and times out there: withdrawn.
        match writer.submit("test", 2, Duration::from_millis(50)).await {
            Err(StorageError::NotStarted { .. }) => {}
            other => panic!("expected NotStarted, got {other:?}"),
        }
        gate.add_permits(10);
        assert_eq!(first.await.unwrap().unwrap(), 1);
        // The withdrawn operation is never written; a taken one times out as unknown.
        writer
            .submit("test", 3, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(*written.lock().unwrap(), vec![1, 3]);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_caller() {
        let writer = GroupCommit::spawn(
            &tokio::runtime::Handle::current(),
            "test",
            8,
            1,
            |_ops: Vec<u32>| async {
                Err::<Vec<Result<u32, StorageError>>, _>(StorageError::backend(
                    "test",
                    "connection refused",
                ))
            },
        );
        for op in 0..3 {
            match writer.submit("test", op, Duration::from_secs(10)).await {
                Err(StorageError::Backend { source, .. }) => {
                    assert_eq!(source.to_string(), "connection refused");
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
