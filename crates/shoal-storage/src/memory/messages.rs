//! In-memory [`MessageStorage`] with real claim, dedupe, reply and fencing semantics.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use shoal_protocol::{EntityAddress, ReplyFrame, RunnerAddress, ShardId, Snowflake};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::runner::MemoryRunnerStorage;
use crate::error::StorageError;
use crate::messages::checks::{
    RequestView, check_envelope_id, check_interrupt, check_reply, duplicate_or_conflict, stored_key,
};
use crate::messages::{
    Claim, ClaimedMessage, EnvelopeKind, Fence, MessageEvent, MessageStorage, PersistedEnvelope,
    PersistedRequest, SaveResult, StoredReply, StoredReplyKind,
};

/// How many events a slow subscriber may fall behind before it sees
/// [`broadcast::error::RecvError::Lagged`].
const EVENT_CAPACITY: usize = 4096;

/// Durable-message semantics held in process memory: dedupe by key, claims that lapse, final
/// replies that mark requests processed, chunks and acknowledgements, fencing against the shard
/// epochs of a [`MemoryRunnerStorage`], events, and retention. Nothing survives the process.
///
/// The clock is tokio's: claims lapse and `deliver_at` times arrive as tokio time advances, so
/// tests can pause and advance time (`tokio::time::pause`). Wall-clock times (`deliver_at`,
/// [`MessageStorage::next_deliver_at`]) are read as the wall-clock time at construction plus the
/// tokio time elapsed since.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use bytes::Bytes;
/// use shoal_protocol::{EntityAddress, Headers, Snowflake};
/// use shoal_storage::{
///     Claim, MemoryMessageStorage, MemoryRunnerStorage, MessageStorage, PersistedRequest,
///     SaveResult,
/// };
///
/// let storage = MemoryMessageStorage::new(Arc::new(MemoryRunnerStorage::new()));
/// let address = EntityAddress::new("default:3".parse()?, "counter".parse()?, "a".parse()?);
/// let request = PersistedRequest {
///     id: Snowflake::from_raw(1),
///     address: address.clone(),
///     tag: "increment".parse()?,
///     payload: Bytes::from_static(b"{}"),
///     headers: Headers::new(),
///     key: None,
///     deliver_at: None,
///     streaming: false,
///     uninterruptible: false,
/// };
/// assert_eq!(storage.save_request(&request, None).await?, SaveResult::Saved);
/// let claim = Claim { by: "127.0.0.1:4000".parse()?, duration: Duration::from_secs(30) };
/// let claimed = storage.claim_unprocessed(&[address.shard.clone()], 10, &claim).await?;
/// assert_eq!(claimed.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct MemoryMessageStorage {
    runners: Arc<MemoryRunnerStorage>,
    state: Mutex<State>,
    events: broadcast::Sender<MessageEvent>,
    clock: Clock,
}

/// Wall-clock time that follows tokio's clock.
#[derive(Debug)]
struct Clock {
    wall: SystemTime,
    mono: Instant,
}

impl Clock {
    fn new() -> Self {
        Self {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }

    fn wall_at(&self, at: Instant) -> SystemTime {
        self.wall + at.saturating_duration_since(self.mono)
    }
}

#[derive(Debug, Default)]
struct State {
    next_seq: u64,
    /// Every message by insertion sequence.
    rows: HashMap<u64, Row>,
    /// Sequences of unprocessed messages, oldest first.
    unprocessed: BTreeSet<u64>,
    /// Message id (request or envelope) to sequence.
    by_id: HashMap<Snowflake, u64>,
    /// Stored deduplication key to sequence.
    by_key: HashMap<String, u64>,
    /// Interrupt sequences by request id.
    envelopes: HashMap<Snowflake, Vec<u64>>,
    /// Replies by request id.
    replies: HashMap<Snowflake, Replies>,
}

#[derive(Debug)]
enum Body {
    Request(Box<PersistedRequest>),
    Interrupt(PersistedEnvelope),
}

#[derive(Debug)]
struct Row {
    body: Body,
    claim: Option<(RunnerAddress, Instant)>,
    processed_at: Option<Instant>,
}

impl Row {
    fn address(&self) -> &EntityAddress {
        match &self.body {
            Body::Request(request) => &request.address,
            Body::Interrupt(envelope) => &envelope.address,
        }
    }

    fn request_id(&self) -> Snowflake {
        match &self.body {
            Body::Request(request) => request.id,
            Body::Interrupt(envelope) => envelope.request_id,
        }
    }

    fn key(&self) -> Option<&str> {
        match &self.body {
            Body::Request(request) => request.key.as_deref(),
            Body::Interrupt(_) => None,
        }
    }

    fn claimable(&self, now: Instant, wall_now: SystemTime) -> bool {
        let unclaimed = self.claim.as_ref().is_none_or(|(_, until)| *until <= now);
        let due = match &self.body {
            Body::Request(request) => request.deliver_at.is_none_or(|at| at <= wall_now),
            Body::Interrupt(_) => true,
        };
        self.processed_at.is_none() && unclaimed && due
    }
}

#[derive(Debug, Default)]
struct Replies {
    final_reply: Option<(Snowflake, ReplyFrame)>,
    chunks: BTreeMap<u32, ChunkRow>,
}

#[derive(Debug)]
struct ChunkRow {
    id: Snowflake,
    values: Vec<Bytes>,
    acked: bool,
}

impl Replies {
    /// Whether a reply with this id is stored for the request (reply ids are unique per request:
    /// two processes may make the same id for replies of different requests).
    fn has_id(&self, id: Snowflake) -> bool {
        self.final_reply.as_ref().is_some_and(|(f, _)| *f == id)
            || self.chunks.values().any(|c| c.id == id)
    }

    fn final_reply(&self, request_id: Snowflake) -> Option<StoredReply> {
        self.final_reply.as_ref().map(|(id, frame)| StoredReply {
            id: *id,
            request_id,
            kind: StoredReplyKind::Final(frame.clone()),
        })
    }

    fn chunk(request_id: Snowflake, sequence: u32, row: &ChunkRow) -> StoredReply {
        StoredReply {
            id: row.id,
            request_id,
            kind: StoredReplyKind::Chunk {
                sequence,
                values: row.values.clone(),
                acked: row.acked,
            },
        }
    }

    /// The final reply, else the last chunk.
    fn latest(&self, request_id: Snowflake) -> Option<StoredReply> {
        self.final_reply(request_id).or_else(|| {
            self.chunks
                .iter()
                .next_back()
                .map(|(sequence, row)| Self::chunk(request_id, *sequence, row))
        })
    }

    /// The acknowledged chunk with the highest sequence.
    fn last_acked(&self, request_id: Snowflake) -> Option<StoredReply> {
        self.chunks
            .iter()
            .rev()
            .find(|(_, row)| row.acked)
            .map(|(sequence, row)| Self::chunk(request_id, *sequence, row))
    }
}

impl State {
    fn request_seq(&self, id: Snowflake) -> Option<u64> {
        let seq = *self.by_id.get(&id)?;
        match self.rows.get(&seq)?.body {
            Body::Request(_) => Some(seq),
            Body::Interrupt(_) => None,
        }
    }

    fn duplicate(&self, seq: u64) -> SaveResult {
        let original_id = self
            .rows
            .get(&seq)
            .map_or(Snowflake::from_raw(0), Row::request_id);
        SaveResult::Duplicate {
            original_id,
            last_reply: self
                .replies
                .get(&original_id)
                .and_then(|r| r.latest(original_id)),
        }
    }

    fn insert(&mut self, id: Snowflake, row: Row) -> u64 {
        self.next_seq += 1;
        let seq = self.next_seq;
        if row.processed_at.is_none() {
            self.unprocessed.insert(seq);
        }
        if let Some(key) = row.key() {
            self.by_key.insert(key.to_owned(), seq);
        }
        if let Body::Interrupt(envelope) = &row.body {
            self.envelopes
                .entry(envelope.request_id)
                .or_default()
                .push(seq);
        }
        self.by_id.insert(id, seq);
        self.rows.insert(seq, row);
        seq
    }

    /// Marks a request and its interrupts processed.
    fn mark_processed(&mut self, request_seq: u64, request_id: Snowflake, now: Instant) {
        let envelopes = self.envelopes.get(&request_id).cloned().unwrap_or_default();
        for seq in std::iter::once(request_seq).chain(envelopes) {
            if let Some(row) = self.rows.get_mut(&seq)
                && row.processed_at.is_none()
            {
                row.processed_at = Some(now);
                row.claim = None;
                self.unprocessed.remove(&seq);
            }
        }
    }

    /// Removes a request with its interrupts and replies.
    fn remove_request(&mut self, request_seq: u64) {
        let Some(row) = self.rows.get(&request_seq) else {
            return;
        };
        let request_id = row.request_id();
        let envelopes = self.envelopes.remove(&request_id).unwrap_or_default();
        for seq in std::iter::once(request_seq).chain(envelopes) {
            self.remove_row(seq);
        }
        self.replies.remove(&request_id);
    }

    fn remove_row(&mut self, seq: u64) {
        let Some(row) = self.rows.remove(&seq) else {
            return;
        };
        self.unprocessed.remove(&seq);
        if let Some(key) = row.key() {
            self.by_key.remove(key);
        }
        match &row.body {
            Body::Request(request) => {
                self.by_id.remove(&request.id);
            }
            Body::Interrupt(envelope) => {
                self.by_id.remove(&envelope.id);
                if let Some(list) = self.envelopes.get_mut(&envelope.request_id) {
                    list.retain(|s| *s != seq);
                }
            }
        }
    }

    /// Lifts the claims of the unprocessed messages `select` picks; returns their shards.
    fn reset(&mut self, mut select: impl FnMut(&Row) -> bool) -> BTreeSet<ShardId> {
        let mut shards = BTreeSet::new();
        for seq in &self.unprocessed {
            if let Some(row) = self.rows.get_mut(seq)
                && select(row)
            {
                row.claim = None;
                shards.insert(row.address().shard.clone());
            }
        }
        shards
    }
}

impl MemoryMessageStorage {
    /// Empty message storage fenced by the leases of `runners`.
    pub fn new(runners: Arc<MemoryRunnerStorage>) -> Self {
        Self {
            runners,
            state: Mutex::new(State::default()),
            events: broadcast::channel(EVENT_CAPACITY).0,
            clock: Clock::new(),
        }
    }

    /// The runner storage whose shard epochs fence replies.
    pub fn runner_storage(&self) -> &Arc<MemoryRunnerStorage> {
        &self.runners
    }

    /// How many messages (requests and interrupts, processed or not) are stored.
    pub fn len(&self) -> usize {
        self.state.lock().rows.len()
    }

    /// Whether no message is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn publish(&self, events: impl IntoIterator<Item = MessageEvent>) {
        for event in events {
            // No subscriber is not an error: events are hints.
            let _ = self.events.send(event);
        }
    }

    fn publish_shards(&self, shards: BTreeSet<ShardId>) {
        self.publish(
            shards
                .into_iter()
                .map(|shard| MessageEvent::Saved { shard }),
        );
    }
}

#[async_trait]
impl MessageStorage for MemoryMessageStorage {
    async fn save_request(
        &self,
        request: &PersistedRequest,
        claim: Option<&Claim>,
    ) -> Result<SaveResult, StorageError> {
        let now = Instant::now();
        let key = request.key.as_deref().map(|k| stored_key(k).into_owned());
        {
            let mut state = self.state.lock();
            let new = RequestView {
                key: key.as_deref(),
                entity_type: request.address.entity_type.as_str(),
                entity_id: request.address.entity_id.as_str(),
                tag: request.tag.as_str(),
                payload: &request.payload,
            };
            let existing = match key.as_ref().and_then(|k| state.by_key.get(k)) {
                Some(seq) => Some((*seq, true)),
                None => state.by_id.get(&request.id).map(|seq| (*seq, false)),
            };
            if let Some((seq, same_key)) = existing {
                match state.rows.get(&seq).map(|row| &row.body) {
                    Some(Body::Request(stored)) => {
                        let stored = RequestView {
                            key: stored.key.as_deref(),
                            entity_type: stored.address.entity_type.as_str(),
                            entity_id: stored.address.entity_id.as_str(),
                            tag: stored.tag.as_str(),
                            payload: &stored.payload,
                        };
                        duplicate_or_conflict(&new, &stored, same_key)?;
                    }
                    _ => {
                        return Err(StorageError::Conflict {
                            operation: "save_request",
                            detail: format!(
                                "its id {} is already used by an interrupt (two processes made \
                                 the same id: make a new id and save again)",
                                request.id
                            ),
                        });
                    }
                }
                return Ok(state.duplicate(seq));
            }
            let mut stored = request.clone();
            stored.key = key;
            state.insert(
                request.id,
                Row {
                    body: Body::Request(Box::new(stored)),
                    claim: claim.map(|c| (c.by.clone(), now + c.duration)),
                    processed_at: None,
                },
            );
        }
        if claim.is_none() {
            self.publish([MessageEvent::Saved {
                shard: request.address.shard.clone(),
            }]);
        }
        Ok(SaveResult::Saved)
    }

    async fn save_envelope(&self, envelope: &PersistedEnvelope) -> Result<(), StorageError> {
        let mut state = self.state.lock();
        match envelope.kind {
            EnvelopeKind::AckChunk { reply_id } => {
                if let Some(replies) = state.replies.get_mut(&envelope.request_id)
                    && let Some(chunk) = replies.chunks.values_mut().find(|c| c.id == reply_id)
                {
                    chunk.acked = true;
                }
                Ok(())
            }
            EnvelopeKind::Interrupt => {
                // An interrupt of a request storage does not hold (never persisted, cleared or
                // swept) has nothing to interrupt; a repeated envelope is stored once.
                let Some(request_seq) = state.request_seq(envelope.request_id) else {
                    return Ok(());
                };
                let Some(row) = state.rows.get(&request_seq) else {
                    return Ok(());
                };
                if let Body::Request(request) = &row.body {
                    check_interrupt(
                        envelope,
                        &request.address.shard.to_string(),
                        request.address.entity_type.as_str(),
                        request.address.entity_id.as_str(),
                        request.uninterruptible,
                    )?;
                }
                if let Some(seq) = state.by_id.get(&envelope.id) {
                    let holder = state.rows.get(seq).and_then(|row| match &row.body {
                        Body::Interrupt(stored) => Some(stored.request_id),
                        Body::Request(_) => None,
                    });
                    return check_envelope_id(envelope, holder);
                }
                let processed_at = state.rows.get(&request_seq).and_then(|r| r.processed_at);
                state.insert(
                    envelope.id,
                    Row {
                        body: Body::Interrupt(envelope.clone()),
                        claim: None,
                        processed_at,
                    },
                );
                drop(state);
                if processed_at.is_none() {
                    self.publish([MessageEvent::Saved {
                        shard: envelope.address.shard.clone(),
                    }]);
                }
                Ok(())
            }
        }
    }

    async fn save_reply(&self, reply: &StoredReply, fence: &Fence) -> Result<(), StorageError> {
        check_reply("save_reply", reply)?;
        let now = Instant::now();
        let stored = self.runners.with_epochs(|epoch_of| {
            if let Some(current) = epoch_of(&fence.shard)
                && current > fence.epoch
            {
                return Err(StorageError::Fenced {
                    shard: fence.shard.clone(),
                    epoch: fence.epoch.0,
                    current: current.0,
                });
            }
            let mut state = self.state.lock();
            let Some(request_seq) = state.request_seq(reply.request_id) else {
                // The request is gone (cleared or swept) or was never persisted.
                return Ok(false);
            };
            let replies = state.replies.entry(reply.request_id).or_default();
            if replies.has_id(reply.id) {
                return Ok(false);
            }
            match &reply.kind {
                StoredReplyKind::Final(frame) => {
                    if replies.final_reply.is_some() {
                        return Ok(false);
                    }
                    replies.final_reply = Some((reply.id, frame.clone()));
                    state.mark_processed(request_seq, reply.request_id, now);
                }
                StoredReplyKind::Chunk {
                    sequence,
                    values,
                    acked,
                } => {
                    if replies.chunks.contains_key(sequence) {
                        return Ok(false);
                    }
                    replies.chunks.insert(
                        *sequence,
                        ChunkRow {
                            id: reply.id,
                            values: values.clone(),
                            acked: *acked,
                        },
                    );
                }
            }
            Ok(true)
        })?;
        if stored {
            self.publish([MessageEvent::Replied {
                request_id: reply.request_id,
            }]);
        }
        Ok(())
    }

    async fn pending_request(
        &self,
        id: Snowflake,
    ) -> Result<Option<PersistedRequest>, StorageError> {
        let state = self.state.lock();
        let Some(seq) = state.request_seq(id) else {
            return Ok(None);
        };
        Ok(state.rows.get(&seq).and_then(|row| match &row.body {
            Body::Request(request) if row.processed_at.is_none() => Some((**request).clone()),
            _ => None,
        }))
    }

    async fn replies_for(&self, requests: &[Snowflake]) -> Result<Vec<StoredReply>, StorageError> {
        let state = self.state.lock();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for request_id in requests {
            if !seen.insert(*request_id) {
                continue;
            }
            let Some(replies) = state.replies.get(request_id) else {
                continue;
            };
            out.extend(
                replies
                    .chunks
                    .iter()
                    .filter(|(_, row)| !row.acked)
                    .map(|(sequence, row)| Replies::chunk(*request_id, *sequence, row)),
            );
            out.extend(replies.final_reply(*request_id));
        }
        Ok(out)
    }

    async fn claim_unprocessed(
        &self,
        shards: &[ShardId],
        limit: usize,
        claim: &Claim,
    ) -> Result<Vec<ClaimedMessage>, StorageError> {
        if limit == 0 || shards.is_empty() {
            return Ok(Vec::new());
        }
        let now = Instant::now();
        let wall_now = self.clock.wall_at(now);
        let shards: HashSet<&ShardId> = shards.iter().collect();
        let mut state = self.state.lock();
        let picked: Vec<u64> = state
            .unprocessed
            .iter()
            .filter(|seq| {
                state.rows.get(seq).is_some_and(|row| {
                    shards.contains(&row.address().shard) && row.claimable(now, wall_now)
                })
            })
            .take(limit)
            .copied()
            .collect();
        let mut claimed = Vec::with_capacity(picked.len());
        for seq in picked {
            let Some(row) = state.rows.get_mut(&seq) else {
                continue;
            };
            row.claim = Some((claim.by.clone(), now + claim.duration));
            let message = match &row.body {
                Body::Request(request) => ClaimedMessage::Request {
                    request: request.clone(),
                    last_acked_chunk: None,
                },
                Body::Interrupt(envelope) => ClaimedMessage::Envelope(envelope.clone()),
            };
            claimed.push(message);
        }
        for message in &mut claimed {
            if let ClaimedMessage::Request {
                request,
                last_acked_chunk,
            } = message
            {
                *last_acked_chunk = state
                    .replies
                    .get(&request.id)
                    .and_then(|r| r.last_acked(request.id));
            }
        }
        Ok(claimed)
    }

    async fn next_deliver_at(
        &self,
        shards: &[ShardId],
    ) -> Result<Option<SystemTime>, StorageError> {
        let wall_now = self.clock.wall_at(Instant::now());
        let shards: HashSet<&ShardId> = shards.iter().collect();
        let state = self.state.lock();
        Ok(state
            .unprocessed
            .iter()
            .filter_map(|seq| state.rows.get(seq))
            .filter(|row| shards.contains(&row.address().shard))
            .filter_map(|row| match &row.body {
                Body::Request(request) => request.deliver_at.filter(|at| *at > wall_now),
                Body::Interrupt(_) => None,
            })
            .min())
    }

    async fn reset_shards(&self, shards: &[ShardId]) -> Result<(), StorageError> {
        let shards: HashSet<&ShardId> = shards.iter().collect();
        // No event: the caller just acquired these shards and reads them next.
        self.state
            .lock()
            .reset(|row| shards.contains(&row.address().shard));
        Ok(())
    }

    async fn reset_request(&self, request_id: Snowflake) -> Result<(), StorageError> {
        let shards = self
            .state
            .lock()
            .reset(|row| row.request_id() == request_id);
        self.publish_shards(shards);
        Ok(())
    }

    async fn reset_runner(&self, runner: &RunnerAddress) -> Result<(), StorageError> {
        let shards = self
            .state
            .lock()
            .reset(|row| row.claim.as_ref().is_some_and(|(by, _)| by == runner));
        self.publish_shards(shards);
        Ok(())
    }

    async fn reset_address(&self, address: &EntityAddress) -> Result<(), StorageError> {
        let shards = self.state.lock().reset(|row| {
            let a = row.address();
            a.entity_type == address.entity_type && a.entity_id == address.entity_id
        });
        self.publish_shards(shards);
        Ok(())
    }

    async fn clear_address(&self, address: &EntityAddress) -> Result<(), StorageError> {
        let mut state = self.state.lock();
        let (requests, envelopes): (Vec<u64>, Vec<u64>) = state
            .rows
            .iter()
            .filter(|(_, row)| {
                let a = row.address();
                a.entity_type == address.entity_type && a.entity_id == address.entity_id
            })
            .map(|(seq, row)| (*seq, matches!(row.body, Body::Request(_))))
            .fold(
                (Vec::new(), Vec::new()),
                |(mut r, mut e), (seq, is_request)| {
                    if is_request {
                        r.push(seq)
                    } else {
                        e.push(seq)
                    }
                    (r, e)
                },
            );
        for seq in requests {
            state.remove_request(seq);
        }
        for seq in envelopes {
            state.remove_row(seq);
        }
        Ok(())
    }

    async fn sweep(&self, older_than: Duration, limit: usize) -> Result<usize, StorageError> {
        let now = Instant::now();
        let mut state = self.state.lock();
        let mut old: Vec<u64> = state
            .rows
            .iter()
            .filter(|(_, row)| {
                matches!(row.body, Body::Request(_))
                    && row
                        .processed_at
                        .is_some_and(|at| now.saturating_duration_since(at) >= older_than)
            })
            .map(|(seq, _)| *seq)
            .collect();
        old.sort_unstable();
        old.truncate(limit);
        for seq in &old {
            state.remove_request(*seq);
        }
        Ok(old.len())
    }

    fn subscribe(&self) -> broadcast::Receiver<MessageEvent> {
        self.events.subscribe()
    }

    /// Only runtimes of this process share it, and each save reaches all of their subscribers.
    fn events_reach_other_processes(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use shoal_protocol::Headers;

    use super::*;

    fn request(id: u64, deliver_at: Option<SystemTime>) -> PersistedRequest {
        PersistedRequest {
            id: Snowflake::from_raw(id),
            address: EntityAddress::new(
                "default:1".parse().unwrap(),
                "counter".parse().unwrap(),
                "a".parse().unwrap(),
            ),
            tag: "increment".parse().unwrap(),
            payload: Bytes::from_static(b"1"),
            headers: Headers::new(),
            key: None,
            deliver_at,
            streaming: false,
            uninterruptible: false,
        }
    }

    /// Claims and schedules follow tokio's clock, so a paused clock drives them.
    #[tokio::test(start_paused = true)]
    async fn claims_and_schedules_follow_tokio_time() {
        let storage = MemoryMessageStorage::new(Arc::new(MemoryRunnerStorage::new()));
        let shards = ["default:1".parse().unwrap()];
        let claim = Claim {
            by: "127.0.0.1:1".parse().unwrap(),
            duration: Duration::from_secs(60),
        };
        let later = storage.clock.wall_at(Instant::now()) + Duration::from_secs(3600);
        storage.save_request(&request(1, None), None).await.unwrap();
        storage
            .save_request(&request(2, Some(later)), None)
            .await
            .unwrap();
        assert_eq!(
            storage
                .claim_unprocessed(&shards, 10, &claim)
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(storage.next_deliver_at(&shards).await.unwrap(), Some(later));

        tokio::time::advance(Duration::from_secs(61)).await;
        // The first claim lapsed; the scheduled one is not due yet.
        assert_eq!(
            storage
                .claim_unprocessed(&shards, 10, &claim)
                .await
                .unwrap()
                .len(),
            1
        );

        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(storage.next_deliver_at(&shards).await.unwrap(), None);
        assert_eq!(
            storage
                .claim_unprocessed(&shards, 10, &claim)
                .await
                .unwrap()
                .len(),
            2
        );
        assert_eq!(storage.len(), 2);
    }
}
