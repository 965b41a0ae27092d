//! One batch stream from another runner: many requests in, replies out in completion order.
//!
//! The session is the response stream itself: each time the HTTP/2 layer asks for more to send
//! it reads whatever requests arrived, hands them to the sharding runtime, and returns every reply
//! that is ready as one encoded `ServerBatch`. It does no work while the caller is not reading
//! replies (HTTP/2 flow control then stops the caller's requests too).
//!
//! The session enforces the caller's window itself: at most `window` requests (single,
//! streaming, or notifications awaiting an answer) run at a time for one stream. A request beyond
//! it is answered at once with a `mailbox_full` failure and not queued, whatever the caller
//! does. Notifications nobody awaits (interrupts, acknowledgements) have a budget of `window` of
//! their own; beyond it they are dropped.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::Stream;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, FuturesUnordered};
use shoal_protocol::{ErrorCode, Failure, ReplyFrame};
use shoal_sharding::InboundHandler;
use tokio_stream::StreamMap;
use tonic::{Status, Streaming};

use super::malformed;
use crate::codec::decode::Inbound;
use crate::codec::encode::put_reply;

/// A request being served: its id and final reply (`None`: nothing to answer).
type Pending = BoxFuture<'static, Option<(u64, ReplyFrame)>>;

/// The replies of one batch stream.
pub(crate) struct Session<H> {
    handler: H,
    inbound: Streaming<Vec<Inbound>>,
    inbound_open: bool,
    pending: FuturesUnordered<Pending>,
    /// How many of `pending` will answer (the rest are unanswered notifications).
    pending_answered: usize,
    streams: StreamMap<u64, BoxStream<'static, ReplyFrame>>,
    out: BytesMut,
    out_count: usize,
    max_batch: usize,
    max_message_size: usize,
    /// Requests that may run at once; more are refused.
    window: usize,
    /// Unanswered notifications dropped over their budget (logged once per session).
    dropped_notifications: u64,
}

impl<H> std::fmt::Debug for Session<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("pending", &self.pending.len())
            .field("pending_answered", &self.pending_answered)
            .field("streams", &self.streams.len())
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

/// The limits of one session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Most replies in one outgoing batch.
    pub(crate) max_batch: usize,
    /// Largest request payload or reply value.
    pub(crate) max_message_size: usize,
    /// Most requests in flight.
    pub(crate) window: usize,
}

impl<H: InboundHandler> Session<H> {
    pub(crate) fn new(handler: H, inbound: Streaming<Vec<Inbound>>, limits: Limits) -> Self {
        Self {
            handler,
            inbound,
            inbound_open: true,
            pending: FuturesUnordered::new(),
            pending_answered: 0,
            streams: StreamMap::new(),
            out: BytesMut::new(),
            out_count: 0,
            max_batch: limits.max_batch.max(1),
            max_message_size: limits.max_message_size,
            window: limits.window.max(1),
            dropped_notifications: 0,
        }
    }

    /// Requests running that will be answered.
    fn in_flight(&self) -> usize {
        self.pending_answered + self.streams.len()
    }

    /// The failure for a request over the window, or `None` when it may run.
    fn over_window(&self) -> Option<Failure> {
        (self.in_flight() >= self.window).then(|| {
            Failure::new(
                ErrorCode::MailboxFull,
                format!(
                    "more than {} requests in flight on this connection (the runner's window); \
                     this request was refused, not queued",
                    self.window
                ),
            )
        })
    }

    /// Adds a reply to the outgoing batch. A value larger than the limit is replaced by a
    /// failure for its caller (sending it would break the whole stream).
    fn reply(&mut self, id: u64, frame: ReplyFrame) {
        let frame = match frame {
            ReplyFrame::Value(value) if value.len() > self.max_message_size => {
                ReplyFrame::Failure(Failure::new(
                    ErrorCode::MessageTooLarge,
                    format!(
                        "the reply is {} bytes; the limit is {} bytes (max_message_size)",
                        value.len(),
                        self.max_message_size
                    ),
                ))
            }
            frame => frame,
        };
        put_reply(id, frame, &mut self.out);
        self.out_count += 1;
    }

    /// Whether the outgoing batch should be sent before collecting more.
    fn full(&self) -> bool {
        self.out_count >= self.max_batch || self.out.len() >= self.max_message_size
    }

    fn accept(&mut self, frame: Inbound) {
        match frame {
            Inbound::Request(Err(bad)) => {
                self.reply(bad.id, ReplyFrame::Failure(malformed(bad.error)));
            }
            Inbound::Request(Ok(request)) => {
                let id = request.id.raw();
                if let Some(failure) = super::too_large(&request, self.max_message_size) {
                    self.reply(id, ReplyFrame::Failure(failure));
                } else if let Some(failure) = self.over_window() {
                    let failure = failure.with_address(request.address);
                    self.reply(id, ReplyFrame::Failure(failure));
                } else if request.streaming {
                    self.streams.insert(id, self.handler.handle_stream(request));
                } else {
                    let handler = self.handler.clone();
                    self.pending_answered += 1;
                    self.pending.push(Box::pin(async move {
                        Some((id, handler.handle_request(request).await))
                    }));
                }
            }
            Inbound::Notify {
                request_id,
                notification,
            } => match notification {
                Err(e) => {
                    if let Some(id) = request_id {
                        self.reply(id, ReplyFrame::Failure(malformed(e)));
                    }
                }
                Ok(notification) => {
                    match request_id {
                        Some(id) => {
                            if let Some(failure) = self.over_window() {
                                let failure = failure.with_address(notification.address().clone());
                                self.reply(id, ReplyFrame::Failure(failure));
                                return;
                            }
                            self.pending_answered += 1;
                        }
                        None => {
                            if self.pending.len().saturating_sub(self.pending_answered)
                                >= self.window
                            {
                                self.drop_notification();
                                return;
                            }
                        }
                    }
                    let handler = self.handler.clone();
                    self.pending.push(Box::pin(async move {
                        let result = handler.handle_notification(notification).await;
                        request_id.map(|id| {
                            let frame = match result {
                                Ok(()) => ReplyFrame::Value(Bytes::new()),
                                Err(failure) => ReplyFrame::Failure(failure),
                            };
                            (id, frame)
                        })
                    }));
                }
            },
            // A cancelled stream stops. A cancelled single request still completes (its entity
            // may already be working on it); its reply is simply not awaited.
            Inbound::Cancel(id) => {
                self.streams.remove(&id);
            }
            Inbound::Empty => tracing::debug!("ignoring an empty batch frame"),
        }
    }

    /// Drops a notification nobody awaits: `window` of them are already running.
    fn drop_notification(&mut self) {
        if self.dropped_notifications == 0 {
            tracing::warn!(
                window = self.window,
                "more than window unanswered notifications (interrupts, acknowledgements) in \
                 flight on one connection; dropping the excess"
            );
        }
        self.dropped_notifications += 1;
    }

    fn take_batch(&mut self) -> Bytes {
        self.out_count = 0;
        self.out.split().freeze()
    }
}

/// Inbound messages read in one pass before replies are collected (then the session asks to be
/// polled again).
const INBOUND_PER_PASS: usize = 16;

impl<H: InboundHandler> Session<H> {
    /// One pass: read requests, collect ready replies.
    fn poll_pass(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Status>>> {
        // New requests first, so that their handling starts in this same pass.
        let mut read = 0;
        while self.inbound_open {
            if read == INBOUND_PER_PASS {
                cx.waker().wake_by_ref();
                break;
            }
            match Pin::new(&mut self.inbound).poll_next(cx) {
                Poll::Ready(Some(Ok(frames))) => {
                    read += 1;
                    for frame in frames {
                        self.accept(frame);
                    }
                }
                Poll::Ready(None) => self.inbound_open = false,
                Poll::Ready(Some(Err(status))) => {
                    // The caller went away (or sent garbage): stop, dropping what is pending.
                    tracing::debug!(%status, "batch stream from a runner ended with an error");
                    return Poll::Ready(None);
                }
                Poll::Pending => break,
            }
        }
        while !self.pending.is_empty() && !self.full() {
            match Pin::new(&mut self.pending).poll_next(cx) {
                Poll::Ready(Some(Some((id, frame)))) => {
                    self.pending_answered = self.pending_answered.saturating_sub(1);
                    self.reply(id, frame);
                }
                Poll::Ready(Some(None)) => {}
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        while !self.streams.is_empty() && !self.full() {
            match Pin::new(&mut self.streams).poll_next(cx) {
                Poll::Ready(Some((id, frame))) => {
                    let done = frame.is_final();
                    self.reply(id, frame);
                    if done {
                        self.streams.remove(&id);
                    }
                }
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        if self.out_count > 0 {
            return Poll::Ready(Some(Ok(self.take_batch())));
        }
        if !self.inbound_open && self.pending.is_empty() && self.streams.is_empty() {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

impl<H: InboundHandler> Stream for Session<H> {
    type Item = Result<Bytes, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // Tokio's cooperative budget would stop a pass after ~128 replies and send the session
        // to the back of the run queue, behind the entities it is waiting for; a pass is bounded
        // by `max_batch` and `INBOUND_PER_PASS` instead.
        let mut pass =
            tokio::task::coop::unconstrained(std::future::poll_fn(|cx| this.poll_pass(cx)));
        Pin::new(&mut pass).poll(cx)
    }
}
