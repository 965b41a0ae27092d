//! One batch stream to a peer runner. Callers encode their request straight into a shared
//! outbox; the stream's body takes whatever accumulated (up to `max_batch` frames and
//! `max_message_size` bytes) each time HTTP/2 can send, so batches grow with load and a lone
//! request leaves at once. Replies are matched to callers by request id. A window of in-flight
//! requests applies back-pressure to callers.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use shoal_protocol::proto::runner::v1 as pb;
use shoal_protocol::{Failure, Reply, ReplyFrame, Request, RunnerAddress};
use shoal_sharding::{ReplyFrames, TransportError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::connect::Connection;
use super::{lost, status_error, unreachable};
use crate::codec::encode::{RequestFrame, client_frame_element_len, put_client_frame};
use crate::codec::{BATCH_PATH, ClientCodec};
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

/// Request ids are unique snowflakes: their low bits spread well without SipHash.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // Fibonacci hashing mixes the sequence bits into the high bits hashbrown uses too.
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type IdMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<IdHasher>>;

/// Frames waiting to be sent, as consecutive `ClientBatch` elements.
#[derive(Default)]
struct Outbox {
    bytes: BytesMut,
    /// The length of each element in `bytes`, in order.
    lengths: VecDeque<usize>,
    /// The body, waiting for frames.
    writer: Option<Waker>,
}

/// What callers, the body and the reader share.
#[derive(Default)]
struct State {
    closed: bool,
    waiters: IdMap<Waiter>,
    outbox: Outbox,
}

impl State {
    /// Appends a frame and wakes the body when it was idle.
    fn push(&mut self, len: usize, write: impl FnOnce(&mut BytesMut)) -> Option<Waker> {
        let before = self.outbox.bytes.len();
        write(&mut self.outbox.bytes);
        debug_assert_eq!(self.outbox.bytes.len() - before, len);
        self.outbox
            .lengths
            .push_back(self.outbox.bytes.len() - before);
        self.outbox.writer.take()
    }
}

struct Shared {
    state: Mutex<State>,
    max_batch: usize,
    max_bytes: usize,
}

/// An open batch stream.
pub(crate) struct Pipeline {
    runner: RunnerAddress,
    shared: Arc<Shared>,
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
        // Ends the request body, so the runner finishes the stream.
        let writer = {
            let mut state = self.shared.state.lock();
            state.closed = true;
            state.outbox.writer.take()
        };
        if let Some(writer) = writer {
            writer.wake();
        }
    }
}

/// The request body: batches taken from the outbox.
struct Outbound {
    shared: Arc<Shared>,
}

impl Stream for Outbound {
    type Item = Bytes;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let shared = &self.shared;
        let mut state = shared.state.lock();
        let closed = state.closed;
        let outbox = &mut state.outbox;
        if outbox.lengths.is_empty() {
            if closed {
                return Poll::Ready(None);
            }
            outbox.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if outbox.lengths.len() <= shared.max_batch && outbox.bytes.len() <= shared.max_bytes {
            outbox.lengths.clear();
            return Poll::Ready(Some(outbox.bytes.split().freeze()));
        }
        // Always send at least one frame (each was checked against the limit on its own).
        let mut take = 0usize;
        let mut frames = 0usize;
        while let Some(&len) = outbox.lengths.front() {
            if frames > 0 && (take + len > shared.max_bytes || frames >= shared.max_batch) {
                break;
            }
            take += len;
            frames += 1;
            outbox.lengths.pop_front();
        }
        Poll::Ready(Some(outbox.bytes.split_to(take).freeze()))
    }
}

impl Pipeline {
    /// Opens the batch stream on `connection`.
    pub(crate) async fn open(
        connection: Connection,
        runner: &RunnerAddress,
        config: &SocketConfig,
    ) -> Result<Arc<Self>, TransportError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            max_batch: config.max_batch.max(1),
            max_bytes: config.max_message_size,
        });
        let outbound = Outbound {
            shared: shared.clone(),
        };
        let mut grpc = connection.grpc;
        let opened = async {
            grpc.ready()
                .await
                .map_err(|e| unreachable(runner, format!("the connection is not ready: {e}")))?;
            grpc.streaming(
                tonic::Request::new(outbound),
                http::uri::PathAndQuery::from_static(BATCH_PATH),
                ClientCodec,
            )
            .await
            .map_err(|status| match status.code() {
                tonic::Code::Unauthenticated => status_error(runner, status),
                _ => unreachable(runner, format!("opening the batch stream failed: {status}")),
            })
        };
        let response = tokio::time::timeout(config.connect_timeout, opened)
            .await
            .map_err(|_| unreachable(runner, "opening the batch stream timed out"))??;
        let pipeline = Arc::new(Self {
            runner: runner.clone(),
            shared,
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
                    biased;
                    next = inbound.message() => next,
                    _ = closed.cancelled() => break "the connection was closed".to_owned(),
                };
                match next {
                    Ok(Some(batch)) => {
                        let Some(pipeline) = reader.upgrade() else {
                            break "the connection was closed".to_owned();
                        };
                        pipeline.dispatch(batch.replies);
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

    /// Hands replies to their callers.
    fn dispatch(&self, replies: Vec<pb::Reply>) {
        let mut ready = Vec::with_capacity(replies.len());
        {
            let mut state = self.shared.state.lock();
            for reply in replies {
                let id = reply.request_id;
                let frame = match Reply::try_from(reply) {
                    Ok(reply) => Ok(reply.frame),
                    Err(e) => Err(lost(&self.runner, format!("malformed reply: {e}"))),
                };
                let last = frame.as_ref().map(ReplyFrame::is_final).unwrap_or(true);
                match state.waiters.get(&id) {
                    Some(Waiter::Stream { tx, .. }) => {
                        let _ = tx.send(frame);
                        if last {
                            state.waiters.remove(&id);
                        }
                    }
                    Some(Waiter::Single { .. }) => {
                        if let Some(Waiter::Single {
                            tx,
                            _permit: permit,
                        }) = state.waiters.remove(&id)
                        {
                            ready.push((tx, frame, permit));
                        }
                    }
                    // A reply nobody waits for (the caller gave up).
                    None => {}
                }
            }
        }
        // Wake callers outside the lock; a permit goes back to the window with its reply.
        for (tx, frame, permit) in ready {
            let _ = tx.send(frame);
            drop(permit);
        }
    }

    fn fail_all(&self, reason: &str) {
        self.closed.cancel();
        let (waiters, writer) = {
            let mut state = self.shared.state.lock();
            state.closed = true;
            (
                std::mem::take(&mut state.waiters),
                state.outbox.writer.take(),
            )
        };
        if let Some(writer) = writer {
            writer.wake();
        }
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

    fn closed_error(&self) -> TransportError {
        unreachable(&self.runner, "the connection was closed")
    }

    /// Registers `waiter` and queues the frame `write` appends (`len` bytes).
    fn enqueue(
        &self,
        id: u64,
        waiter: Option<Waiter>,
        len: usize,
        write: impl FnOnce(&mut BytesMut),
    ) -> Result<(), TransportError> {
        let writer = {
            let mut state = self.shared.state.lock();
            if state.closed {
                return Err(self.closed_error());
            }
            if let Some(waiter) = waiter {
                state.waiters.insert(id, waiter);
            }
            state.push(len, write)
        };
        if let Some(writer) = writer {
            writer.wake();
        }
        Ok(())
    }

    /// Queues a frame nobody waits a reply for (cancellations); ignored once closed.
    fn enqueue_frame(&self, frame: &pb::ClientFrame) {
        let len = client_frame_element_len(frame);
        let _ = self.enqueue(0, None, len, |buf| put_client_frame(frame, buf));
    }

    async fn permit(&self) -> Result<OwnedSemaphorePermit, TransportError> {
        if let Ok(permit) = self.window.clone().try_acquire_owned() {
            return Ok(permit);
        }
        self.window
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| self.closed_error())
    }

    /// Sends a request and waits for its final reply.
    pub(crate) async fn request(
        &self,
        request: &Request,
        frame: RequestFrame<'_>,
    ) -> Result<ReplyFrame, TransportError> {
        let permit = self.permit().await?;
        let id = request.id.raw();
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter::Single {
            tx,
            _permit: permit,
        };
        self.enqueue(id, Some(waiter), frame.element_len(), |buf| frame.put(buf))?;
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
        request: &Request,
    ) -> Result<ReplyFrames, TransportError> {
        let permit = self.permit().await?;
        let id = request.id.raw();
        let frame = RequestFrame::new(request, true);
        let (tx, rx) = mpsc::unbounded_channel();
        let waiter = Waiter::Stream {
            tx,
            _permit: permit,
        };
        self.enqueue(id, Some(waiter), frame.element_len(), |buf| frame.put(buf))?;
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
    ) -> Result<Option<Failure>, TransportError> {
        let request_id = match &notification.kind {
            Some(pb::notification::Kind::Request(r)) => Some(r.request_id),
            _ => None,
        };
        let frame = pb::ClientFrame {
            kind: Some(pb::client_frame::Kind::Notify(notification)),
        };
        let len = client_frame_element_len(&frame);
        let Some(id) = request_id else {
            // Interrupts and acknowledgements are not answered.
            return self
                .enqueue(0, None, len, |buf| put_client_frame(&frame, buf))
                .map(|()| None);
        };
        let permit = self.permit().await?;
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter::Single {
            tx,
            _permit: permit,
        };
        self.enqueue(id, Some(waiter), len, |buf| put_client_frame(&frame, buf))?;
        let mut guard = CancelOnDrop {
            pipeline: self,
            id,
            armed: true,
        };
        let result = rx.await;
        guard.armed = false;
        match result {
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

    /// Forgets a waiter whose caller stopped waiting, and tells the peer.
    fn cancel(&self, id: u64) {
        let removed = self.shared.state.lock().waiters.remove(&id);
        drop(removed);
        self.enqueue_frame(&pb::ClientFrame {
            kind: Some(pb::client_frame::Kind::Cancel(id)),
        });
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
            self.pipeline.cancel(self.id);
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
            self.pipeline.cancel(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use futures::task::noop_waker;

    use super::*;

    fn outbound(max_batch: usize, max_bytes: usize) -> Outbound {
        Outbound {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                max_batch,
                max_bytes,
            }),
        }
    }

    fn push(out: &Outbound, frames: &[&[u8]]) {
        let mut state = out.shared.state.lock();
        for frame in frames {
            state.push(frame.len(), |buf| buf.extend_from_slice(frame));
        }
    }

    fn next(out: &mut Outbound) -> Poll<Option<Bytes>> {
        let waker = noop_waker();
        Pin::new(out).poll_next(&mut Context::from_waker(&waker))
    }

    #[test]
    fn batches_respect_frame_and_byte_limits() {
        let mut out = outbound(2, 10);
        assert_eq!(next(&mut out), Poll::Pending);
        push(&out, &[b"aaaa", b"bbbb", b"cccc"]);
        assert_eq!(
            next(&mut out),
            Poll::Ready(Some(Bytes::from_static(b"aaaabbbb")))
        );
        assert_eq!(
            next(&mut out),
            Poll::Ready(Some(Bytes::from_static(b"cccc")))
        );
        // An element above the byte limit still goes, alone.
        push(&out, &[b"0123456789ABC", b"d"]);
        assert_eq!(
            next(&mut out),
            Poll::Ready(Some(Bytes::from_static(b"0123456789ABC")))
        );
        assert_eq!(next(&mut out), Poll::Ready(Some(Bytes::from_static(b"d"))));
        assert_eq!(next(&mut out), Poll::Pending);
        out.shared.state.lock().closed = true;
        assert_eq!(next(&mut out), Poll::Ready(None));
    }
}
