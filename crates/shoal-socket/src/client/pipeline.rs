//! One batch stream to a peer runner: requests from any number of callers are queued, written in
//! batches (whatever accumulated while the previous batch was being written, up to `max_batch`),
//! and matched with their replies by request id. A window of in-flight requests applies
//! back-pressure to callers.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use parking_lot::Mutex;
use shoal_protocol::proto::runner::v1 as pb;
use shoal_protocol::{Failure, Reply, ReplyFrame, RunnerAddress};
use shoal_sharding::{ReplyFrames, TransportError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::connect::Client;
use super::{lost, status_error, unreachable};
use crate::config::SocketConfig;

type Delivery = Result<ReplyFrame, TransportError>;

/// Someone waiting for replies; the permit (released on drop) holds a place in the window.
enum Waiter {
    Single {
        tx: oneshot::Sender<Delivery>,
        _permit: OwnedSemaphorePermit,
    },
    Stream {
        tx: mpsc::UnboundedSender<Delivery>,
        _permit: OwnedSemaphorePermit,
    },
}

#[derive(Default)]
struct Pending {
    closed: bool,
    waiters: HashMap<u64, Waiter>,
}

/// An open batch stream.
pub(crate) struct Pipeline {
    runner: RunnerAddress,
    /// Frames with their encoded size, for the writer to respect the message size limit.
    tx: mpsc::Sender<(pb::ClientFrame, usize)>,
    pending: Mutex<Pending>,
    window: Arc<Semaphore>,
    closed: CancellationToken,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("runner", &self.runner)
            .field("closed", &self.closed.is_cancelled())
            .finish()
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

impl Pipeline {
    /// Opens the batch stream on `client`.
    pub(crate) async fn open(
        mut client: Client,
        runner: &RunnerAddress,
        config: &SocketConfig,
    ) -> Result<Arc<Self>, TransportError> {
        let (tx, rx) = mpsc::channel::<(pb::ClientFrame, usize)>(config.window.max(1));
        let writer = BatchWriter {
            rx,
            queued: std::collections::VecDeque::new(),
            max_batch: config.max_batch.max(1),
            max_bytes: config.max_message_size,
        };
        let outbound = futures::stream::unfold(writer, |mut writer| async move {
            let batch = writer.next_batch().await?;
            Some((batch, writer))
        });
        let response = tokio::time::timeout(config.connect_timeout, client.batch(outbound))
            .await
            .map_err(|_| unreachable(runner, "opening the batch stream timed out"))?
            .map_err(|status| match status.code() {
                tonic::Code::Unauthenticated => status_error(runner, status),
                _ => unreachable(runner, format!("opening the batch stream failed: {status}")),
            })?;
        let pipeline = Arc::new(Self {
            runner: runner.clone(),
            tx,
            pending: Mutex::new(Pending::default()),
            window: Arc::new(Semaphore::new(config.window.max(1))),
            closed: CancellationToken::new(),
        });
        let reader = Arc::downgrade(&pipeline);
        let closed = pipeline.closed.clone();
        let mut inbound = response.into_inner();
        let runner = runner.clone();
        tokio::spawn(async move {
            let reason = loop {
                let next = tokio::select! {
                    _ = closed.cancelled() => break "the connection was closed".to_owned(),
                    next = inbound.message() => next,
                };
                match next {
                    Ok(Some(batch)) => {
                        let Some(pipeline) = reader.upgrade() else {
                            break "the connection was closed".to_owned();
                        };
                        for reply in batch.replies {
                            pipeline.dispatch(reply);
                        }
                    }
                    Ok(None) => break "the runner closed the stream".to_owned(),
                    Err(status) => break format!("the stream failed: {status}"),
                }
            };
            tracing::debug!(%runner, %reason, "batch stream ended");
            if let Some(pipeline) = reader.upgrade() {
                pipeline.fail_all(&reason);
            }
        });
        Ok(pipeline)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    fn dispatch(&self, reply: pb::Reply) {
        let id = reply.request_id;
        let frame = match Reply::try_from(reply) {
            Ok(reply) => Ok(reply.frame),
            Err(e) => Err(lost(&self.runner, format!("malformed reply: {e}"))),
        };
        let mut pending = self.pending.lock();
        let last = frame.as_ref().map(ReplyFrame::is_final).unwrap_or(true);
        match pending.waiters.get(&id) {
            Some(Waiter::Stream { tx, .. }) => {
                let _ = tx.send(frame);
                if last {
                    pending.waiters.remove(&id);
                }
            }
            Some(Waiter::Single { .. }) => {
                if let Some(Waiter::Single { tx, .. }) = pending.waiters.remove(&id) {
                    let _ = tx.send(frame);
                }
            }
            // A reply nobody waits for (the caller gave up).
            None => {}
        }
    }

    fn fail_all(&self, reason: &str) {
        self.closed.cancel();
        let waiters = {
            let mut pending = self.pending.lock();
            pending.closed = true;
            std::mem::take(&mut pending.waiters)
        };
        for (_, waiter) in waiters {
            let error = lost(&self.runner, reason);
            match waiter {
                Waiter::Single { tx, .. } => {
                    let _ = tx.send(Err(error));
                }
                Waiter::Stream { tx, .. } => {
                    let _ = tx.send(Err(error));
                }
            }
        }
    }

    async fn enqueue(
        &self,
        id: u64,
        frame: (pb::ClientFrame, usize),
        waiter: Waiter,
    ) -> Result<(), TransportError> {
        {
            let mut pending = self.pending.lock();
            if pending.closed {
                return Err(unreachable(&self.runner, "the connection was closed"));
            }
            pending.waiters.insert(id, waiter);
        }
        if self.tx.send(frame).await.is_err() {
            self.pending.lock().waiters.remove(&id);
            return Err(unreachable(&self.runner, "the connection was closed"));
        }
        Ok(())
    }

    async fn permit(&self) -> Result<OwnedSemaphorePermit, TransportError> {
        self.window
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| unreachable(&self.runner, "the connection was closed"))
    }

    /// Sends a request and waits for its final reply.
    pub(crate) async fn request(
        &self,
        request: pb::Request,
        size: usize,
    ) -> Result<ReplyFrame, TransportError> {
        let permit = self.permit().await?;
        let id = request.request_id;
        let (tx, rx) = oneshot::channel();
        let frame = (
            pb::ClientFrame {
                kind: Some(pb::client_frame::Kind::Request(request)),
            },
            size,
        );
        self.enqueue(
            id,
            frame,
            Waiter::Single {
                tx,
                _permit: permit,
            },
        )
        .await?;
        let mut guard = CancelOnDrop {
            pipeline: self,
            id,
            armed: true,
        };
        let result = rx
            .await
            .unwrap_or_else(|_| Err(lost(&self.runner, "the connection was closed")));
        guard.armed = false;
        result
    }

    /// Sends a streaming request.
    pub(crate) async fn stream(
        self: &Arc<Self>,
        mut request: pb::Request,
        size: usize,
    ) -> Result<ReplyFrames, TransportError> {
        let permit = self.permit().await?;
        request.streaming = true;
        let id = request.request_id;
        let (tx, rx) = mpsc::unbounded_channel();
        let frame = (
            pb::ClientFrame {
                kind: Some(pb::client_frame::Kind::Request(request)),
            },
            size,
        );
        self.enqueue(
            id,
            frame,
            Waiter::Stream {
                tx,
                _permit: permit,
            },
        )
        .await?;
        let guard = StreamGuard {
            pipeline: self.clone(),
            id,
            finished: false,
        };
        Ok(
            futures::stream::unfold((rx, guard), |(mut rx, mut guard)| async move {
                let item = rx.recv().await?;
                if item.as_ref().map(ReplyFrame::is_final).unwrap_or(true) {
                    guard.finished = true;
                }
                Some((item, (rx, guard)))
            })
            .boxed(),
        )
    }

    /// Sends a notification; a notified request is answered with an acceptance or a failure.
    pub(crate) async fn notify(
        &self,
        notification: pb::Notification,
        size: usize,
    ) -> Result<Option<Failure>, TransportError> {
        let request_id = match &notification.kind {
            Some(pb::notification::Kind::Request(r)) => Some(r.request_id),
            _ => None,
        };
        let frame = (
            pb::ClientFrame {
                kind: Some(pb::client_frame::Kind::Notify(notification)),
            },
            size,
        );
        let Some(id) = request_id else {
            // Interrupts and acknowledgements are not answered.
            return self
                .tx
                .send(frame)
                .await
                .map(|()| None)
                .map_err(|_| unreachable(&self.runner, "the connection was closed"));
        };
        let permit = self.permit().await?;
        let (tx, rx) = oneshot::channel();
        self.enqueue(
            id,
            frame,
            Waiter::Single {
                tx,
                _permit: permit,
            },
        )
        .await?;
        match rx.await {
            Ok(Ok(ReplyFrame::Value(_))) => Ok(None),
            Ok(Ok(ReplyFrame::Failure(failure))) => Ok(Some(failure)),
            Ok(Ok(other)) => Err(lost(
                &self.runner,
                format!("unexpected reply to a notification: {other:?}"),
            )),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(lost(&self.runner, "the connection was closed")),
        }
    }
}

/// Encoded size of a cancel frame (tag + varint id), rounded up.
const CANCEL_SIZE: usize = 16;

/// Bytes a frame adds to a batch beyond its own encoding (field tag and length prefix).
const FRAME_OVERHEAD: usize = 8;

/// Turns queued frames into batches: whatever is queued, up to `max_batch` frames and
/// `max_bytes` encoded, so that no batch exceeds the receiver's message size limit.
struct BatchWriter {
    rx: mpsc::Receiver<(pb::ClientFrame, usize)>,
    queued: std::collections::VecDeque<(pb::ClientFrame, usize)>,
    max_batch: usize,
    max_bytes: usize,
}

impl BatchWriter {
    async fn next_batch(&mut self) -> Option<pb::ClientBatch> {
        if self.queued.is_empty() {
            let mut received = Vec::with_capacity(self.max_batch);
            if self.rx.recv_many(&mut received, self.max_batch).await == 0 {
                return None;
            }
            self.queued.extend(received);
        }
        let mut frames = Vec::with_capacity(self.queued.len().min(self.max_batch));
        let mut bytes = 0usize;
        while let Some((_, size)) = self.queued.front() {
            let size = size + FRAME_OVERHEAD;
            // Always send at least one frame (each was checked against the limit on its own).
            if !frames.is_empty()
                && (bytes + size > self.max_bytes || frames.len() >= self.max_batch)
            {
                break;
            }
            bytes += size;
            if let Some((frame, _)) = self.queued.pop_front() {
                frames.push(frame);
            }
        }
        Some(pb::ClientBatch { frames })
    }
}

/// Forgets a stream's waiter when the caller drops the stream early, and tells the peer.
struct StreamGuard {
    pipeline: Arc<Pipeline>,
    id: u64,
    finished: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.pipeline.pending.lock().waiters.remove(&self.id);
            let _ = self.pipeline.tx.try_send((
                pb::ClientFrame {
                    kind: Some(pb::client_frame::Kind::Cancel(self.id)),
                },
                CANCEL_SIZE,
            ));
        }
    }
}

/// Forgets a request's waiter when its caller stops waiting (deadline, dropped future), and tells
/// the peer.
struct CancelOnDrop<'a> {
    pipeline: &'a Pipeline,
    id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.pipeline.pending.lock().waiters.remove(&self.id);
            let _ = self.pipeline.tx.try_send((
                pb::ClientFrame {
                    kind: Some(pb::client_frame::Kind::Cancel(self.id)),
                },
                CANCEL_SIZE,
            ));
        }
    }
}
