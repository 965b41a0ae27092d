//! The caller's side of a persisted request: save it, hand it to its owner (or run it here), and
//! wait for its reply.

use std::time::SystemTime;

use bytes::Bytes;
use shoal_protocol::{ErrorCode, Notification, ReplyFrame, Request, RunnerAddress, Snowflake};
use shoal_storage::{
    Claim, EnvelopeKind, PersistedEnvelope, PersistedRequest, SaveResult, StorageError,
    StoredReplyKind, message_key,
};
use tokio::time::{Instant, timeout_at};

use super::Persistence;
use super::process::is_final;
use super::waiter::frame_result;
use crate::entity::ReplyValue;
use crate::error::{CallError, CallErrorKind};
use crate::router::Router;
use crate::router::outgoing::Outgoing;
use crate::transport::TransportError;

/// A persisted request just saved.
pub(super) struct Saved {
    /// Its id (a duplicate's original has another: see `result`).
    pub(super) id: Snowflake,
    /// The encoded message.
    pub(super) payload: Bytes,
    /// Who runs it first.
    pub(super) target: Target,
    pub(super) result: SaveResult,
}

/// Who processes a request just saved.
pub(super) enum Target {
    /// This runner holds the shard.
    Here,
    /// Another runner holds it: push the request to it.
    Owner(RunnerAddress),
    /// Nobody yet, or not before its `deliver_at`: the owner's poller will find it.
    Later,
}

impl Router {
    pub(super) fn persistence_of(
        &self,
        out: &Outgoing,
    ) -> Result<&std::sync::Arc<Persistence>, CallError> {
        self.persistence().ok_or_else(|| {
            CallError::new(
                CallErrorKind::Persistence,
                out.address.clone(),
                format!(
                    "message {:?} is persisted but this runtime has no message storage \
                     (configure ShardingBuilder::message_storage)",
                    out.tag.as_str()
                ),
            )
        })
    }

    fn target(&self, out: &Outgoing, deliver_at: Option<SystemTime>) -> Target {
        if deliver_at.is_some_and(|at| at > SystemTime::now()) {
            return Target::Later;
        }
        if self.shards().is_active(&out.address.shard) {
            return Target::Here;
        }
        match self.routes().owner(&out.address.shard) {
            Some(owner) if Some(&owner) != self.me() => Target::Owner(owner),
            _ => Target::Later,
        }
    }

    /// Stores a persisted request (claimed for the runner that will run it first) and decides
    /// who runs it.
    pub(super) async fn save_persisted(
        &self,
        persistence: &Persistence,
        out: &mut Outgoing,
        streaming: bool,
    ) -> Result<Saved, CallError> {
        if self.is_closing() {
            return Err(CallError::new(
                CallErrorKind::ShuttingDown,
                out.address.clone(),
                "",
            ));
        }
        let payload = out.encoded().map_err(|message| {
            CallError::new(
                CallErrorKind::MalformedMessage,
                out.address.clone(),
                message,
            )
        })?;
        // Persisted requests always travel encoded, even to a local entity.
        out.typed = None;
        let spec = out.persist.take().unwrap_or_default();
        let mut request = PersistedRequest {
            id: self.new_id(out)?,
            address: out.address.clone(),
            tag: out.tag.clone(),
            payload: payload.clone(),
            headers: out.headers.clone(),
            key: spec
                .primary_key
                .as_deref()
                .map(|key| message_key(&out.address, &out.tag, key)),
            deliver_at: spec.deliver_at,
            streaming,
            uninterruptible: spec.uninterruptible,
        };
        let target = self.target(out, spec.deliver_at);
        let claim = match &target {
            Target::Here => self.me().cloned(),
            Target::Owner(owner) => Some(owner.clone()),
            Target::Later => None,
        }
        .map(|by| Claim {
            by,
            // Only the shard's owner polls the shard, and it never runs a request twice at once,
            // so this claim only keeps the owner's poller from racing the push. Keep it short:
            // if the push never lands (the owner died), the request must not wait long.
            duration: persistence
                .settings
                .claim_timeout
                .min(persistence.settings.poll_interval * 3),
        });
        let storage_timeout = self.config().storage_timeout();
        let mut attempt = 0;
        let result = loop {
            let saved = tokio::time::timeout(
                storage_timeout,
                persistence.storage.save_request(&request, claim.as_ref()),
            )
            .await;
            match saved {
                Ok(Ok(saved)) => break saved,
                // Another request holds this id (two processes made the same id): storage
                // stored nothing; save this one again under a new id.
                Ok(Err(error @ StorageError::Conflict { .. })) if attempt < 3 => {
                    attempt += 1;
                    metrics::counter!("shoal_persisted_id_conflicts_total").increment(1);
                    tracing::warn!(address = %out.address, %error, "a request id was already taken; saving again under a new id");
                    request.id = self.new_id(out)?;
                }
                Ok(Err(error)) if error.outcome_unknown() => {
                    return Err(CallError::new(
                        CallErrorKind::OutcomeUnknown,
                        out.address.clone(),
                        format!(
                            "the request may or may not have been stored ({error}); retry with \
                             the same primary key to be sure it runs once"
                        ),
                    )
                    .with_source(error));
                }
                Ok(Err(error)) => {
                    return Err(CallError::new(
                        CallErrorKind::Persistence,
                        out.address.clone(),
                        format!("the request was not stored: {error}"),
                    )
                    .with_source(error));
                }
                Err(_) => {
                    return Err(CallError::new(
                        CallErrorKind::OutcomeUnknown,
                        out.address.clone(),
                        format!(
                            "storage did not answer within {storage_timeout:?}: the request may \
                             or may not have been stored; retry with the same primary key to be \
                             sure it runs once"
                        ),
                    ));
                }
            }
        };
        let id = request.id;
        metrics::counter!("shoal_persisted_requests_total").increment(1);
        if matches!(result, SaveResult::Duplicate { .. }) {
            metrics::counter!("shoal_persisted_duplicates_total").increment(1);
        }
        Ok(Saved {
            id,
            payload,
            target,
            result,
        })
    }

    /// Stores a persisted request and hands it to its owner without waiting for its reply;
    /// returns its id (a duplicate's: the original's) once it is stored.
    pub(crate) async fn submit_persisted(&self, mut out: Outgoing) -> Result<Snowflake, CallError> {
        let persistence = self.persistence_of(&out)?.clone();
        let deadline = Instant::now() + out.timeout;
        let Saved {
            id,
            payload,
            target,
            result,
        } = self.save_persisted(&persistence, &mut out, false).await?;
        match result {
            SaveResult::Duplicate { original_id, .. } => Ok(original_id),
            SaveResult::Saved => {
                self.hand_over(&persistence, id, out, target, payload, deadline);
                Ok(id)
            }
        }
    }

    /// Stores an interrupt of the persisted request `request_id` of the entity at `address`:
    /// the shard's owner stops the request if it is running (its reply is `Interrupted`) or
    /// answers it `Interrupted` without running it. An interrupt of a finished request does
    /// nothing.
    pub(crate) async fn interrupt_persisted(
        &self,
        out: &Outgoing,
        request_id: Snowflake,
    ) -> Result<(), CallError> {
        let persistence = self.persistence_of(out)?;
        let mut envelope = PersistedEnvelope {
            id: self.new_id(out)?,
            request_id,
            address: out.address.clone(),
            kind: EnvelopeKind::Interrupt,
        };
        let storage_timeout = self.config().storage_timeout();
        let mut attempt = 0;
        let saved = loop {
            let saved = tokio::time::timeout(
                storage_timeout,
                persistence.storage.save_envelope(&envelope),
            )
            .await;
            match saved {
                // Another message holds this id (two processes made the same id): nothing was
                // stored; save it again under a new id.
                Ok(Err(StorageError::Conflict { .. })) if attempt < 3 => {
                    attempt += 1;
                    envelope.id = self.new_id(out)?;
                }
                other => break other,
            }
        };
        match saved {
            Ok(Ok(())) => {
                // The owner's poller is woken by the save's event (across processes where the
                // backend has notifications); wake this runner's at once in case it is here.
                persistence.wake.notify_one();
                Ok(())
            }
            Ok(Err(error)) => {
                let (kind, message) = match &error {
                    StorageError::Refused { reason, .. } => (
                        CallErrorKind::Persistence,
                        format!("the interrupt was refused: {reason}"),
                    ),
                    error if error.outcome_unknown() => (
                        CallErrorKind::OutcomeUnknown,
                        format!("the interrupt may or may not have been stored: {error}"),
                    ),
                    error => (
                        CallErrorKind::Persistence,
                        format!("the interrupt was not stored: {error}"),
                    ),
                };
                Err(CallError::new(kind, out.address.clone(), message).with_source(error))
            }
            Err(_) => Err(CallError::new(
                CallErrorKind::OutcomeUnknown,
                out.address.clone(),
                format!(
                    "storage did not answer within {storage_timeout:?}: the interrupt may or may \
                     not have been stored"
                ),
            )),
        }
    }

    /// Sends a persisted request and waits for its reply: once this returns `Ok` (or a
    /// timeout), the request is stored and will be processed.
    pub(crate) async fn call_persisted(&self, mut out: Outgoing) -> Result<ReplyValue, CallError> {
        let persistence = self.persistence_of(&out)?.clone();
        let started = Instant::now();
        let deadline = started + out.timeout;
        let storage_timeout = self.config().storage_timeout();
        let Saved {
            id,
            payload,
            target,
            result: saved,
        } = self.save_persisted(&persistence, &mut out, false).await?;
        let wait_for = match saved {
            SaveResult::Duplicate {
                original_id,
                last_reply,
            } => {
                if let Some(reply) = last_reply
                    && let StoredReplyKind::Final(frame) = reply.kind
                {
                    return frame_result(&out.address, original_id, frame);
                }
                original_id
            }
            SaveResult::Saved => {
                match target {
                    Target::Here => match persistence
                        .spawn_persisted(id, out.clone_encoded(), None)
                        .await
                    {
                        Ok(Some(frame)) => return frame_result(&out.address, id, frame),
                        _ => {
                            // Not settled here (a transient failure, the shard moving): its claim
                            // is lifted; let the poller try again now.
                            persistence.wake.notify_one();
                            id
                        }
                    },
                    Target::Owner(owner) => {
                        match self.push(id, &out, &owner, payload, deadline).await {
                            Some(result) => return result,
                            None => id,
                        }
                    }
                    Target::Later => {
                        self.wake_later(&persistence, id, &out, payload, deadline, false);
                        id
                    }
                }
            }
        };
        persistence
            .wait_reply(
                &out.address,
                wait_for,
                deadline,
                storage_timeout,
                out.timeout,
            )
            .await
    }

    /// Delivers a persisted notification without waiting for it.
    fn hand_over(
        &self,
        persistence: &std::sync::Arc<Persistence>,
        id: Snowflake,
        out: Outgoing,
        target: Target,
        payload: Bytes,
        deadline: Instant,
    ) {
        match target {
            Target::Here => {
                drop(persistence.spawn_persisted(id, out, None));
            }
            Target::Owner(owner) => {
                let router = self.clone();
                tokio::spawn(async move {
                    let mut owner = owner;
                    loop {
                        let request = persisted_wire(id, &out, payload.clone(), deadline, false);
                        let transport = router.transport();
                        let sent = timeout_at(
                            deadline,
                            transport.notify(&owner, Notification::Request(request)),
                        );
                        let moved = router.routes().moved_from(&out.address.shard, &owner);
                        let sent = tokio::select! {
                            biased;
                            sent = sent => sent,
                            // Taken over while in flight: hand it to the new owner at once.
                            now = moved => {
                                metrics::counter!("shoal_requests_rerouted_total", "kind" => "persisted")
                                    .increment(1);
                                if Some(&now) != router.me() {
                                    owner = now;
                                    continue;
                                }
                                router.release_claim(id).await;
                                if let Some(persistence) = router.persistence() {
                                    persistence.wake.notify_one();
                                }
                                return;
                            }
                        };
                        if !matches!(sent, Ok(Ok(None))) {
                            router.release_claim(id).await;
                        }
                        return;
                    }
                });
            }
            Target::Later => self.wake_later(persistence, id, &out, payload, deadline, false),
        }
    }

    /// A request was saved for later (scheduled, or its shard has no owner yet): wakes the
    /// poller that will deliver it, so that it learns of the request now rather than at its next
    /// poll. Here, that is this runner's poller; on another runner, it is told through the
    /// transport when storage events do not reach other processes (SQLite), by a push its owner
    /// answers by polling.
    pub(super) fn wake_later(
        &self,
        persistence: &Persistence,
        id: Snowflake,
        out: &Outgoing,
        payload: Bytes,
        deadline: Instant,
        streaming: bool,
    ) {
        persistence.wake.notify_one();
        if persistence.storage.events_reach_other_processes() {
            return;
        }
        let Some(owner) = self
            .routes()
            .owner(&out.address.shard)
            .filter(|owner| Some(owner) != self.me())
        else {
            return;
        };
        let request = persisted_wire(id, out, payload, deadline, streaming);
        let router = self.clone();
        tokio::spawn(async move {
            let wake = router
                .transport()
                .notify(&owner, Notification::Request(request));
            // Best effort: the owner's next poll finds the request anyway.
            let _ = tokio::time::timeout_at(deadline, wake).await;
        });
    }

    /// Pushes a saved request to its owner. `None`: the owner did not settle it (it is stored;
    /// wait for its reply in storage).
    ///
    /// When the shard is taken over while the push is in flight (the owner froze, or was cut
    /// off), the request is pushed to the new owner at once instead of waiting out the deadline
    /// on the old one: it is stored, and the new owner runs it from storage, so it runs once
    /// whichever of them answers.
    async fn push(
        &self,
        id: Snowflake,
        out: &Outgoing,
        owner: &RunnerAddress,
        payload: Bytes,
        deadline: Instant,
    ) -> Option<Result<ReplyValue, CallError>> {
        let mut owner = owner.clone();
        loop {
            let request = persisted_wire(id, out, payload.clone(), deadline, false);
            let sent = timeout_at(deadline, self.transport().send(&owner, request));
            let moved = self.routes().moved_from(&out.address.shard, &owner);
            let sent = tokio::select! {
                biased;
                sent = sent => sent,
                now = moved => {
                    metrics::counter!("shoal_requests_rerouted_total", "kind" => "persisted")
                        .increment(1);
                    tracing::debug!(request = %id, from = %owner, to = %now, "shard moved while a persisted request was in flight; pushing it to the new owner");
                    if Some(&now) == self.me() {
                        // This runner took the shard over: its poller runs the request.
                        self.release_claim(id).await;
                        if let Some(persistence) = self.persistence() {
                            persistence.wake.notify_one();
                        }
                        return None;
                    }
                    owner = now;
                    continue;
                }
            };
            return self.pushed(id, out, sent).await;
        }
    }

    /// Lifts the claim on `id` (see [`Persistence::release_claim`]).
    pub(super) async fn release_claim(&self, id: Snowflake) {
        if let Some(persistence) = self.persistence() {
            persistence.release_claim(id).await;
        }
    }

    /// What a push's answer means for the caller (see [`Router::push`]).
    async fn pushed(
        &self,
        id: Snowflake,
        out: &Outgoing,
        sent: Result<Result<ReplyFrame, TransportError>, tokio::time::error::Elapsed>,
    ) -> Option<Result<ReplyValue, CallError>> {
        match sent {
            Err(_) => {
                // The owner may be gone: let whoever holds the shard now deliver it at once.
                self.release_claim(id).await;
                Some(Err(CallError::timed_out(&out.address, out.timeout)))
            }
            Ok(Ok(ReplyFrame::Failure(failure))) if !is_final(failure.code) => {
                if failure.code == ErrorCode::DeadlineExceeded {
                    return Some(Err(CallError::timed_out(&out.address, out.timeout)));
                }
                self.release_claim(id).await;
                None
            }
            Ok(Ok(frame)) => Some(frame_result(&out.address, id, frame)),
            Ok(Err(TransportError::Refused { failure, .. })) if is_final(failure.code) => Some(
                Err(CallError::from_failure(out.address.clone(), *failure, id)),
            ),
            Ok(Err(_)) => {
                self.release_claim(id).await;
                None
            }
        }
    }
}

/// The wire form of a stored request pushed to its owner.
pub(super) fn persisted_wire(
    id: Snowflake,
    out: &Outgoing,
    payload: Bytes,
    deadline: Instant,
    streaming: bool,
) -> Request {
    out.wire(id, payload, deadline, true, streaming)
}
