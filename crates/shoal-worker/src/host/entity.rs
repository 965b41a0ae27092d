//! [`WorkerEntity`]: an entity instance whose calls go to the worker over the session.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::future::BoxFuture;
use shoal_protocol::EntityAddress;
use shoal_protocol::proto::worker::v1 as pb;
use shoal_sharding::{DynamicEntity, DynamicRequest, EntityContext, HandlerError};
use tokio::time::{Instant, timeout_at};
use tracing::Instrument;

use super::session::{CallEvent, Session, entity_of};
use super::{Activation, HostInner, HostState};

/// Whether a call failed because the worker process was unavailable — it exited, broke the
/// session, hung, was restarting past the call's deadline, or answered `FAILURE_CODE_UNAVAILABLE`
/// — rather than because the handler refused the request.
///
/// These failures are [`HandlerError::unavailable`] (transient: the entity's state is not
/// suspect, the process hosting it is gone), with a message that starts with
/// `worker <name> exited: ` or `worker <name> unavailable: `. The runtime does not store them as
/// the final reply of a persisted request: the request stays unprocessed and is delivered again
/// (to the restarted worker). A volatile caller gets them as
/// [`CallErrorKind::Persistence`](shoal_sharding::CallErrorKind::Persistence) (HTTP 503 at the gateway).
///
/// ```
/// use shoal_sharding::HandlerError;
/// use shoal_worker::is_worker_unavailable;
///
/// assert!(is_worker_unavailable(&HandlerError::unavailable("worker python3 w.py exited: it closed the session")));
/// assert!(!is_worker_unavailable(&HandlerError::failed("insufficient funds")));
/// ```
pub fn is_worker_unavailable(error: &HandlerError) -> bool {
    error.kind() == shoal_sharding::HandlerErrorKind::Unavailable
        && error.message().starts_with("worker ")
        && (error.message().contains(" exited: ") || error.message().contains(" unavailable: "))
}

/// One active entity on the runner, served by the worker.
pub(crate) struct WorkerEntity {
    host: Arc<HostInner>,
    activation: u64,
    address: EntityAddress,
    retired: AtomicBool,
}

impl std::fmt::Debug for WorkerEntity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerEntity")
            .field("activation", &self.activation)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl WorkerEntity {
    /// A new activation of the entity at `ctx.address()`. The worker hears of it (`Activate`)
    /// right before its first call, in whichever session that call runs.
    pub(crate) fn activate(host: &Arc<HostInner>, ctx: EntityContext) -> Arc<Self> {
        let address = ctx.address().clone();
        let activation = host.shared.add_activation(Activation {
            address: address.clone(),
            ctx,
        });
        tracing::debug!(worker = %host.shared.name, %address, activation, "worker entity activated");
        Arc::new(Self {
            host: host.clone(),
            activation,
            address,
            retired: AtomicBool::new(false),
        })
    }

    /// The instance stopped (gracefully, or dropped after a defect): forget it and tell the
    /// worker. Idempotent.
    fn retire(&self) {
        if self.retired.swap(true, Ordering::AcqRel) {
            return;
        }
        self.host.shared.remove_activation(self.activation);
        if let HostState::Up(session) = &*self.host.state.borrow() {
            session.retire(self.activation, &self.address);
        }
    }
}

impl Drop for WorkerEntity {
    fn drop(&mut self) {
        self.retire();
    }
}

impl DynamicEntity for WorkerEntity {
    fn handle(
        self: Arc<Self>,
        request: DynamicRequest,
        _ctx: EntityContext,
    ) -> BoxFuture<'static, Result<Bytes, HandlerError>> {
        Box::pin(async move {
            let started = Instant::now();
            let span = tracing::debug_span!(
                "worker_call",
                worker = %self.host.shared.name,
                entity = %self.address,
                tag = %request.tag,
                request_id = %request.id,
                call_id = tracing::field::Empty,
            );
            let (result, outcome) = self.call(request).instrument(span).await;
            let entity_type = self.address.entity_type.to_string();
            metrics::counter!("shoal_worker_calls_total", "entity_type" => entity_type.clone(), "outcome" => outcome)
                .increment(1);
            metrics::histogram!("shoal_worker_call_seconds", "entity_type" => entity_type)
                .record(started.elapsed().as_secs_f64());
            if let Err(error) = &result {
                tracing::debug!(outcome, %error, "worker call failed");
            }
            result
        })
    }

    fn deactivate(self: Arc<Self>, _ctx: EntityContext) -> BoxFuture<'static, ()> {
        self.retire();
        Box::pin(async {})
    }
}

/// Cancels a call on the worker unless it finished (the caller gave up, timed out, or the
/// runtime dropped the handler future after an interrupt).
struct CancelGuard<'a> {
    session: &'a Session,
    call_id: u64,
    armed: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.session.cancel_call(self.call_id);
        }
    }
}

type Outcome = (Result<Bytes, HandlerError>, &'static str);

impl WorkerEntity {
    fn name(&self) -> &str {
        &self.host.shared.name
    }

    fn lost(&self, reason: &str) -> Outcome {
        (
            Err(HandlerError::unavailable(format!(
                "worker {} exited: {reason}",
                self.name()
            ))),
            "worker_lost",
        )
    }

    fn unavailable(&self, reason: impl std::fmt::Display, outcome: &'static str) -> Outcome {
        (
            Err(HandlerError::unavailable(format!(
                "worker {} unavailable: {reason}",
                self.name()
            ))),
            outcome,
        )
    }

    /// Waits (until `deadline`) for a live session.
    async fn session(&self, deadline: Instant) -> Result<Arc<Session>, Outcome> {
        let mut state = self.host.state.subscribe();
        loop {
            match &*state.borrow_and_update() {
                HostState::Up(session) if !session.is_closed() => return Ok(session.clone()),
                HostState::Stopped => {
                    return Err(self.unavailable("the runner stopped hosting it", "stopped"));
                }
                _ => {}
            }
            match timeout_at(deadline, state.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(self.unavailable("the runner stopped hosting it", "stopped"));
                }
                Err(_) => {
                    return Err(self.unavailable(
                        format!(
                            "it is restarting and did not come back within {:?}",
                            self.host.shared.options.request_timeout
                        ),
                        "timeout",
                    ));
                }
            }
        }
    }

    async fn call(&self, request: DynamicRequest) -> Outcome {
        let timeout = self.host.shared.options.request_timeout;
        let mut deadline = Instant::now() + timeout;
        let _permit = match &self.host.in_flight {
            Some(slots) => match timeout_at(deadline, slots.clone().acquire_owned()).await {
                Ok(Ok(permit)) => Some(permit),
                Ok(Err(_)) => return self.unavailable("the runner stopped hosting it", "stopped"),
                Err(_) => {
                    return self
                        .unavailable(format!("no free call slot within {timeout:?}"), "timeout");
                }
            },
            None => None,
        };
        let session = match self.session(deadline).await {
            Ok(session) => session,
            Err(outcome) => return outcome,
        };
        let (call_id, mut events) = match session.register_call() {
            Ok(call) => call,
            Err(reason) => return self.lost(&reason),
        };
        tracing::Span::current().record("call_id", call_id);
        let mut guard = CancelGuard {
            session: &session,
            call_id,
            armed: true,
        };
        let sink = request.chunks;
        session.announce(self.activation, &self.address);
        session.send(pb::runner_message::Kind::Call(pb::Call {
            call_id,
            activation_id: self.activation,
            entity: Some(entity_of(&self.address)),
            tag: request.tag.to_string(),
            payload: request.payload,
            headers: request
                .headers
                .iter()
                .map(|(name, value)| pb::Header {
                    name: name.to_owned(),
                    value: value.to_owned(),
                })
                .collect(),
            streaming: sink.is_some(),
            request_id: request.id.raw(),
            timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
        }));
        loop {
            let event = match timeout_at(deadline, events.recv()).await {
                Ok(Some(event)) => event,
                Ok(None) => {
                    guard.armed = false;
                    return self.lost("the session ended");
                }
                Err(_) => {
                    let what = if sink.is_some() {
                        "sent no stream item"
                    } else {
                        "did not reply"
                    };
                    return (
                        Err(HandlerError::failed(format!(
                            "worker {} {what} within {timeout:?}; the call was cancelled",
                            self.name()
                        ))),
                        "timeout",
                    );
                }
            };
            match event {
                CallEvent::Chunk(item) => {
                    let Some(sink) = &sink else {
                        return (
                            Err(HandlerError::failed(format!(
                                "worker {} streamed a reply to a unary tag",
                                self.name()
                            ))),
                            "protocol",
                        );
                    };
                    match timeout_at(deadline, sink.send(item)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => {
                            return (
                                Err(HandlerError::failed(
                                    "the caller stopped listening to the stream",
                                )),
                                "cancelled",
                            );
                        }
                        Err(_) => {
                            return (
                                Err(HandlerError::failed(format!(
                                    "the caller did not take a stream item within {timeout:?}"
                                ))),
                                "timeout",
                            );
                        }
                    }
                    // A stream's deadline is per item: it may run as long as items keep coming.
                    deadline = Instant::now() + timeout;
                }
                CallEvent::Value(value) => {
                    guard.armed = false;
                    return (Ok(value), "ok");
                }
                CallEvent::End => {
                    guard.armed = false;
                    return (Ok(Bytes::new()), "ok");
                }
                CallEvent::Failure(failure) => {
                    guard.armed = false;
                    return self.failure(failure);
                }
                CallEvent::Lost(reason) => {
                    guard.armed = false;
                    return self.lost(&reason);
                }
            }
        }
    }

    /// Maps a worker's failure to the runtime's.
    fn failure(&self, failure: pb::Failure) -> Outcome {
        use pb::FailureCode;
        let message = failure.message;
        match FailureCode::try_from(failure.code) {
            Ok(FailureCode::Fatal) => (Err(HandlerError::fatal(message)), "fatal"),
            Ok(FailureCode::Unavailable) => self.unavailable(message, "unavailable"),
            Ok(FailureCode::UnknownTag) => (
                Err(HandlerError::failed(format!(
                    "worker {} does not handle this tag: {message}",
                    self.name()
                ))),
                "failed",
            ),
            Ok(FailureCode::Malformed) => (
                Err(HandlerError::failed(format!(
                    "malformed message: {message}"
                ))),
                "failed",
            ),
            _ => (Err(HandlerError::failed(message)), "failed"),
        }
    }
}
