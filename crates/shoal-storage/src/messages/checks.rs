//! Normalisations and checks every backend applies the same way.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use super::types::{StoredReply, StoredReplyKind};
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
