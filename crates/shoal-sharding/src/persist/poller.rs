//! The owner's safety net: claims unprocessed messages of the shards this runner holds.
//!
//! Woken at once when a message is saved for a held shard (in process; across processes where
//! the backend publishes events, e.g. Postgres `LISTEN/NOTIFY`), when shards are acquired (after
//! their claims are reset, so a crashed owner's messages are redelivered at once), by a timer for
//! the next scheduled message, and every `poll_interval` otherwise.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shoal_protocol::{ErrorCode, Failure, ReplyFrame, RunnerAddress, ShardId};
use shoal_storage::{
    Claim, ClaimedMessage, EnvelopeKind, Fence, MessageEvent, PersistedRequest, StoredReply,
    StoredReplyKind,
};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::Persistence;
use super::process::StreamRun;
use crate::lifecycle::Lifecycle;
use crate::router::outgoing::Outgoing;

/// Starts the poller, the event listener and the retention sweep of runner `me`.
pub(crate) async fn start(
    persistence: &Arc<Persistence>,
    me: &RunnerAddress,
    lifecycle: &Lifecycle,
) {
    let storage_timeout = persistence.storage_timeout();
    // Claims an earlier process at this address held are void: it is gone. Done before this
    // runner takes shards, so it never lifts a claim made for this process.
    let reset = persistence.storage.reset_runner(me);
    if let Ok(Err(error)) = tokio::time::timeout(storage_timeout, reset).await {
        tracing::warn!(%error, "resetting this runner's old message claims failed");
    }
    let poller = Poller {
        persistence: persistence.clone(),
        me: me.clone(),
    };
    lifecycle.spawn(tokio::spawn(poller.run()));
    lifecycle.spawn(tokio::spawn(listen(persistence.clone())));
    lifecycle.spawn(tokio::spawn(super::sweeper::run(
        persistence.clone(),
        storage_timeout,
    )));
}

/// Called by the lease keeper after it acquired `shards`: lifts their claims (the previous owner
/// may have died holding them) and wakes the poller.
pub(crate) fn on_shards_acquired(persistence: &Arc<Persistence>, shards: Vec<ShardId>) {
    let persistence = persistence.clone();
    let timeout = persistence.storage_timeout();
    tokio::spawn(async move {
        match tokio::time::timeout(timeout, persistence.storage.reset_shards(&shards)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, shards = shards.len(), "resetting message claims of acquired shards failed");
            }
            Err(_) => tracing::warn!(
                shards = shards.len(),
                "resetting message claims of acquired shards timed out"
            ),
        }
        persistence.wake.notify_one();
    });
}

/// Wakes the poller when a message is saved for a shard held here.
async fn listen(persistence: Arc<Persistence>) {
    let mut events = persistence.storage.subscribe();
    loop {
        match events.recv().await {
            Ok(MessageEvent::Saved { shard }) => {
                if persistence.shards().is_active(&shard) {
                    persistence.wake.notify_one();
                }
            }
            Ok(MessageEvent::Replied { .. }) => {}
            Err(RecvError::Lagged(_)) => persistence.wake.notify_one(),
            Err(RecvError::Closed) => return,
        }
    }
}

struct Poller {
    persistence: Arc<Persistence>,
    me: RunnerAddress,
}

impl Poller {
    async fn run(self) {
        let mut next_due: Option<Instant> = None;
        loop {
            let interval = self.persistence.settings.poll_interval;
            let due = next_due.unwrap_or_else(|| Instant::now() + interval);
            tokio::select! {
                _ = self.persistence.wake.notified() => {}
                _ = tokio::time::sleep(interval) => {}
                _ = tokio::time::sleep_until(due) => {}
            }
            next_due = self.poll().await;
        }
    }

    /// Claims and starts what is deliverable now; returns when the next scheduled message is due.
    async fn poll(&self) -> Option<Instant> {
        let shards = self.persistence.shards().active();
        if shards.is_empty() {
            return None;
        }
        let settings = &self.persistence.settings;
        let timeout = self.persistence.storage_timeout();
        let claim = Claim {
            by: self.me.clone(),
            duration: settings.claim_timeout,
        };
        loop {
            let call =
                self.persistence
                    .storage
                    .claim_unprocessed(&shards, settings.poll_batch, &claim);
            let claimed = match tokio::time::timeout(timeout, call).await {
                Ok(Ok(claimed)) => claimed,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "claiming unprocessed messages failed");
                    return None;
                }
                Err(_) => {
                    tracing::warn!("claiming unprocessed messages timed out");
                    return None;
                }
            };
            let full = claimed.len() >= settings.poll_batch;
            for message in claimed {
                self.start(message);
            }
            if !full {
                break;
            }
        }
        let call = self.persistence.storage.next_deliver_at(&shards);
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(Some(at))) => {
                let wait = at
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                Some(Instant::now() + wait)
            }
            _ => None,
        }
    }

    fn start(&self, message: ClaimedMessage) {
        match message {
            ClaimedMessage::Request {
                request,
                last_acked_chunk,
            } => {
                if self.persistence.is_in_flight(request.id) {
                    return;
                }
                metrics::counter!("shoal_persisted_redeliveries_total").increment(1);
                // Not settled (mailbox full, type not registered yet, storage trouble): its
                // claim is lifted and the next poll takes it again.
                if !request.streaming {
                    drop(
                        self.persistence
                            .spawn_persisted(request.id, incoming(*request), None),
                    );
                    return;
                }
                let persistence = self.persistence.clone();
                tokio::spawn(async move {
                    let id = request.id;
                    match stored_items(&persistence, id, last_acked_chunk).await {
                        Some(resume) => {
                            let run = StreamRun { resume, live: None };
                            drop(persistence.spawn_persisted(id, incoming(*request), Some(run)));
                        }
                        None => persistence.release_claim(id).await,
                    }
                });
            }
            ClaimedMessage::Envelope(envelope) => {
                if envelope.kind != EnvelopeKind::Interrupt {
                    return;
                }
                if self.persistence.is_in_flight(envelope.request_id) {
                    self.persistence.interrupt(envelope.request_id);
                    self.persistence
                        .local()
                        .interrupt(&envelope.address, envelope.request_id);
                    return;
                }
                // Not running here: it ends without running.
                let Some(epoch) = self.persistence.shards().epoch(&envelope.address.shard) else {
                    return;
                };
                let fence = Fence {
                    shard: envelope.address.shard.clone(),
                    epoch,
                };
                let Ok(reply_id) = self.persistence.identity().next_id() else {
                    return;
                };
                let reply = StoredReply {
                    id: reply_id,
                    request_id: envelope.request_id,
                    kind: StoredReplyKind::Final(ReplyFrame::Failure(
                        Failure::new(ErrorCode::Interrupted, "interrupted by the caller")
                            .with_address(envelope.address.clone()),
                    )),
                };
                let persistence = self.persistence.clone();
                let timeout = self.persistence.storage_timeout();
                tokio::spawn(async move {
                    let save = persistence.storage.save_reply(&reply, &fence);
                    if let Ok(Err(error)) = tokio::time::timeout(timeout, save).await {
                        tracing::warn!(%error, "saving an interrupt reply failed");
                    }
                });
            }
        }
    }
}

/// How many items of a persisted stream are stored: the rerun resumes after them. `None` when
/// storage could not tell.
async fn stored_items(
    persistence: &Persistence,
    id: shoal_protocol::Snowflake,
    last_acked: Option<StoredReply>,
) -> Option<u64> {
    let end = |reply: &StoredReply| match &reply.kind {
        StoredReplyKind::Chunk {
            sequence, values, ..
        } => u64::from(*sequence) + values.len() as u64,
        StoredReplyKind::Final(_) => 0,
    };
    let timeout = persistence.storage_timeout();
    let unacked = match tokio::time::timeout(timeout, persistence.storage.replies_for(&[id])).await
    {
        Ok(Ok(replies)) => replies,
        Ok(Err(error)) => {
            tracing::warn!(request = %id, %error, "reading a stream's stored chunks failed");
            return None;
        }
        Err(_) => {
            tracing::warn!(request = %id, "reading a stream's stored chunks timed out");
            return None;
        }
    };
    Some(
        unacked
            .iter()
            .chain(last_acked.iter())
            .map(end)
            .max()
            .unwrap_or(0),
    )
}

/// A stored request as a local delivery.
pub(crate) fn incoming(request: PersistedRequest) -> Outgoing {
    Outgoing {
        address: request.address,
        tag: request.tag,
        headers: request.headers,
        timeout: Duration::MAX,
        typed: None,
        encoded: Some(request.payload),
        persist: None,
    }
}
