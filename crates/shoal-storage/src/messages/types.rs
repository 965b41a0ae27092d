//! Values kept by message storage.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use shoal_protocol::{EntityAddress, Headers, ReplyFrame, RunnerAddress, ShardId, Snowflake, Tag};

use crate::lease::Epoch;

/// When a message becomes deliverable (wall-clock time; `None`: at once).
pub type DeliverAt = Option<SystemTime>;

/// A persisted request: saved before it is delivered, redelivered until it has a final reply.
#[derive(Debug, Clone, PartialEq)]
pub struct PersistedRequest {
    /// The request id (a Snowflake, unique in the cluster).
    pub id: Snowflake,
    /// The entity it is for (its shard decides who processes it).
    pub address: EntityAddress,
    /// The message tag.
    pub tag: Tag,
    /// The encoded message.
    pub payload: Bytes,
    /// Caller metadata.
    pub headers: Headers,
    /// The deduplication key, when the message has a primary key (see [`message_key`]): a second
    /// save with the same key returns [`SaveResult::Duplicate`] instead of storing a new request.
    pub key: Option<String>,
    /// Do not deliver before this time.
    pub deliver_at: DeliverAt,
    /// The caller wants streamed replies (chunks, then a final reply).
    pub streaming: bool,
    /// Interrupts from the caller are ignored.
    pub uninterruptible: bool,
}

/// The deduplication key of a request with a primary key: the entity type, the entity id and the
/// tag, each preceded by its length in bytes and a colon, then the primary key
/// (`7:counter1:a9:incrementorder-1`), so that no two (type, id, tag, key) tuples share a key
/// whatever characters they contain. Replaced by its SHA-256 (hex, prefixed `sha256:`) when
/// longer than 255 bytes, so that keys of any length fit an indexed column (Effect #6317).
pub fn message_key(address: &EntityAddress, tag: &Tag, primary_key: &str) -> String {
    let (entity_type, entity_id, tag) = (
        address.entity_type.as_str(),
        address.entity_id.as_str(),
        tag.as_str(),
    );
    let key = format!(
        "{}:{entity_type}{}:{entity_id}{}:{tag}{primary_key}",
        entity_type.len(),
        entity_id.len(),
        tag.len()
    );
    super::checks::stored_key(&key).into_owned()
}

/// What kind of control envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeKind {
    /// Stop processing the request.
    Interrupt,
    /// The caller received the chunk `reply_id`: a resumed stream starts after it.
    AckChunk {
        /// The acknowledged chunk.
        reply_id: Snowflake,
    },
}

/// A control envelope about a persisted request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistedEnvelope {
    /// The envelope's own id.
    pub id: Snowflake,
    /// The request it concerns.
    pub request_id: Snowflake,
    /// The entity processing the request.
    pub address: EntityAddress,
    /// Interrupt or acknowledgement.
    pub kind: EnvelopeKind,
}

/// A reply as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReply {
    /// The reply's id (a Snowflake).
    pub id: Snowflake,
    /// The request answered.
    pub request_id: Snowflake,
    /// Final, or a chunk of a stream.
    pub kind: StoredReplyKind,
}

/// A final reply or a stream chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredReplyKind {
    /// The request's outcome: [`ReplyFrame::Value`], [`ReplyFrame::Failure`] or
    /// [`ReplyFrame::End`]. Saving it marks the request processed.
    Final(ReplyFrame),
    /// One chunk of a streamed reply.
    Chunk {
        /// Position in the stream, from 0. Unique per request.
        sequence: u32,
        /// The encoded values.
        values: Vec<Bytes>,
        /// Whether the caller acknowledged it.
        acked: bool,
    },
}

/// What [`crate::MessageStorage::save_request`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaveResult {
    /// The request is stored (it will be delivered until it has a final reply).
    Saved,
    /// A request with the same key exists: nothing was stored. `last_reply` is the original's
    /// final reply if it has one (return it to the caller without running the handler again),
    /// else its last stored chunk, if any (the stream continues from there), else `None` (the
    /// original is still pending: wait for its reply).
    Duplicate {
        /// The original request's id.
        original_id: Snowflake,
        /// Its latest reply.
        last_reply: Option<StoredReply>,
    },
}

/// A claim on a message: only the claimant delivers it until the claim lapses or is reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The runner that will deliver the message.
    pub by: RunnerAddress,
    /// How long the claim lasts (from the storage's clock at the time of the call).
    pub duration: Duration,
}

/// The shard lease under which a runner writes on behalf of a shard. Storage refuses the write
/// ([`crate::StorageError::Fenced`]) when the shard's lease has a newer epoch: the writer lost
/// the shard, and whatever it computed may conflict with the new owner's work.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fence {
    /// The shard.
    pub shard: ShardId,
    /// The epoch under which the writer holds it.
    pub epoch: Epoch,
}

/// A message claimed for delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimedMessage {
    /// A request without a final reply.
    Request {
        /// The request.
        request: Box<PersistedRequest>,
        /// For a streaming request being resumed: the last chunk the caller acknowledged
        /// (resume after its sequence).
        last_acked_chunk: Option<StoredReply>,
    },
    /// An interrupt of a request that has no final reply yet.
    Envelope(PersistedEnvelope),
}

impl ClaimedMessage {
    /// The entity the message is for.
    pub fn address(&self) -> &EntityAddress {
        match self {
            Self::Request { request, .. } => &request.address,
            Self::Envelope(envelope) => &envelope.address,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_keys_are_hashed() {
        let address = EntityAddress::new(
            "default:1".parse().unwrap(),
            "counter".parse().unwrap(),
            "a".parse().unwrap(),
        );
        let tag: Tag = "increment".parse().unwrap();
        assert_eq!(
            message_key(&address, &tag, "k1"),
            "7:counter1:a9:incrementk1"
        );
        let long = message_key(&address, &tag, &"x".repeat(400));
        assert!(long.starts_with("sha256:"));
        assert_eq!(long.len(), 7 + 64);
        assert_eq!(long, message_key(&address, &tag, &"x".repeat(400)));
        assert_ne!(long, message_key(&address, &tag, &"x".repeat(401)));
    }

    #[test]
    fn keys_of_different_entities_and_tags_never_collide() {
        let at = |id: &str| {
            EntityAddress::new(
                "default:1".parse().unwrap(),
                "counter".parse().unwrap(),
                id.parse().unwrap(),
            )
        };
        let tag: Tag = "increment".parse().unwrap();
        // Ids, tags and primary keys may contain the separator of a joined key.
        let a = message_key(&at("a/increment"), &tag, "k");
        let b = message_key(&at("a"), &tag, "increment/k");
        assert_ne!(a, b);
        let c = message_key(&at("a"), &tag, "k/");
        let d = message_key(&at("a"), &tag, "k");
        assert_ne!(c, d);
    }
}
