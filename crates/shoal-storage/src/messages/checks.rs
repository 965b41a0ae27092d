//! Normalisations and checks every backend applies the same way.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use super::types::{PersistedEnvelope, StoredReply, StoredReplyKind};
use crate::error::StorageError;

/// The longest deduplication key stored as it is; longer keys are stored as their digest.
pub(crate) const MAX_KEY_LEN: usize = 255;

/// A deduplication key as stored: itself when at most [`MAX_KEY_LEN`] bytes, else `sha256:`
/// followed by the hex SHA-256 of the key (71 bytes). Applying it twice changes nothing.
pub(crate) fn stored_key(key: &str) -> Cow<'_, str> {
    if key.len() <= MAX_KEY_LEN {
        return Cow::Borrowed(key);
    }
    let digest = Sha256::digest(key.as_bytes());
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256:");
    for byte in digest {
        use std::fmt::Write;
        let _ = write!(hex, "{byte:02x}");
    }
    Cow::Owned(hex)
}

/// Refuses a reply no backend can store: a final reply whose frame is a chunk.
pub(crate) fn check_reply(
    operation: &'static str,
    reply: &StoredReply,
) -> Result<(), StorageError> {
    match &reply.kind {
        StoredReplyKind::Final(frame) if !frame.is_final() => Err(StorageError::InvalidArgument {
            operation,
            detail: format!(
                "reply {} for request {} is marked final but carries a stream chunk; save chunks \
                 as StoredReplyKind::Chunk",
                reply.id, reply.request_id
            ),
        }),
        _ => Ok(()),
    }
}

/// The parts of a request that say which request it is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestView<'a> {
    /// The stored deduplication key (after [`stored_key`]).
    pub(crate) key: Option<&'a str>,
    pub(crate) entity_type: &'a str,
    pub(crate) entity_id: &'a str,
    pub(crate) tag: &'a str,
    pub(crate) payload: &'a [u8],
}

impl RequestView<'_> {
    fn describe(&self) -> String {
        format!(
            "{}/{} (message {:?})",
            self.entity_type, self.entity_id, self.tag
        )
    }
}

/// A request was saved under a key or an id storage already holds for `stored`. It is a
/// duplicate when it is the same request again (a retry), or, for a key, another request with
/// that primary key for the same entity and message (payloads may differ: the first one stands).
/// Anything else is a conflict: two processes made the same id, or two keys hashed alike.
pub(crate) fn duplicate_or_conflict(
    new: &RequestView<'_>,
    stored: &RequestView<'_>,
    same_key: bool,
) -> Result<(), StorageError> {
    let same_entity = new.entity_type == stored.entity_type
        && new.entity_id == stored.entity_id
        && new.tag == stored.tag;
    let same_request = same_key || (new.key == stored.key && new.payload == stored.payload);
    if same_entity && same_request {
        return Ok(());
    }
    Err(StorageError::Conflict {
        operation: "save_request",
        detail: if same_key {
            format!(
                "its deduplication key is stored for {}, not {}",
                stored.describe(),
                new.describe()
            )
        } else {
            format!(
                "its id is already used by another request, for {}; this one is for {}                  (two processes made the same id: make a new id and save again)",
                stored.describe(),
                new.describe()
            )
        },
    })
}

/// An interrupt may be stored only for an interruptible request of the entity it names.
/// `shard`, `entity_type` and `entity_id` are the stored request's.
pub(crate) fn check_interrupt(
    envelope: &PersistedEnvelope,
    shard: &str,
    entity_type: &str,
    entity_id: &str,
    uninterruptible: bool,
) -> Result<(), StorageError> {
    let named = &envelope.address;
    if named.shard.to_string() != shard
        || named.entity_type.as_str() != entity_type
        || named.entity_id.as_str() != entity_id
    {
        return Err(StorageError::Refused {
            operation: "save_envelope",
            reason: format!(
                "request {} belongs to {entity_type}/{entity_id}@{shard}, not to {named}; the \
                 interrupt was not stored",
                envelope.request_id
            ),
        });
    }
    if uninterruptible {
        return Err(StorageError::Refused {
            operation: "save_envelope",
            reason: format!(
                "request {} is uninterruptible; the interrupt was not stored",
                envelope.request_id
            ),
        });
    }
    Ok(())
}

/// An interrupt whose id is already stored: the same interrupt again is fine, anything else is a
/// conflict (two processes made the same id). `stored_request` is the request the stored row
/// with that id interrupts (`None`: the row is a request, not an interrupt).
pub(crate) fn check_envelope_id(
    envelope: &PersistedEnvelope,
    stored_request: Option<shoal_protocol::Snowflake>,
) -> Result<(), StorageError> {
    if stored_request == Some(envelope.request_id) {
        return Ok(());
    }
    Err(StorageError::Conflict {
        operation: "save_envelope",
        detail: format!(
            "id {} is already used by another message (two processes made the same id: make a \
             new id and save again)",
            envelope.id
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_stay_long_keys_hash_once() {
        assert_eq!(stored_key("a/b/c/1"), "a/b/c/1");
        let exact = "k".repeat(MAX_KEY_LEN);
        assert_eq!(stored_key(&exact), exact.as_str());
        let long = "k".repeat(MAX_KEY_LEN + 1);
        let hashed = stored_key(&long).into_owned();
        assert!(hashed.starts_with("sha256:"));
        assert_eq!(hashed.len(), 71);
        assert_eq!(stored_key(&hashed), hashed.as_str());
    }
}
