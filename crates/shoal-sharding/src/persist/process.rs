//! The owner's side: run a stored request here and save its final reply.

use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal_protocol::{Chunk, EntityAddress, ErrorCode, Failure, ReplyFrame, Snowflake};
use shoal_storage::{Epoch, Fence, StoredReply, StoredReplyKind};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::Persistence;
use crate::entity::{ChunkReceiver, ReplyValue};
use crate::router::outgoing::Outgoing;

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

/// Items per stored chunk at most (a chunk holds whatever the handler produced while the previous
/// chunk was being saved).
const CHUNK_ITEMS: usize = 64;
/// Bytes per stored chunk at most (one larger item still makes a chunk of its own).
const CHUNK_BYTES: usize = 256 * 1024;

/// How a persisted stream runs here.
pub(crate) struct StreamRun {
    /// Items an earlier run already stored: the handler's items before this position are dropped.
    pub(crate) resume: u64,
    /// The caller following this run: each chunk once stored, then the final frame once stored.
    /// Dropped without a final frame when the run does not settle here (the caller then reads
    /// storage) or when the request is already running or settled on this runner.
    pub(crate) live: Option<mpsc::Sender<ReplyFrame>>,
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

impl Persistence {
    /// Runs the stored request `id` on this runner (in a task of its own, so a caller giving up
    /// does not cancel it) and returns its settled final reply, or `None` when it was not settled
    /// here (the shard moved, the runner is stopping, the mailbox was full, storage failed): it
    /// stays unprocessed, its claim is lifted, and it runs again at the owner's next poll.
    pub(crate) fn spawn_persisted(
        self: &Arc<Self>,
        id: Snowflake,
        out: Outgoing,
        stream: Option<StreamRun>,
    ) -> oneshot::Receiver<Option<ReplyFrame>> {
        let (tx, rx) = oneshot::channel();
        let persistence = self.clone();
        tokio::spawn(async move {
            let frame = persistence.run_persisted(id, out, stream).await;
            let settled = frame.is_some();
            let _ = tx.send(frame);
            if !settled {
                persistence.release_claim_later(id).await;
            }
        });
        rx
    }

    /// Lifts the claim on `id` after a delay that grows with every attempt that did not settle
    /// it on this runner (a type not registered yet, storage trouble), so that a request that
    /// keeps failing is not claimed and run again at database speed. The claim holds meanwhile
    /// (and lapses on its own if this runner dies).
    async fn release_claim_later(&self, id: Snowflake) {
        let delay = self.retry_delay(id);
        tokio::time::sleep(delay).await;
        self.release_claim(id).await;
    }

    /// Lifts the claim on `id` (best effort: claims also lapse), so the shard's owner polls it
    /// again instead of waiting for the claim to expire.
    pub(crate) async fn release_claim(&self, id: Snowflake) {
        let timeout = self.storage_timeout();
        let _ = tokio::time::timeout(timeout, self.storage.reset_request(id)).await;
    }

    async fn run_persisted(
        &self,
        id: Snowflake,
        mut out: Outgoing,
        stream: Option<StreamRun>,
    ) -> Option<ReplyFrame> {
        if let Some(frame) = self.settled_reply(id) {
            return Some(frame);
        }
        let waiter = match self.in_flight.lock().entry(id) {
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
            // A caller following this (pushed) stream reads storage instead: let it know now.
            drop(stream);
            return rx.await.ok().flatten();
        }
        let guard = InFlight {
            persistence: self,
            id,
        };
        // Settled between the check above and taking the slot: do not run it again.
        if let Some(frame) = self.settled_reply(id) {
            guard.finish(&Some(frame.clone()));
            return Some(frame);
        }
        let frame = self.settle(id, &mut out, stream).await;
        if let Some(frame) = &frame {
            self.remember_settled(id, frame);
            self.forget_retries(id);
        }
        self.take_interrupted(id);
        guard.finish(&frame);
        frame
    }

    #[expect(
        clippy::result_large_err,
        reason = "the instance's outcome is the wire `Failure` stored as the reply"
    )]
    async fn settle(
        &self,
        id: Snowflake,
        out: &mut Outgoing,
        stream: Option<StreamRun>,
    ) -> Option<ReplyFrame> {
        let streaming = stream.is_some();
        let (resume, mut live) = match stream {
            Some(run) => (Some(run.resume), run.live),
            None => (None, None),
        };
        // A full mailbox is waited out for at most half a claim: the request stays claimed by
        // this runner meanwhile.
        let deadline = Instant::now() + self.settings.claim_timeout / 2;
        let (frame, epoch) = match self.local.deliver_stored(out, id, resume, deadline).await {
            Err(failure) if failure.code == ErrorCode::UnknownEntityType => {
                // The type may not be registered yet (a rolling deploy): hold the message until
                // the registration timeout, then answer it.
                let age = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .saturating_sub(Duration::from_millis(id.unix_millis()));
                if age < self.settings.registration_timeout {
                    return None;
                }
                (
                    ReplyFrame::Failure(failure),
                    self.shards.epoch(&out.address.shard)?,
                )
            }
            Err(failure) if !is_final(failure.code) => return None,
            Err(failure) => (
                ReplyFrame::Failure(failure),
                self.shards.epoch(&out.address.shard)?,
            ),
            Ok(delivered) => {
                if let (Some(chunk_rx), Some(resume)) = (delivered.chunks, resume)
                    && !self
                        .store_chunks(
                            id,
                            &out.address,
                            delivered.epoch,
                            chunk_rx,
                            resume,
                            &mut live,
                        )
                        .await
                {
                    return None;
                }
                let frame = match delivered.outcome.await.map(|o| o.map_err(|u| u.failure)) {
                    // The instance went away with the request (stopped, aborted): not settled.
                    Err(_) => return None,
                    Ok(Err(failure))
                        if failure.code == ErrorCode::Interrupted && self.take_interrupted(id) =>
                    {
                        ReplyFrame::Failure(failure)
                    }
                    Ok(Err(failure)) if !is_final(failure.code) => return None,
                    Ok(Err(failure)) => ReplyFrame::Failure(failure),
                    Ok(Ok(_)) if streaming => ReplyFrame::End,
                    Ok(Ok(ReplyValue::Encoded(bytes))) => ReplyFrame::Value(bytes),
                    Ok(Ok(ReplyValue::Local(_))) => ReplyFrame::Failure(
                        Failure::new(
                            ErrorCode::Defect,
                            "the entity answered a persisted request with an unencoded value",
                        )
                        .with_address(out.address.clone()),
                    ),
                };
                (frame, delivered.epoch)
            }
        };
        // Fenced by the epoch the request ran under: if the shard moved (and perhaps came back)
        // meanwhile, the reply is refused and the request runs again under the new owner.
        let fence = Fence {
            shard: out.address.shard.clone(),
            epoch,
        };
        let Ok(reply_id) = self.identity.next_id() else {
            tracing::warn!(request = %id, address = %out.address, "no reply id can be made (the machine id lease lapsed); the request will run again");
            return None;
        };
        let reply = StoredReply {
            id: reply_id,
            request_id: id,
            kind: StoredReplyKind::Final(frame.clone()),
        };
        let saved = tokio::time::timeout(
            self.storage_timeout(),
            self.storage.save_reply(&reply, &fence),
        )
        .await;
        match saved {
            Ok(Ok(())) => {
                metrics::counter!("shoal_persisted_replies_total").increment(1);
                if let Some(live) = live {
                    let _ = live.send(frame.clone()).await;
                }
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

    /// Stores the items of a persisted stream as they come, in chunks fenced by the shard's
    /// lease, and passes each stored chunk to the live caller. `false` when a chunk could not be
    /// stored (the shard moved, storage failed): the run stops here and the request reruns,
    /// resuming after the chunks already stored.
    async fn store_chunks(
        &self,
        id: Snowflake,
        address: &EntityAddress,
        epoch: Epoch,
        mut items: ChunkReceiver,
        mut next: u64,
        live: &mut Option<mpsc::Sender<ReplyFrame>>,
    ) -> bool {
        let storage_timeout = self.storage_timeout();
        while let Some(first) = items.recv().await {
            let mut values = vec![encoded_item(first)];
            let mut bytes = values[0].len();
            while values.len() < CHUNK_ITEMS && bytes < CHUNK_BYTES {
                match items.try_recv() {
                    Ok(item) => {
                        let item = encoded_item(item);
                        bytes += item.len();
                        values.push(item);
                    }
                    Err(_) => break,
                }
            }
            let Ok(sequence) = u32::try_from(next) else {
                tracing::warn!(request = %id, %address, "a persisted stream passed 2^32 items; it stops here");
                return false;
            };
            let fence = Fence {
                shard: address.shard.clone(),
                epoch,
            };
            let Ok(reply_id) = self.identity.next_id() else {
                tracing::warn!(request = %id, %address, "no chunk id can be made (the machine id lease lapsed); the stream will resume elsewhere");
                return false;
            };
            let reply = StoredReply {
                id: reply_id,
                request_id: id,
                kind: StoredReplyKind::Chunk {
                    sequence,
                    values,
                    acked: false,
                },
            };
            let saved =
                tokio::time::timeout(storage_timeout, self.storage.save_reply(&reply, &fence))
                    .await;
            match saved {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(request = %id, %address, %error, "saving a stream chunk failed; the stream will resume elsewhere");
                    return false;
                }
                Err(_) => {
                    tracing::warn!(request = %id, %address, "saving a stream chunk timed out; the stream will resume elsewhere");
                    return false;
                }
            }
            let StoredReplyKind::Chunk { values, .. } = reply.kind else {
                return false;
            };
            next += values.len() as u64;
            metrics::counter!("shoal_persisted_chunks_total").increment(1);
            if let Some(tx) = live {
                let chunk = Chunk {
                    reply_id: reply.id,
                    sequence,
                    values,
                };
                if tx.send(ReplyFrame::Chunk(chunk)).await.is_err() {
                    // The caller went away; the stream goes on in storage.
                    *live = None;
                }
            }
        }
        true
    }
}

/// The bytes of a streamed item (persisted requests travel encoded, so replies are encoded).
fn encoded_item(item: ReplyValue) -> bytes::Bytes {
    match item {
        ReplyValue::Encoded(bytes) => bytes,
        ReplyValue::Local(_) => bytes::Bytes::new(),
    }
}
