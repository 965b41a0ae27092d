//! The [`MessageStorage`] seam.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use shoal_protocol::{EntityAddress, RunnerAddress, ShardId, Snowflake};
use tokio::sync::broadcast;

use super::types::{
    Claim, ClaimedMessage, Fence, PersistedEnvelope, PersistedRequest, SaveResult, StoredReply,
};
use crate::error::StorageError;

/// Something changed in message storage (for wake-ups; polling stays the safety net).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageEvent {
    /// A message of this shard became claimable: a request or interrupt was saved without a
    /// claim, or claims were lifted. A request saved claimed (pushed to the runner that holds
    /// the claim) publishes nothing: no poller could take it, and waking the shard's owner for
    /// every pushed request would have it poll storage continuously under load.
    Saved {
        /// The shard.
        shard: ShardId,
    },
    /// A reply was saved for this request.
    Replied {
        /// The request.
        request_id: Snowflake,
    },
}

/// Durable requests, replies, stream chunks and control envelopes.
///
/// # Contract
///
/// - **Dedupe.** `save_request` with a `key` already present stores nothing and returns
///   [`SaveResult::Duplicate`] with the original's id and latest reply. Keys of any length work
///   ([`super::message_key`] hashes long ones). The same request saved again under its id is a
///   duplicate too; a *different* request under a stored id or key (another entity, message,
///   payload or key: two processes made the same id) is refused with
///   [`StorageError::Conflict`] and nothing is stored, so no caller ever gets another request's
///   reply.
/// - **Interrupts** are stored only for a stored request of the entity they name that is not
///   uninterruptible (else [`StorageError::Refused`]); they live in the request's shard.
/// - **Unprocessed** = a request without a final reply, or an interrupt of such a request. A
///   request is delivered again and again (at least once) until its final reply is saved.
/// - **Claims.** `claim_unprocessed` returns only unclaimed (or lapsed-claim), deliverable
///   (`deliver_at` passed, on the storage clock) messages of the given shards, oldest first, at
///   most `limit`, and claims them for `claim.duration`; two concurrent calls never return the
///   same message. `save_request` can claim the new request at once for the runner it will be
///   pushed to. `reset_shards` (called by a runner that just acquired shards), `reset_request`
///   and `reset_address` lift claims so messages are delivered again at once.
/// - **Replies.** `save_reply` of a final reply marks the request processed (it is no longer
///   claimed or delivered); a second final reply for the same request is ignored (the first one
///   stands). Chunks are stored with their sequence. `replies_for` returns, per request, its
///   final reply if any, and its unacknowledged chunks.
/// - **Fencing.** Writes a runner makes for a shard it owns (`save_reply`, chunk saves) carry a
///   [`Fence`]; storage refuses them with [`StorageError::Fenced`] when the shard's lease has a
///   newer epoch.
/// - **Events.** Implementations publish [`MessageEvent`]s to subscribers (in process; Postgres
///   across processes with `LISTEN/NOTIFY`). They are hints for waking up: consumers still poll.
/// - **Retention.** `sweep` deletes processed requests and their replies (and envelopes) older
///   than `older_than`, at most `limit` requests per call.
/// - Every call is bounded by a deadline ([`StorageError::Timeout`]).
#[async_trait]
pub trait MessageStorage: Send + Sync + 'static {
    /// Stores a request (or finds its duplicate), claimed for `claim.by` when given.
    async fn save_request(
        &self,
        request: &PersistedRequest,
        claim: Option<&Claim>,
    ) -> Result<SaveResult, StorageError>;

    /// Stores an interrupt or a chunk acknowledgement. An acknowledgement marks the chunk acked
    /// (a resumed stream starts after it).
    async fn save_envelope(&self, envelope: &PersistedEnvelope) -> Result<(), StorageError>;

    /// Stores a reply under `fence`. A final reply marks its request processed.
    async fn save_reply(&self, reply: &StoredReply, fence: &Fence) -> Result<(), StorageError>;

    /// The stored request `id` if it has no final reply yet. A runner that is pushed a
    /// persisted request reads it here and runs what storage holds, never what the pusher sent.
    async fn pending_request(
        &self,
        id: Snowflake,
    ) -> Result<Option<PersistedRequest>, StorageError>;

    /// The final replies and unacknowledged chunks of `requests`, chunks in sequence order.
    async fn replies_for(&self, requests: &[Snowflake]) -> Result<Vec<StoredReply>, StorageError>;

    /// Claims up to `limit` deliverable, unprocessed messages of `shards`, oldest first.
    async fn claim_unprocessed(
        &self,
        shards: &[ShardId],
        limit: usize,
        claim: &Claim,
    ) -> Result<Vec<ClaimedMessage>, StorageError>;

    /// The earliest `deliver_at` in the future among unprocessed requests of `shards` (to set a
    /// timer instead of waiting for the next poll).
    async fn next_deliver_at(&self, shards: &[ShardId])
    -> Result<Option<SystemTime>, StorageError>;

    /// Lifts every claim on unprocessed messages of `shards`.
    async fn reset_shards(&self, shards: &[ShardId]) -> Result<(), StorageError>;

    /// Lifts the claim on one request (its push to the owner failed: let any owner deliver it).
    async fn reset_request(&self, request_id: Snowflake) -> Result<(), StorageError>;

    /// Lifts claims held by `runner` (it restarted and forgot what it claimed).
    async fn reset_runner(&self, runner: &RunnerAddress) -> Result<(), StorageError>;

    /// Lifts claims on unprocessed messages of one entity.
    async fn reset_address(&self, address: &EntityAddress) -> Result<(), StorageError>;

    /// Deletes every message and reply of one entity.
    async fn clear_address(&self, address: &EntityAddress) -> Result<(), StorageError>;

    /// Deletes processed requests older than `older_than` (with their replies and envelopes), at
    /// most `limit` requests; returns how many were deleted.
    async fn sweep(&self, older_than: Duration, limit: usize) -> Result<usize, StorageError>;

    /// Subscribes to [`MessageEvent`]s.
    fn subscribe(&self) -> broadcast::Receiver<MessageEvent>;

    /// Whether the [`MessageEvent`]s of a save made by one process reach the subscribers of
    /// every other process using the same storage (Postgres `LISTEN/NOTIFY` does; a SQLite file
    /// shared by processes on one machine does not; memory storage is used by one process only,
    /// so its events reach everyone who can use it). When they do not, a runtime that saves a
    /// message for a shard another runner owns wakes that runner itself.
    fn events_reach_other_processes(&self) -> bool {
        false
    }
}
