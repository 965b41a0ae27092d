//! Turning rows read by the SQL backends into values, reporting malformed rows instead of
//! panicking, and telling a fenced write from an accepted one.

use std::collections::HashMap;

use bytes::Bytes;
use shoal_protocol::EntityAddress;

use super::query::KvEntry;
use crate::error::StorageError;
use crate::messages::Fence;

/// Rows of `(key, value)` as decoded by a backend: each column, or why it could not be read.
pub(crate) type Rows = Vec<(Result<Vec<u8>, String>, Result<Vec<u8>, String>)>;

fn malformed(entity: &EntityAddress, key: Option<&[u8]>, detail: String) -> StorageError {
    let what = match key {
        Some(key) => format!(
            "entity KV row of {}/{} at key {}",
            entity.entity_type,
            entity.entity_id,
            printable(key)
        ),
        None => format!(
            "entity KV row of {}/{}",
            entity.entity_type, entity.entity_id
        ),
    };
    StorageError::Malformed { what, detail }
}

/// A key for messages: UTF-8 text when it is printable, else hex.
fn printable(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) if !text.chars().any(char::is_control) => format!("{text:?}"),
        _ => {
            let mut hex = String::with_capacity(2 + key.len() * 2);
            hex.push_str("0x");
            for byte in key {
                use std::fmt::Write;
                let _ = write!(hex, "{byte:02x}");
            }
            hex
        }
    }
}

/// Checked entries, in the order of the rows.
pub(crate) fn entries(entity: &EntityAddress, rows: Rows) -> Result<Vec<KvEntry>, StorageError> {
    rows.into_iter()
        .map(|(key, value)| {
            let key = key.map_err(|e| malformed(entity, None, format!("unreadable key: {e}")))?;
            let value = value
                .map_err(|e| malformed(entity, Some(&key), format!("unreadable value: {e}")))?;
            if value.is_empty() {
                return Err(malformed(
                    entity,
                    Some(&key),
                    "the value is empty (values hold at least one byte); delete the row".to_owned(),
                ));
            }
            Ok(KvEntry {
                key: Bytes::from(key),
                value: Bytes::from(value),
            })
        })
        .collect()
}

/// The value of each requested key, in request order (`None` when missing).
pub(crate) fn values_in_order(
    entity: &EntityAddress,
    keys: &[Bytes],
    rows: Rows,
) -> Result<Vec<Option<Bytes>>, StorageError> {
    let found: HashMap<Bytes, Bytes> = entries(entity, rows)?
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect();
    Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
}

/// `Ok` when the write was allowed: the shard's lease epoch (`None` if never leased) is not
/// newer than the fence.
pub(crate) fn fenced(fence: &Fence, current: Option<i64>) -> Result<(), StorageError> {
    match current {
        Some(current) if u64::try_from(current).unwrap_or(0) > fence.epoch.0 => {
            Err(StorageError::Fenced {
                shard: fence.shard.clone(),
                epoch: fence.epoch.0,
                current: u64::try_from(current).unwrap_or(0),
            })
        }
        _ => Ok(()),
    }
}
