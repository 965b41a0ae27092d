//! The owner's side: run a stored request here and save its final reply.

use std::collections::hash_map::Entry;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal_protocol::{ErrorCode, Failure, ReplyFrame, Snowflake};
use shoal_storage::{Fence, StoredReply, StoredReplyKind};
use tokio::sync::oneshot;

use super::Persistence;
use crate::entity::ReplyValue;
use crate::instance::ReplyTo;
use crate::outgoing::Outgoing;
use crate::sharding::Sharding;

/// Whether a failure ends the request (it is stored as its final reply) or only this attempt
/// (the request stays unprocessed and runs again, here or on the shard's next owner).
pub(crate) fn is_final(code: ErrorCode) -> bool {
    !(code.is_retryable_routing()
        || matches!(
            code,
            ErrorCode::Interrupted
                | ErrorCode::MailboxFull
                | ErrorCode::DeadlineExceeded
                | ErrorCode::Persistence
        ))
}

/// Removes a request from the in-flight table when processing ends, however it ends, and hands
/// the outcome to whoever waited for it meanwhile.
struct InFlight<'a> {
    persistence: &'a Persistence,
    id: Snowflake,
}

impl InFlight<'_> {
    fn finish(self, frame: &Option<ReplyFrame>) {
        let waiters = self.persistence.in_flight.lock().remove(&self.id);
        for waiter in waiters.into_iter().flatten() {
            let _ = waiter.send(frame.clone());
        }
        std::mem::forget(self);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.persistence.in_flight.lock().remove(&self.id);
    }
}

impl Sharding {
    /// Runs the stored request `id` on this runner (in a task of its own, so a caller giving up
    /// does not cancel it) and returns its settled final reply, or `None` when it was not settled
    /// here (the shard moved, the runner is stopping, the mailbox was full, storage failed): it
    /// stays unprocessed, its claim is lifted, and it runs again at the owner's next poll.
    pub(crate) fn spawn_persisted(
        &self,
        id: Snowflake,
        out: Outgoing,
    ) -> oneshot::Receiver<Option<ReplyFrame>> {
        let (tx, rx) = oneshot::channel();
        let sharding = self.clone();
        tokio::spawn(async move {
            let frame = sharding.run_persisted(id, out).await;
            if frame.is_none() {
                sharding.release_claim(id).await;
            }
            let _ = tx.send(frame);
        });
        rx
    }

    /// Lifts the claim on `id` (best effort: claims also lapse), so the shard's owner polls it
    /// again instead of waiting for the claim to expire.
    pub(super) async fn release_claim(&self, id: Snowflake) {
        let Some(persistence) = &self.inner.persistence else {
            return;
        };
        let timeout = self.inner.config.storage_timeout();
        let _ = tokio::time::timeout(timeout, persistence.storage.reset_request(id)).await;
    }

    async fn run_persisted(&self, id: Snowflake, mut out: Outgoing) -> Option<ReplyFrame> {
        let persistence = self.inner.persistence.as_ref()?;
        if let Some(frame) = persistence.settled_reply(id) {
            return Some(frame);
        }
        let waiter = match persistence.in_flight.lock().entry(id) {
            Entry::Occupied(mut running) => {
                // Already running here (pushed and polled at once): share its outcome.
                let (tx, rx) = oneshot::channel();
                running.get_mut().push(tx);
                Some(rx)
            }
            Entry::Vacant(slot) => {
                slot.insert(Vec::new());
                None
            }
        };
        if let Some(rx) = waiter {
            return rx.await.ok().flatten();
        }
        let guard = InFlight { persistence, id };
        // Settled between the check above and taking the slot: do not run it again.
        if let Some(frame) = persistence.settled_reply(id) {
            guard.finish(&Some(frame.clone()));
            return Some(frame);
        }
        let frame = self.settle(persistence, id, &mut out).await;
        if let Some(frame) = &frame {
            persistence.remember_settled(id, frame);
        }
        persistence.take_interrupted(id);
        guard.finish(&frame);
        frame
    }

    async fn settle(
        &self,
        persistence: &Persistence,
        id: Snowflake,
        out: &mut Outgoing,
    ) -> Option<ReplyFrame> {
        let (tx, rx) = oneshot::channel();
        let frame = match self.deliver_local(out, id, None, ReplyTo::Caller(tx)) {
            Err(failure) if failure.code == ErrorCode::UnknownEntityType => {
                // The type may not be registered yet (a rolling deploy): hold the message until
                // the registration timeout, then answer it.
                let age = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .saturating_sub(Duration::from_millis(id.unix_millis()));
                if age < persistence.settings.registration_timeout {
                    return None;
                }
                ReplyFrame::Failure(failure)
            }
            Err(failure) if !is_final(failure.code) => return None,
            Err(failure) => ReplyFrame::Failure(failure),
            Ok(()) => match rx.await {
                // The instance went away with the request (stopped, aborted): not settled.
                Err(_) => return None,
                Ok(Err(failure))
                    if failure.code == ErrorCode::Interrupted
                        && persistence.take_interrupted(id) =>
                {
                    ReplyFrame::Failure(failure)
                }
                Ok(Err(failure)) if !is_final(failure.code) => return None,
                Ok(Err(failure)) => ReplyFrame::Failure(failure),
                Ok(Ok(ReplyValue::Encoded(bytes))) => ReplyFrame::Value(bytes),
                Ok(Ok(ReplyValue::Local(_))) => ReplyFrame::Failure(
                    Failure::new(
                        ErrorCode::Defect,
                        "the entity answered a persisted request with an unencoded value",
                    )
                    .with_address(out.address.clone()),
                ),
            },
        };
        let epoch = self.inner.shards.epoch(&out.address.shard)?;
        let fence = Fence {
            shard: out.address.shard.clone(),
            epoch,
        };
        let reply = StoredReply {
            id: self.inner.ids.next_id(),
            request_id: id,
            kind: StoredReplyKind::Final(frame.clone()),
        };
        let saved = tokio::time::timeout(
            self.inner.config.storage_timeout(),
            persistence.storage.save_reply(&reply, &fence),
        )
        .await;
        match saved {
            Ok(Ok(())) => {
                metrics::counter!("shoal_persisted_replies_total").increment(1);
                Some(frame)
            }
            Ok(Err(error)) => {
                tracing::warn!(request = %id, address = %out.address, %error, "saving a persisted reply failed; the request will run again");
                None
            }
            Err(_) => {
                tracing::warn!(request = %id, address = %out.address, "saving a persisted reply timed out; the request will run again");
                None
            }
        }
    }
}
