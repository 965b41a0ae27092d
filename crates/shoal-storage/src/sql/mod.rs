//! Pieces shared by the sqlx backends: the per-call deadline and connection checkout, error
//! mapping, prefix substitution of the embedded migrations, group commit, and the row codecs of
//! message storage.

pub(crate) mod call;
pub(crate) mod group_commit;
pub(crate) mod messages;
pub(crate) mod migrations;

use std::time::Duration;

/// A duration as whole milliseconds for binding into SQL (saturating; at least 0).
pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Sorted, de-duplicated shard texts. Sorting gives every statement the same row order (no lock
/// order deadlocks between concurrent callers); de-duplicating keeps an upsert from touching a
/// row twice.
pub(crate) fn sorted_shards(shards: &[String]) -> Vec<&str> {
    let mut sorted: Vec<&str> = shards.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    sorted
}

/// A lease or heartbeat TTL in milliseconds; zero is refused.
pub(crate) fn ttl_millis(
    operation: &'static str,
    ttl: Duration,
) -> Result<i64, crate::error::StorageError> {
    if ttl.is_zero() {
        return Err(crate::error::StorageError::InvalidArgument {
            operation,
            detail: "ttl must be longer than zero".to_owned(),
        });
    }
    Ok(millis(ttl).max(1))
}
