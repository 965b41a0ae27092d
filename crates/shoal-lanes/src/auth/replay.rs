//! Optional replay protection for RPC calls: token ids seen within their lifetime.

use std::collections::HashMap;

use parking_lot::Mutex;

/// Remembers the `jti` of accepted tokens until they expire; a second use is refused.
///
/// This is per process: run one exposure per lane, or put a shared store in front, if you need
/// replay protection across replicas. Event lanes never use it (a retried delivery legitimately
/// presents the same token again).
#[derive(Debug, Default)]
pub(crate) struct ReplayGuard {
    seen: Mutex<HashMap<String, i64>>,
}

impl ReplayGuard {
    /// Records `jti` (valid until `expires_at`, Unix seconds); false if it was already recorded.
    pub(crate) fn first_use(&self, jti: &str, expires_at: i64, now: i64) -> bool {
        let mut seen = self.seen.lock();
        if seen.len() >= 4096 {
            seen.retain(|_, exp| *exp >= now);
        }
        match seen.get(jti) {
            Some(exp) if *exp >= now => false,
            _ => {
                seen.insert(jti.to_owned(), expires_at);
                true
            }
        }
    }
}
