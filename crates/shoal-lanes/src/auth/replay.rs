//! Optional replay protection for RPC calls: token ids seen within their lifetime.
//!
//! The guard holds at most `capacity` token ids. Ids are indexed twice: by id (to answer "seen
//! before?") and by expiry (so expired ids are dropped from the front, O(log n) each, instead of
//! rescanning the whole set). When the guard is full of unexpired ids it refuses the new token
//! rather than forgetting an unexpired one, since forgetting would let that token be replayed.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use thiserror::Error;

/// How many unexpired token ids a replay guard holds by default (about 40 MiB at worst; at the
/// default TTL and clock skew a token is remembered for 90 s, so this sustains about 2,900 calls
/// per second).
pub const DEFAULT_REPLAY_CAPACITY: usize = 262_144;

/// Why the replay guard refused a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub(crate) enum ReplayRefusal {
    /// The token id was already used and has not expired.
    #[error("token id already used")]
    Replayed,
    /// The guard holds `capacity` unexpired ids; a new one cannot be remembered.
    #[error("replay guard full ({capacity} unexpired token ids)")]
    Full {
        /// The guard's capacity.
        capacity: usize,
    },
}

#[derive(Debug, Default)]
struct Seen {
    /// Token id → the time (Unix seconds) until which it is remembered.
    by_jti: HashMap<Arc<str>, i64>,
    /// The same entries, ordered by that time (then id), so the expired ones come first.
    by_expiry: BTreeSet<(i64, Arc<str>)>,
}

impl Seen {
    /// Drops every id remembered until before `now`.
    fn purge(&mut self, now: i64) {
        while let Some((until, _)) = self.by_expiry.first() {
            if *until >= now {
                break;
            }
            if let Some((_, jti)) = self.by_expiry.pop_first() {
                self.by_jti.remove(&jti);
            }
        }
    }
}

/// Remembers the `jti` of accepted tokens until they expire; a second use is refused.
///
/// This is per process: run one exposure per lane, or put a shared store in front, if you need
/// replay protection across replicas. Event lanes never use it (a retried delivery legitimately
/// presents the same token again).
#[derive(Debug)]
pub(crate) struct ReplayGuard {
    seen: Mutex<Seen>,
    capacity: usize,
}

impl Default for ReplayGuard {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_REPLAY_CAPACITY)
    }
}

impl ReplayGuard {
    /// A guard holding at most `capacity` unexpired ids (at least one).
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        ReplayGuard {
            seen: Mutex::new(Seen::default()),
            capacity: capacity.max(1),
        }
    }

    /// Records `jti`, remembered until `expires_at` (Unix seconds, inclusive), as of `now`.
    ///
    /// Refused when the id is already remembered ([`ReplayRefusal::Replayed`]) or when the guard
    /// holds `capacity` unexpired ids ([`ReplayRefusal::Full`]; nothing is forgotten early).
    pub(crate) fn check(&self, jti: &str, expires_at: i64, now: i64) -> Result<(), ReplayRefusal> {
        let mut seen = self.seen.lock();
        seen.purge(now);
        if seen.by_jti.contains_key(jti) {
            return Err(ReplayRefusal::Replayed);
        }
        if seen.by_jti.len() >= self.capacity {
            return Err(ReplayRefusal::Full {
                capacity: self.capacity,
            });
        }
        let jti: Arc<str> = Arc::from(jti);
        seen.by_expiry.insert((expires_at, Arc::clone(&jti)));
        seen.by_jti.insert(jti, expires_at);
        Ok(())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let seen = self.seen.lock();
        debug_assert_eq!(seen.by_jti.len(), seen.by_expiry.len());
        seen.by_jti.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn never_holds_more_than_its_capacity() {
        let guard = ReplayGuard::with_capacity(64);
        let mut refused = 0;
        for i in 0..1_000 {
            if let Err(refusal) = guard.check(&format!("jti-{i}"), NOW + 90, NOW) {
                assert_eq!(refusal, ReplayRefusal::Full { capacity: 64 });
                refused += 1;
            }
            assert!(guard.len() <= 64, "{} ids held", guard.len());
        }
        assert_eq!(refused, 1_000 - 64);
        // Full, yet the ids it holds are still refused as replays (nothing was forgotten).
        assert_eq!(
            guard.check("jti-0", NOW + 90, NOW),
            Err(ReplayRefusal::Replayed)
        );
        // Once they expire there is room again.
        assert_eq!(guard.check("jti-999", NOW + 200, NOW + 91), Ok(()));
    }

    #[test]
    fn expired_ids_are_dropped_on_the_next_insert() {
        let guard = ReplayGuard::with_capacity(64);
        for i in 0..10 {
            assert!(guard.check(&format!("jti-{i}"), NOW + 90, NOW).is_ok());
        }
        assert_eq!(guard.len(), 10);
        assert!(guard.check("later", NOW + 200, NOW + 91).is_ok());
        assert_eq!(guard.len(), 1);
    }

    #[test]
    fn a_replay_within_the_window_is_refused() {
        let guard = ReplayGuard::default();
        assert_eq!(guard.check("a", NOW + 90, NOW), Ok(()));
        assert_eq!(
            guard.check("a", NOW + 90, NOW + 90),
            Err(ReplayRefusal::Replayed)
        );
        // After its window the id is forgotten (the token itself is expired by then).
        assert_eq!(guard.check("a", NOW + 300, NOW + 91), Ok(()));
    }

    #[test]
    fn extreme_expiry_values_do_not_panic() {
        let guard = ReplayGuard::with_capacity(4);
        assert_eq!(guard.check("max", i64::MAX, NOW), Ok(()));
        assert_eq!(guard.check("min", i64::MIN, NOW), Ok(()));
        assert_eq!(
            guard.check("max", i64::MAX, i64::MAX),
            Err(ReplayRefusal::Replayed)
        );
        assert_eq!(guard.len(), 1);
    }
}
