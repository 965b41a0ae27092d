//! The documented limits of entity KV and the checks every backend runs before touching data.

use bytes::Bytes;
use shoal_protocol::EntityAddress;

use super::query::{KvEntry, KvQuery, KvSelection};
use crate::error::StorageError;
use crate::messages::Fence;

/// Largest key, in bytes (2 KiB).
pub const MAX_KEY_SIZE: usize = 2 * 1024;
/// Largest value, in bytes (128 KiB). Values must also be non-empty.
pub const MAX_VALUE_SIZE: usize = 128 * 1024;
/// Most keys in one `get`, `put` or `delete`.
pub const MAX_KEYS: usize = 128;
/// Most bytes of keys plus values in one `put` (976 KiB).
pub const MAX_PUT_PAYLOAD: usize = 976 * 1024;
pub use shoal_protocol::kv::DEFAULT_LIST_LIMIT;

fn invalid(operation: &'static str, detail: String) -> StorageError {
    StorageError::InvalidArgument { operation, detail }
}

fn check_key(operation: &'static str, what: &str, key: &[u8]) -> Result<(), StorageError> {
    if key.len() > MAX_KEY_SIZE {
        return Err(invalid(
            operation,
            format!(
                "{what} is {} bytes; keys are at most {MAX_KEY_SIZE} bytes (2 KiB)",
                key.len()
            ),
        ));
    }
    Ok(())
}

fn check_count(operation: &'static str, count: usize) -> Result<(), StorageError> {
    if count > MAX_KEYS {
        return Err(invalid(
            operation,
            format!("{count} keys in one request; at most {MAX_KEYS} are allowed"),
        ));
    }
    Ok(())
}

/// Keys of a `get` or `delete`.
pub(crate) fn check_keys(operation: &'static str, keys: &[Bytes]) -> Result<(), StorageError> {
    check_count(operation, keys.len())?;
    for (i, key) in keys.iter().enumerate() {
        check_key(operation, &format!("key #{i}"), key)?;
    }
    Ok(())
}

/// Entries of a `put`: every entry is checked before anything is written.
pub(crate) fn check_put(operation: &'static str, entries: &[KvEntry]) -> Result<(), StorageError> {
    check_count(operation, entries.len())?;
    let mut payload = 0usize;
    for (i, entry) in entries.iter().enumerate() {
        check_key(operation, &format!("key #{i}"), &entry.key)?;
        if entry.value.is_empty() {
            return Err(invalid(
                operation,
                format!(
                    "value #{i} is empty; values must hold at least one byte (delete the key instead)"
                ),
            ));
        }
        if entry.value.len() > MAX_VALUE_SIZE {
            return Err(invalid(
                operation,
                format!(
                    "value #{i} is {} bytes; values are at most {MAX_VALUE_SIZE} bytes (128 KiB)",
                    entry.value.len()
                ),
            ));
        }
        payload += entry.key.len() + entry.value.len();
    }
    if payload > MAX_PUT_PAYLOAD {
        return Err(invalid(
            operation,
            format!(
                "the put holds {payload} bytes of keys and values; at most {MAX_PUT_PAYLOAD} \
                 bytes (976 KiB) are allowed per put"
            ),
        ));
    }
    Ok(())
}

/// The bounds of a list or delete-range.
pub(crate) fn check_query(operation: &'static str, query: &KvQuery) -> Result<(), StorageError> {
    match &query.selection {
        KvSelection::All => Ok(()),
        KvSelection::Prefix(prefix) => check_key(operation, "the prefix", prefix),
        KvSelection::Range { start, end } => {
            check_key(operation, "the range start", start)?;
            check_key(operation, "the range end", end)
        }
    }
}

/// A range of `delete_range`.
pub(crate) fn check_range(
    operation: &'static str,
    start: &[u8],
    end: &[u8],
) -> Result<(), StorageError> {
    check_key(operation, "the range start", start)?;
    check_key(operation, "the range end", end)
}

/// A write's fence must be for the entity's own shard.
pub(crate) fn check_fence(
    operation: &'static str,
    entity: &EntityAddress,
    fence: &Fence,
) -> Result<(), StorageError> {
    if fence.shard != entity.shard {
        return Err(invalid(
            operation,
            format!(
                "the fence is for shard {} but entity {entity} lives in shard {}",
                fence.shard, entity.shard
            ),
        ));
    }
    Ok(())
}

/// The entries of a put with duplicate keys collapsed (the last one wins), so that every backend
/// writes each key once.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) fn last_wins(entries: &[KvEntry]) -> Vec<&KvEntry> {
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    let mut out: Vec<&KvEntry> = entries
        .iter()
        .rev()
        .filter(|e| seen.insert(&e.key))
        .collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &[u8], len: usize) -> KvEntry {
        KvEntry::new(key.to_vec(), vec![7u8; len])
    }

    #[test]
    fn put_limits() {
        assert!(check_put("put", &[entry(b"k", 1)]).is_ok());
        assert!(check_put("put", &[entry(b"k", 0)]).is_err());
        assert!(check_put("put", &[entry(b"k", MAX_VALUE_SIZE)]).is_ok());
        assert!(check_put("put", &[entry(b"k", MAX_VALUE_SIZE + 1)]).is_err());
        assert!(check_put("put", &[entry(&[1; MAX_KEY_SIZE], 1)]).is_ok());
        assert!(check_put("put", &[entry(&[1; MAX_KEY_SIZE + 1], 1)]).is_err());
        let many: Vec<KvEntry> = (0..=MAX_KEYS).map(|i| entry(&[i as u8], 1)).collect();
        assert!(check_put("put", &many[..MAX_KEYS]).is_ok());
        assert!(check_put("put", &many).is_err());
        // Eight values of 122 KiB: under the value limit each, over the payload limit together.
        let big: Vec<KvEntry> = (0..8).map(|i| entry(&[i], 122 * 1024)).collect();
        assert!(check_put("put", &big).is_err());
    }

    #[test]
    fn duplicates_collapse_to_the_last() {
        let entries = [entry(b"a", 1), entry(b"b", 2), entry(b"a", 3)];
        let kept = last_wins(&entries);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].key.as_ref(), b"b");
        assert_eq!(kept[1].value.len(), 3);
    }
}
