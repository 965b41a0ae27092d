//! The caller's side of a persisted stream: each item is stored before the caller sees it, so a
//! stream whose owner dies continues from the new owner's run without losing or repeating items.
//!
//! The caller follows the run it started (the chunks it stores, as they are stored) while it can,
//! and reads storage otherwise (woken by reply events, polling as a safety net). It counts items
//! by their position in the stream, so a chunk seen twice (live, then in storage; or stored again
//! by a rerun) is passed on once. Each chunk received is acknowledged in storage, in the
//! background: storage then stops returning it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use shoal_protocol::{EntityAddress, ReplyFrame, Snowflake};
use shoal_storage::{
    EnvelopeKind, MessageEvent, PersistedEnvelope, SaveResult, StoredReply, StoredReplyKind,
};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};
use tokio::time::{Instant, sleep_until, timeout_at};

use super::Persistence;
use super::process::{StreamRun, is_final};
use super::send::{Saved, Target, persisted_wire};
use crate::entity::ReplyValue;
use crate::error::CallError;
use crate::router::Router;
use crate::router::dispatch::ReplyItems;
use crate::router::outgoing::Outgoing;

/// Live frames buffered between the owner's run and the caller.
const LIVE_BUFFER: usize = 32;

impl Router {
    /// Sends a persisted streaming request. The stream yields every item once, in order, even
    /// when the owner dies mid-stream (the new owner resumes after the stored items); it fails
    /// with a timeout when no item arrives within the call's timeout (the request stays stored
    /// and keeps running).
    pub(crate) async fn call_persisted_stream(
        &self,
        mut out: Outgoing,
    ) -> Result<ReplyItems, CallError> {
        let persistence = self.persistence_of(&out)?.clone();
        // Subscribe before saving, so no reply event of this request is missed.
        let events = persistence.storage.subscribe();
        let deadline = Instant::now() + out.timeout;
        let Saved {
            id,
            payload,
            target,
            result,
        } = self.save_persisted(&persistence, &mut out, true).await?;
        let (id, live) = match result {
            // A duplicate continues where its original's caller stopped acknowledging.
            SaveResult::Duplicate { original_id, .. } => (original_id, None),
            SaveResult::Saved => (id, self.follow(id, &out, target, payload, deadline).await),
        };
        let (acks, acked) = mpsc::unbounded_channel();
        tokio::spawn(acknowledge(
            persistence.clone(),
            out.address.clone(),
            id,
            acked,
        ));
        let reader = Reader {
            persistence,
            address: out.address.clone(),
            id,
            idle: out.timeout,
            live,
            events,
            next: 0,
            last_progress: Instant::now(),
            pending: VecDeque::new(),
            done: false,
            acks,
        };
        Ok(futures::stream::unfold(reader, |mut reader| async move {
            reader.next().await.map(|item| (item, reader))
        })
        .boxed())
    }

    /// Starts the first run of a stream just saved and returns its live frames (`None`: the
    /// caller reads storage from the start).
    async fn follow(
        &self,
        id: Snowflake,
        out: &Outgoing,
        target: Target,
        payload: Bytes,
        deadline: Instant,
    ) -> Option<BoxStream<'static, ReplyFrame>> {
        match target {
            Target::Here => {
                let (tx, rx) = mpsc::channel(LIVE_BUFFER);
                let run = StreamRun {
                    resume: 0,
                    live: Some(tx),
                };
                if let Some(persistence) = self.persistence() {
                    drop(persistence.spawn_persisted(id, out.clone_encoded(), Some(run)));
                }
                Some(receiver_stream(rx))
            }
            Target::Owner(owner) => {
                let request = persisted_wire(id, out, payload, deadline, true);
                match timeout_at(deadline, self.transport().send_stream(&owner, request)).await {
                    Ok(Ok(frames)) => Some(
                        frames
                            .scan((), |_, frame| futures::future::ready(frame.ok()))
                            .boxed(),
                    ),
                    _ => {
                        self.release_claim(id).await;
                        None
                    }
                }
            }
            Target::Later => {
                if let Some(persistence) = self.persistence() {
                    self.wake_later(persistence, id, out, payload, deadline, true);
                }
                None
            }
        }
    }
}

fn receiver_stream(mut rx: mpsc::Receiver<ReplyFrame>) -> BoxStream<'static, ReplyFrame> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// Acknowledges received chunks in storage, the latest one of each burst.
async fn acknowledge(
    persistence: Arc<Persistence>,
    address: EntityAddress,
    request_id: Snowflake,
    mut acked: mpsc::UnboundedReceiver<Snowflake>,
) {
    let timeout = persistence.storage_timeout();
    while let Some(mut reply_id) = acked.recv().await {
        while let Ok(newer) = acked.try_recv() {
            reply_id = newer;
        }
        let Ok(id) = persistence.identity().next_id() else {
            // Unacknowledged chunks are only read again; the caller skips what it has.
            continue;
        };
        let envelope = PersistedEnvelope {
            id,
            request_id,
            address: address.clone(),
            kind: EnvelopeKind::AckChunk { reply_id },
        };
        match tokio::time::timeout(timeout, persistence.storage.save_envelope(&envelope)).await {
            Ok(Ok(())) => {}
            // Unacknowledged chunks are only read again; the caller skips what it has.
            Ok(Err(error)) => {
                tracing::debug!(request = %request_id, %error, "acknowledging a chunk failed");
            }
            Err(_) => tracing::debug!(request = %request_id, "acknowledging a chunk timed out"),
        }
    }
}

/// Reads one persisted stream for its caller.
struct Reader {
    persistence: Arc<Persistence>,
    address: EntityAddress,
    id: Snowflake,
    /// The longest wait for the next item.
    idle: Duration,
    /// The run this caller started, while it is followed.
    live: Option<BoxStream<'static, ReplyFrame>>,
    events: broadcast::Receiver<MessageEvent>,
    /// The position of the next item to pass on.
    next: u64,
    last_progress: Instant,
    pending: VecDeque<Result<ReplyValue, CallError>>,
    done: bool,
    acks: mpsc::UnboundedSender<Snowflake>,
}

impl Reader {
    async fn next(&mut self) -> Option<Result<ReplyValue, CallError>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            let deadline = self.last_progress + self.idle;
            match self.live.as_mut() {
                Some(live) => match timeout_at(deadline, live.next()).await {
                    Err(_) => self.time_out(),
                    Ok(Some(ReplyFrame::Chunk(chunk))) => {
                        // A gap (this run resumed after items stored earlier): storage has them.
                        if u64::from(chunk.sequence) > self.next {
                            self.read_storage_from_now().await;
                        } else {
                            self.accept(chunk.reply_id, chunk.sequence, chunk.values);
                        }
                    }
                    Ok(Some(ReplyFrame::Failure(failure))) if !is_final(failure.code) => {
                        self.read_storage_from_now().await;
                    }
                    Ok(Some(frame)) => self.finish(frame),
                    // The run ended without settling here (the owner died, the shard moved).
                    Ok(None) => self.read_storage_from_now().await,
                },
                None => self.read_storage(deadline).await,
            }
        }
    }

    /// Stops following the run: the rest comes from storage. Lifts the claim the caller took
    /// for that run, so the shard's owner takes the request again at once.
    async fn read_storage_from_now(&mut self) {
        if self.live.take().is_some() {
            self.persistence.release_claim(self.id).await;
            self.persistence.wake.notify_one();
        }
    }

    /// Passes on the items of a chunk not seen yet and acknowledges it.
    fn accept(&mut self, reply_id: Snowflake, sequence: u32, values: Vec<Bytes>) {
        let start = u64::from(sequence);
        let end = start + values.len() as u64;
        if end <= self.next {
            return;
        }
        // `start` may lie beyond `next` in storage only when another caller (a duplicate of this
        // request) acknowledged the chunks in between: continue from there.
        let skip = self.next.saturating_sub(start);
        for value in values
            .into_iter()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
        {
            self.pending.push_back(Ok(ReplyValue::Encoded(value)));
        }
        self.next = end;
        self.last_progress = Instant::now();
        let _ = self.acks.send(reply_id);
    }

    fn finish(&mut self, frame: ReplyFrame) {
        self.done = true;
        self.live = None;
        if let ReplyFrame::Failure(failure) = frame {
            self.pending.push_back(Err(CallError::from_failure(
                self.address.clone(),
                failure,
                self.id,
            )));
        }
    }

    fn time_out(&mut self) {
        self.done = true;
        self.live = None;
        self.pending
            .push_back(Err(CallError::timed_out(&self.address, self.idle)));
    }

    /// Reads the unacknowledged chunks and final reply from storage; when nothing new is there,
    /// waits for a reply event or the next poll.
    async fn read_storage(&mut self, deadline: Instant) {
        let storage_timeout = self.persistence.storage_timeout();
        let read = tokio::time::timeout(
            storage_timeout,
            self.persistence.storage.replies_for(&[self.id]),
        )
        .await;
        match read {
            Ok(Ok(replies)) => {
                let before = self.next;
                let mut last = None;
                for StoredReply { id, kind, .. } in replies {
                    match kind {
                        StoredReplyKind::Chunk {
                            sequence, values, ..
                        } => self.accept(id, sequence, values),
                        StoredReplyKind::Final(frame) => last = Some(frame),
                    }
                }
                if let Some(frame) = last {
                    self.finish(frame);
                    return;
                }
                if self.next > before {
                    return;
                }
            }
            Ok(Err(error)) => {
                tracing::debug!(request = %self.id, %error, "reading a persisted stream failed; retrying");
            }
            Err(_) => tracing::debug!(request = %self.id, "reading a persisted stream timed out"),
        }
        if Instant::now() >= deadline {
            self.time_out();
            return;
        }
        let poll = (Instant::now() + self.persistence.settings.reply_poll_interval).min(deadline);
        loop {
            tokio::select! {
                event = self.events.recv() => match event {
                    Ok(MessageEvent::Replied { request_id }) if request_id == self.id => return,
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => return,
                    Err(RecvError::Closed) => {
                        sleep_until(poll).await;
                        return;
                    }
                },
                _ = sleep_until(poll) => return,
            }
        }
    }
}
