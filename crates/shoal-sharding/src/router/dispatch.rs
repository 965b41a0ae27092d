//! Sending requests to entities: locally when this runner holds the shard, otherwise to the
//! owner through the transport, retrying routing failures until the call's deadline.

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use shoal_protocol::{
    ErrorCode, Failure, Notification, ReplyFrame, Request, RunnerAddress, Snowflake,
};
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout_at};

use super::Router;
use super::outgoing::Outgoing;
use crate::entity::{ReplyValue, chunk_channel};
use crate::error::{CallError, CallErrorKind, Cause};
use crate::reply::{Outcome, ReplyTo};
use crate::transport::TransportError;

/// A stream of replies as the client sees it.
pub(crate) type ReplyItems = BoxStream<'static, Result<ReplyValue, CallError>>;

/// Why an attempt did not produce a result.
enum Attempt<T> {
    Done(Result<T, CallError>),
    /// Nobody can take the request right now (no owner, wrong owner, unreachable): retry.
    Retry(Retry),
}

/// Why an attempt is retried: reported to the caller when no attempt succeeds in time.
struct Retry {
    /// The runner that could not take the request, when one was tried.
    runner: Option<RunnerAddress>,
    /// What happened.
    reason: String,
    /// The underlying error (the transport's, or the runner's failure), when there is one.
    cause: Option<Cause>,
}

impl Retry {
    /// No runner holds the shard yet.
    fn unowned() -> Self {
        Self {
            runner: None,
            reason: "no runner holds the shard yet".to_owned(),
            cause: None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Unary,
    Notify,
}

impl Router {
    fn check_open(&self, out: &Outgoing) -> Result<(), CallError> {
        if self.is_closing() {
            return Err(CallError::new(
                CallErrorKind::ShuttingDown,
                out.address.clone(),
                "",
            ));
        }
        Ok(())
    }

    /// Waits before the next attempt, or gives up when the deadline would pass first.
    async fn back_off(
        &self,
        out: &Outgoing,
        started: Instant,
        deadline: Instant,
        last: Retry,
    ) -> Result<(), CallError> {
        let retry = self.config().send_retry_interval();
        if Instant::now() + retry >= deadline {
            let waited = started.elapsed();
            let error = match last.runner {
                Some(runner) => CallError::new(
                    CallErrorKind::RunnerUnavailable {
                        runner: Some(runner),
                    },
                    out.address.clone(),
                    last.reason,
                ),
                None => CallError::new(
                    CallErrorKind::EntityNotAssignedToRunner { waited },
                    out.address.clone(),
                    last.reason,
                ),
            };
            return Err(error.with_cause(last.cause));
        }
        tokio::time::sleep(retry).await;
        Ok(())
    }

    /// Sends a request and waits for its single reply.
    pub(crate) async fn call_unary(&self, out: Outgoing) -> Result<ReplyValue, CallError> {
        self.send_with_retries(out, Mode::Unary).await
    }

    /// Delivers a request nobody waits for; returns once the owner accepted it.
    pub(crate) async fn call_notify(&self, out: Outgoing) -> Result<(), CallError> {
        self.send_with_retries(out, Mode::Notify).await.map(|_| ())
    }

    async fn send_with_retries(
        &self,
        mut out: Outgoing,
        mode: Mode,
    ) -> Result<ReplyValue, CallError> {
        let started = Instant::now();
        let deadline = started + out.timeout;
        self.check_open(&out)?;
        let id = self.new_id(&out)?;
        loop {
            self.check_open(&out)?;
            let attempt = if self.shards().is_active(&out.address.shard) {
                self.attempt_local(&mut out, id, mode, deadline).await
            } else {
                match self.routes().owner(&out.address.shard) {
                    Some(owner) if Some(&owner) != self.me() => {
                        self.attempt_remote(&mut out, id, &owner, mode, deadline)
                            .await
                    }
                    // No owner known, or this runner is about to acquire the shard.
                    _ => Attempt::Retry(Retry::unowned()),
                }
            };
            match attempt {
                Attempt::Done(result) => return result,
                Attempt::Retry(retry) => {
                    self.back_off(&out, started, deadline, retry).await?;
                }
            }
        }
    }

    async fn attempt_local(
        &self,
        out: &mut Outgoing,
        id: Snowflake,
        mode: Mode,
        deadline: Instant,
    ) -> Attempt<ReplyValue> {
        let (reply, rx) = match mode {
            Mode::Unary => {
                let (tx, rx) = oneshot::channel();
                (ReplyTo::Caller(tx), Some(rx))
            }
            Mode::Notify => (ReplyTo::Discard, None),
        };
        if let Err(failure) = self.local().deliver(out, id, None, reply) {
            return self.failure_attempt(out, failure, None);
        }
        let Some(rx) = rx else {
            return Attempt::Done(Ok(ReplyValue::Encoded(Bytes::new())));
        };
        match timeout_at(deadline, rx).await {
            Err(_) => Attempt::Done(Err(CallError::timed_out(&out.address, out.timeout))),
            Ok(Err(_)) => Attempt::Done(Err(lost_in_entity(out))),
            Ok(Ok(outcome)) => self.outcome_attempt(out, outcome),
        }
    }

    fn outcome_attempt(&self, out: &mut Outgoing, outcome: Outcome) -> Attempt<ReplyValue> {
        match outcome {
            Ok(value) => Attempt::Done(Ok(value)),
            Err(unanswered) => {
                if let Some(payload) = unanswered.payload {
                    out.restore(payload);
                }
                self.failure_attempt(out, unanswered.failure, None)
            }
        }
    }

    fn failure_attempt(
        &self,
        out: &Outgoing,
        failure: Failure,
        runner: Option<&RunnerAddress>,
    ) -> Attempt<ReplyValue> {
        if failure.code.is_retryable_routing() {
            let runner = (failure.code == ErrorCode::RunnerUnavailable)
                .then(|| runner.cloned())
                .flatten();
            return Attempt::Retry(Retry {
                runner,
                reason: failure.message.clone(),
                cause: Some(std::sync::Arc::new(failure)),
            });
        }
        let mut error =
            CallError::from_failure(out.address.clone(), failure, Snowflake::from_raw(0));
        if let CallErrorKind::Timeout { timeout } = error.kind_mut() {
            *timeout = out.timeout;
        }
        Attempt::Done(Err(error))
    }

    fn request(
        &self,
        out: &mut Outgoing,
        id: Snowflake,
        deadline: Instant,
        streaming: bool,
    ) -> Result<Request, CallError> {
        let payload = out.encoded().map_err(|message| {
            CallError::new(
                CallErrorKind::MalformedMessage,
                out.address.clone(),
                message,
            )
        })?;
        Ok(out.wire(id, payload, deadline, false, streaming))
    }

    async fn attempt_remote(
        &self,
        out: &mut Outgoing,
        id: Snowflake,
        owner: &RunnerAddress,
        mode: Mode,
        deadline: Instant,
    ) -> Attempt<ReplyValue> {
        let request = match self.request(out, id, deadline, false) {
            Ok(r) => r,
            Err(e) => return Attempt::Done(Err(e)),
        };
        let transport = self.transport();
        // Should the shard be taken over while the request is in flight (its owner froze or was
        // cut off), stop waiting for an answer that will most likely never come.
        let moved = self.routes().moved_from(&out.address.shard, owner);
        match mode {
            Mode::Unary => {
                let sent = tokio::select! {
                    biased;
                    sent = timeout_at(deadline, transport.send(owner, request)) => sent,
                    now = moved => return Attempt::Done(Err(moved_in_flight(out, owner, &now))),
                };
                match sent {
                    Err(_) => Attempt::Done(Err(CallError::timed_out(&out.address, out.timeout))),
                    Ok(Ok(ReplyFrame::Value(bytes))) => {
                        Attempt::Done(Ok(ReplyValue::Encoded(bytes)))
                    }
                    Ok(Ok(ReplyFrame::Failure(failure))) => {
                        self.failure_attempt(out, failure, Some(owner))
                    }
                    Ok(Ok(other)) => Attempt::Done(Err(CallError::new(
                        CallErrorKind::MalformedMessage,
                        out.address.clone(),
                        format!("runner {owner} answered a single request with {other:?}"),
                    ))),
                    Ok(Err(e)) => self.transport_attempt(out, e),
                }
            }
            Mode::Notify => {
                let notification = Notification::Request(request);
                let sent = tokio::select! {
                    biased;
                    sent = timeout_at(deadline, transport.notify(owner, notification)) => sent,
                    now = moved => return Attempt::Done(Err(moved_in_flight(out, owner, &now))),
                };
                match sent {
                    Err(_) => Attempt::Done(Err(CallError::timed_out(&out.address, out.timeout))),
                    Ok(Ok(None)) => Attempt::Done(Ok(ReplyValue::Encoded(Bytes::new()))),
                    Ok(Ok(Some(failure))) => self.failure_attempt(out, failure, Some(owner)),
                    Ok(Err(e)) => self.transport_attempt(out, e),
                }
            }
        }
    }

    fn transport_attempt<T>(&self, out: &Outgoing, error: TransportError) -> Attempt<T> {
        match &error {
            TransportError::Unreachable { runner, reason } => Attempt::Retry(Retry {
                runner: Some(runner.clone()),
                reason: reason.clone(),
                cause: Some(std::sync::Arc::new(error)),
            }),
            TransportError::Lost { runner, reason } => Attempt::Done(Err(CallError::new(
                CallErrorKind::RunnerUnavailable {
                    runner: Some(runner.clone()),
                },
                out.address.clone(),
                reason.clone(),
            )
            .with_source(error))),
            TransportError::Refused { failure, .. } => Attempt::Done(Err(CallError::from_failure(
                out.address.clone(),
                (**failure).clone(),
                Snowflake::from_raw(0),
            ))),
        }
    }

    /// Sends a streaming request; the returned stream yields each item, then ends (or yields one
    /// error).
    pub(crate) async fn call_stream(&self, mut out: Outgoing) -> Result<ReplyItems, CallError> {
        let started = Instant::now();
        let deadline = started + out.timeout;
        self.check_open(&out)?;
        let id = self.new_id(&out)?;
        loop {
            self.check_open(&out)?;
            let attempt = if self.shards().is_active(&out.address.shard) {
                self.stream_local(&mut out, id)
            } else {
                match self.routes().owner(&out.address.shard) {
                    Some(owner) if Some(&owner) != self.me() => {
                        self.stream_remote(&mut out, id, &owner, deadline).await
                    }
                    _ => Attempt::Retry(Retry::unowned()),
                }
            };
            match attempt {
                Attempt::Done(result) => return result,
                Attempt::Retry(retry) => {
                    self.back_off(&out, started, deadline, retry).await?;
                }
            }
        }
    }

    fn stream_local(&self, out: &mut Outgoing, id: Snowflake) -> Attempt<ReplyItems> {
        let (chunk_tx, chunk_rx) = chunk_channel();
        let (tx, rx) = oneshot::channel();
        if let Err(failure) = self
            .local()
            .deliver(out, id, Some(chunk_tx), ReplyTo::Caller(tx))
        {
            return match self.failure_attempt(out, failure, None) {
                Attempt::Done(Err(e)) => Attempt::Done(Err(e)),
                Attempt::Retry(retry) => Attempt::Retry(retry),
                Attempt::Done(Ok(_)) => Attempt::Retry(Retry {
                    runner: None,
                    reason: "unexpected".to_owned(),
                    cause: None,
                }),
            };
        }
        let address = out.address.clone();
        let items = tokio_stream_from(chunk_rx).map(Ok);
        let end = futures::stream::once(async move {
            match rx.await {
                Ok(Ok(_)) => None,
                Ok(Err(unanswered)) => Some(Err(CallError::from_failure(
                    address,
                    unanswered.failure,
                    id,
                ))),
                Err(_) => Some(Err(CallError::new(
                    CallErrorKind::Interrupted,
                    address,
                    "the entity was stopped while streaming",
                ))),
            }
        })
        .filter_map(futures::future::ready);
        Attempt::Done(Ok(items.chain(end).boxed()))
    }

    async fn stream_remote(
        &self,
        out: &mut Outgoing,
        id: Snowflake,
        owner: &RunnerAddress,
        deadline: Instant,
    ) -> Attempt<ReplyItems> {
        let request = match self.request(out, id, deadline, true) {
            Ok(r) => r,
            Err(e) => return Attempt::Done(Err(e)),
        };
        let moved = self.routes().moved_from(&out.address.shard, owner);
        tokio::pin!(moved);
        let opened = tokio::select! {
            biased;
            opened = timeout_at(deadline, self.transport().send_stream(owner, request)) => opened,
            now = &mut moved => return Attempt::Done(Err(moved_in_flight(out, owner, &now))),
        };
        let mut frames = match opened {
            Err(_) => {
                return Attempt::Done(Err(CallError::timed_out(&out.address, out.timeout)));
            }
            Ok(Err(e)) => return self.transport_attempt(out, e),
            Ok(Ok(frames)) => frames,
        };
        // A routing failure as the first frame means the request never started: retry it.
        let first = match tokio::select! {
            biased;
            first = timeout_at(deadline, frames.next()) => first,
            now = &mut moved => return Attempt::Done(Err(moved_in_flight(out, owner, &now))),
        } {
            Err(_) => {
                return Attempt::Done(Err(CallError::timed_out(&out.address, out.timeout)));
            }
            Ok(first) => first,
        };
        if let Some(Ok(ReplyFrame::Failure(failure))) = &first
            && failure.code.is_retryable_routing()
        {
            return Attempt::Retry(Retry {
                runner: None,
                reason: failure.message.clone(),
                cause: Some(std::sync::Arc::new(failure.clone())),
            });
        }
        let address = out.address.clone();
        let runner = owner.clone();
        let frames = futures::stream::iter(first).chain(frames);
        let items = frames
            .scan(false, move |finished, frame| {
                if *finished {
                    return futures::future::ready(None);
                }
                let out: Vec<Result<ReplyValue, CallError>> = match frame {
                    Ok(ReplyFrame::Chunk(chunk)) => chunk
                        .values
                        .into_iter()
                        .map(|v| Ok(ReplyValue::Encoded(v)))
                        .collect(),
                    Ok(ReplyFrame::End) | Ok(ReplyFrame::Value(_)) => {
                        *finished = true;
                        Vec::new()
                    }
                    Ok(ReplyFrame::Failure(failure)) => {
                        *finished = true;
                        vec![Err(CallError::from_failure(address.clone(), failure, id))]
                    }
                    Err(e) => {
                        *finished = true;
                        vec![Err(CallError::new(
                            CallErrorKind::RunnerUnavailable {
                                runner: Some(runner.clone()),
                            },
                            address.clone(),
                            e.to_string(),
                        )
                        .with_source(e))]
                    }
                };
                futures::future::ready(Some(futures::stream::iter(out)))
            })
            .flatten();
        Attempt::Done(Ok(items.boxed()))
    }
}

/// A volatile request was in flight to `owner` when its shard was taken over by `now` (the owner
/// stopped renewing its lease: frozen, crashed or cut off). It is not sent again: it may have run.
fn moved_in_flight(out: &Outgoing, owner: &RunnerAddress, now: &RunnerAddress) -> CallError {
    metrics::counter!("shoal_requests_rerouted_total", "kind" => "volatile").increment(1);
    CallError::new(
        CallErrorKind::RunnerUnavailable {
            runner: Some(owner.clone()),
        },
        out.address.clone(),
        format!(
            "the shard moved to {now} while the request was in flight to {owner}; its outcome \
             is unknown"
        ),
    )
}

fn lost_in_entity(out: &Outgoing) -> CallError {
    CallError::new(
        CallErrorKind::Interrupted,
        out.address.clone(),
        "the entity was stopped while processing the request; its outcome is unknown",
    )
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<ReplyValue>,
) -> impl futures::Stream<Item = ReplyValue> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
