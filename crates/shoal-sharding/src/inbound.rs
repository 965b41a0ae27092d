//! Inbound: requests arriving from other runners. A transport's server hands them to an
//! [`InboundHandler`]; [`Inbound`] serves them here (outbound calls go through the router).

use std::future::Future;

use futures::StreamExt;
use futures::stream::BoxStream;
use shoal_protocol::{Chunk, ErrorCode, Failure, Notification, ReplyFrame, Request, RunnerAddress};
use tokio::sync::oneshot;

use crate::entity::{ReplyValue, chunk_channel};
use crate::persist::StreamRun;
use crate::reply::{ReplyTo, not_assigned};
use crate::router::Router;
use crate::router::outgoing::Outgoing;

/// The one entry point of requests from other runners: what a transport's server calls. The
/// runtime ([`crate::Sharding`]) implements it; a server is generic over it, so nothing is boxed per
/// request and a transport can be tested against a handler of its own.
pub trait InboundHandler: Clone + Send + Sync + Unpin + 'static {
    /// The address this runner serves at (`None` for a process that hosts no entities).
    fn address(&self) -> Option<&RunnerAddress>;

    /// Serves a request and returns its final reply (a value or a failure).
    fn handle_request(&self, request: Request) -> impl Future<Output = ReplyFrame> + Send;

    /// Serves a streaming request: chunks, then `End` or a failure.
    fn handle_stream(&self, request: Request) -> BoxStream<'static, ReplyFrame>;

    /// Serves a notification; `Err` when it was refused.
    fn handle_notification(
        &self,
        notification: Notification,
    ) -> impl Future<Output = Result<(), Failure>> + Send;
}

/// Serves requests from other runners on this one: admits them (this runner serves the shard and
/// is not stopping), then delivers them to the local entity, or runs a pushed persisted request
/// from what storage holds for it.
#[derive(Clone, Debug)]
pub(crate) struct Inbound {
    router: Router,
}

impl Inbound {
    pub(crate) fn new(router: Router) -> Self {
        Self { router }
    }
}

impl InboundHandler for Inbound {
    fn address(&self) -> Option<&RunnerAddress> {
        self.router.me()
    }

    fn handle_request(&self, request: Request) -> impl Future<Output = ReplyFrame> + Send {
        self.request(request)
    }

    fn handle_stream(&self, request: Request) -> BoxStream<'static, ReplyFrame> {
        self.stream(request)
    }

    fn handle_notification(
        &self,
        notification: Notification,
    ) -> impl Future<Output = Result<(), Failure>> + Send {
        self.notification(notification)
    }
}

fn refused(request: &Request, code: ErrorCode, message: impl Into<String>) -> Failure {
    Failure::new(code, message).with_address(request.address.clone())
}

impl Inbound {
    /// Checks that a remote request can be served here; on refusal, the failure to answer with.
    #[expect(
        clippy::result_large_err,
        reason = "a refusal is the wire `Failure` answered to the caller"
    )]
    fn admit(&self, request: &Request) -> Result<(), Failure> {
        if self.router.is_closing() {
            return Err(refused(
                request,
                ErrorCode::ShuttingDown,
                "the runner is shutting down",
            ));
        }
        if !self.router.shards().is_serving(&request.address.shard) {
            return Err(not_assigned(&request.address));
        }
        Ok(())
    }

    /// The stored request a pushed persisted `request` names: the owner runs what storage holds
    /// for that id, never what the pusher sent (anything that reaches the port could push a
    /// victim's id with its own payload). `Err` with the failure to answer when there is nothing
    /// to run: no pending request under that id, or one for another entity or message.
    async fn stored_push(&self, request: &Request) -> Result<Outgoing, Failure> {
        let persistence = self
            .router
            .persistence()
            .ok_or_else(|| no_message_storage(request))?;
        let timeout = persistence.storage_timeout();
        let stored = match tokio::time::timeout(
            timeout,
            persistence.storage.pending_request(request.id),
        )
        .await
        {
            Ok(Ok(stored)) => stored,
            Ok(Err(error)) => {
                tracing::debug!(request = %request.id, %error, "reading a pushed request failed");
                None
            }
            Err(_) => None,
        };
        let Some(stored) = stored else {
            // Settled already, or storage could not tell: the request (if stored) is delivered
            // by polling, and its caller reads the stored reply.
            if let Some(frame) = persistence.settled_reply(request.id) {
                return Err(match frame {
                    ReplyFrame::Failure(failure) => failure,
                    _ => refused(
                        request,
                        ErrorCode::EntityNotAssigned,
                        "the request is settled; its reply is stored",
                    ),
                });
            }
            return Err(refused(
                request,
                ErrorCode::EntityNotAssigned,
                "no pending request with this id is stored here; a stored request is delivered \
                 by polling",
            ));
        };
        if stored.address != request.address
            || stored.tag != request.tag
            || stored.streaming != request.streaming
        {
            tracing::warn!(
                request = %request.id,
                pushed = %request.address,
                stored = %stored.address,
                "refused a pushed persisted request that does not match the stored one"
            );
            metrics::counter!("shoal_persisted_forged_pushes_total").increment(1);
            return Err(refused(
                request,
                ErrorCode::MalformedMessage,
                "the pushed request does not match the stored request with this id; refused",
            ));
        }
        if stored
            .deliver_at
            .is_some_and(|at| at > std::time::SystemTime::now())
        {
            // Pushed to tell this runner it exists (storage events do not reach this process):
            // the poller's next due time may be sooner now.
            persistence.wake.notify_one();
            return Err(refused(
                request,
                ErrorCode::EntityNotAssigned,
                "the request is scheduled for later; it is delivered then",
            ));
        }
        Ok(crate::persist::incoming(stored))
    }

    fn incoming(request: &Request) -> Outgoing {
        Outgoing {
            address: request.address.clone(),
            tag: request.tag.clone(),
            headers: request.headers.clone(),
            timeout: request.timeout.unwrap_or(std::time::Duration::MAX),
            typed: None,
            encoded: Some(request.payload.clone()),
            persist: None,
        }
    }

    /// Serves a request from another runner and returns its final reply (a value or a
    /// failure).
    async fn request(&self, request: Request) -> ReplyFrame {
        if let Err(failure) = self.admit(&request) {
            return ReplyFrame::Failure(failure);
        }
        if request.persisted {
            return self.handle_persisted(request).await;
        }
        let mut out = Self::incoming(&request);
        let (tx, rx) = oneshot::channel();
        if let Err(failure) =
            self.router
                .local()
                .deliver(&mut out, request.id, None, ReplyTo::Caller(tx))
        {
            return ReplyFrame::Failure(failure);
        }
        let outcome = match request.timeout {
            Some(timeout) => match tokio::time::timeout(timeout, rx).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    return ReplyFrame::Failure(refused(
                        &request,
                        ErrorCode::DeadlineExceeded,
                        "the caller's deadline passed",
                    ));
                }
            },
            None => rx.await,
        };
        match outcome {
            Ok(Ok(ReplyValue::Encoded(bytes))) => ReplyFrame::Value(bytes),
            Ok(Ok(ReplyValue::Local(_))) => ReplyFrame::Failure(refused(
                &request,
                ErrorCode::Defect,
                "the entity answered with an unencoded value",
            )),
            Ok(Err(unanswered)) => ReplyFrame::Failure(unanswered.failure),
            Err(_) => ReplyFrame::Failure(refused(
                &request,
                ErrorCode::Interrupted,
                "the entity was stopped while processing the request; its outcome is unknown",
            )),
        }
    }

    /// Serves a persisted request pushed by its sender (already stored): runs it here and answers
    /// its saved final reply, or a routing failure when it was not settled here (the sender then
    /// waits for the reply in storage).
    async fn handle_persisted(&self, request: Request) -> ReplyFrame {
        let stored = match self.stored_push(&request).await {
            Ok(stored) => stored,
            Err(failure) => return ReplyFrame::Failure(failure),
        };
        let Some(persistence) = self.router.persistence() else {
            return ReplyFrame::Failure(no_message_storage(&request));
        };
        let settled = persistence.spawn_persisted(request.id, stored, None);
        let settled = match request.timeout {
            Some(timeout) => match tokio::time::timeout(timeout, settled).await {
                Ok(settled) => settled,
                Err(_) => {
                    return ReplyFrame::Failure(refused(
                        &request,
                        ErrorCode::DeadlineExceeded,
                        "the caller's deadline passed; the request is stored and still runs",
                    ));
                }
            },
            None => settled.await,
        };
        match settled {
            Ok(Some(frame)) => frame,
            _ => ReplyFrame::Failure(refused(
                &request,
                ErrorCode::EntityNotAssigned,
                "the request was not settled on this runner; it is stored and will run again",
            )),
        }
    }

    /// Serves a persisted streaming request pushed by its sender (already stored): runs it here
    /// and forwards each chunk once stored, then the stored final frame. The stream ends without
    /// a final frame when the run does not settle here; the sender then reads storage.
    fn handle_persisted_stream(&self, request: Request) -> BoxStream<'static, ReplyFrame> {
        let (tx, rx) = tokio::sync::mpsc::channel(32);
        let inbound = self.clone();
        tokio::spawn(async move {
            match inbound.stored_push(&request).await {
                Ok(stored) => {
                    let run = StreamRun {
                        resume: 0,
                        live: Some(tx),
                    };
                    if let Some(persistence) = inbound.router.persistence() {
                        drop(persistence.spawn_persisted(request.id, stored, Some(run)));
                    }
                }
                Err(failure) => {
                    let _ = tx.send(ReplyFrame::Failure(failure)).await;
                }
            }
        });
        let mut rx = rx;
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    }

    /// Serves a streaming request from another runner: chunks, then `End` or a failure.
    fn stream(&self, request: Request) -> BoxStream<'static, ReplyFrame> {
        if let Err(failure) = self.admit(&request) {
            return futures::stream::once(async move { ReplyFrame::Failure(failure) }).boxed();
        }
        if request.persisted {
            return self.handle_persisted_stream(request);
        }
        let mut out = Self::incoming(&request);
        let (chunk_tx, mut chunk_rx) = chunk_channel();
        let (tx, rx) = oneshot::channel();
        if let Err(failure) =
            self.router
                .local()
                .deliver(&mut out, request.id, Some(chunk_tx), ReplyTo::Caller(tx))
        {
            return futures::stream::once(async move { ReplyFrame::Failure(failure) }).boxed();
        }
        let ids = self.router.identity().clone();
        let mut sequence = 0u32;
        let chunks = futures::stream::poll_fn(move |cx| chunk_rx.poll_recv(cx)).map(move |value| {
            let bytes = match value {
                ReplyValue::Encoded(bytes) => bytes,
                ReplyValue::Local(_) => bytes::Bytes::new(),
            };
            let chunk = Chunk {
                // A volatile stream's chunk ids only label chunks on the wire.
                reply_id: ids
                    .next_id()
                    .unwrap_or(shoal_protocol::Snowflake::from_raw(0)),
                sequence,
                values: vec![bytes],
            };
            sequence += 1;
            ReplyFrame::Chunk(chunk)
        });
        let address = request.address.clone();
        let end = futures::stream::once(async move {
            match rx.await {
                Ok(Ok(_)) => ReplyFrame::End,
                Ok(Err(unanswered)) => ReplyFrame::Failure(unanswered.failure),
                Err(_) => ReplyFrame::Failure(
                    Failure::new(
                        ErrorCode::Interrupted,
                        "the entity was stopped while streaming",
                    )
                    .with_address(address),
                ),
            }
        });
        chunks.chain(end).boxed()
    }

    /// Serves a notification from another runner. `Err` when it was refused.
    async fn notification(&self, notification: Notification) -> Result<(), Failure> {
        match notification {
            Notification::Request(request) if request.persisted => {
                self.admit(&request)?;
                let Some(persistence) = self.router.persistence().cloned() else {
                    return Err(no_message_storage(&request));
                };
                // Read from storage and run in the background: the sender only waits for the
                // hand-over (the request is stored; polling delivers it if this fails).
                let inbound = self.clone();
                tokio::spawn(async move {
                    if let Ok(stored) = inbound.stored_push(&request).await {
                        drop(persistence.spawn_persisted(request.id, stored, None));
                    }
                });
                Ok(())
            }
            Notification::Request(request) => {
                self.admit(&request)?;
                let mut out = Self::incoming(&request);
                self.router
                    .local()
                    .deliver(&mut out, request.id, None, ReplyTo::Discard)
                    .map(drop)
            }
            Notification::Interrupt(interrupt) => {
                // A persisted request is interrupted only through storage (which checks that it
                // may be); a wire interrupt stops volatile requests.
                let persisted = self
                    .router
                    .persistence()
                    .is_some_and(|p| p.is_in_flight(interrupt.request_id));
                if !persisted {
                    self.router
                        .local()
                        .interrupt(&interrupt.address, interrupt.request_id);
                }
                Ok(())
            }
            // Acknowledgements matter for persisted streams only; volatile streams are not
            // resumed.
            Notification::AckChunk(_) => Ok(()),
        }
    }
}

fn no_message_storage(request: &Request) -> Failure {
    refused(
        request,
        ErrorCode::Persistence,
        "this runner has no message storage for persisted requests",
    )
}
