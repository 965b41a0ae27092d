//! The count invariant: every acknowledged increment is counted exactly once.

use std::collections::{BTreeMap, HashSet};

use super::load::{Tally, id_name};

/// Increments per id against the final values.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct CountCheck {
    /// Ids whose value is below their acknowledged increments (acknowledged work lost), with how
    /// many are missing.
    pub(crate) lost: Vec<(String, u64)>,
    /// Ids whose value is above their acknowledged increments (plus those never acknowledged),
    /// with how many were counted twice.
    pub(crate) extra: Vec<(String, u64)>,
    /// Ids where two acknowledged increments returned the same value.
    pub(crate) repeated: Vec<String>,
    /// Ids whose final value could not be read.
    pub(crate) unread: Vec<String>,
    /// Ids whose value equals their acknowledged increments.
    pub(crate) exact: u64,
}

/// Compares each of the `ids` counters' final value with what the load saw. Every increment was
/// resent with its idempotency key until acknowledged, so the value must equal the acknowledged
/// increments (an id with increments never acknowledged may lie between the acknowledged count
/// and that plus the unacknowledged ones; those are reported as violations of their own). No two
/// acknowledged increments of an id may return the same value.
pub(crate) fn check_counts(
    ids: u32,
    tallies: &BTreeMap<u32, Tally>,
    finals: &BTreeMap<u32, i64>,
) -> CountCheck {
    let mut check = CountCheck::default();
    let none = Tally::default();
    for index in 0..ids {
        let tally = tallies.get(&index).unwrap_or(&none);
        let name = id_name(index);
        let Some(&value) = finals.get(&index) else {
            check.unread.push(name);
            continue;
        };
        let value = u64::try_from(value).unwrap_or(0);
        if value < tally.acked {
            check.lost.push((name.clone(), tally.acked - value));
        } else if value > tally.acked + tally.unacked {
            check
                .extra
                .push((name.clone(), value - tally.acked - tally.unacked));
        } else if value == tally.acked {
            check.exact += 1;
        }
        let mut seen = HashSet::new();
        if tally.replies.iter().any(|r| !seen.insert(*r)) {
            check.repeated.push(name);
        }
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(acked: u64, unacked: u64, replies: &[i64]) -> Tally {
        Tally {
            acked,
            unacked,
            failed: 0,
            replies: replies.to_vec(),
        }
    }

    #[test]
    fn counts_must_equal_acknowledged_increments() {
        let tallies: BTreeMap<u32, Tally> = [
            (0, tally(3, 0, &[1, 2, 3])),
            (1, tally(2, 1, &[1, 3])),
            (2, tally(2, 0, &[1, 2])),
            (3, tally(1, 0, &[1])),
            (4, tally(2, 0, &[1, 1])),
        ]
        .into_iter()
        .collect();
        let finals: BTreeMap<u32, i64> = [(0, 3), (1, 3), (2, 1), (3, 2), (4, 2), (5, 0)]
            .into_iter()
            .collect();
        let check = check_counts(7, &tallies, &finals);
        assert_eq!(check.lost, vec![("c2".to_owned(), 1)]);
        assert_eq!(check.extra, vec![("c3".to_owned(), 1)]);
        assert_eq!(check.repeated, vec!["c4".to_owned()]);
        assert_eq!(check.unread, vec!["c6".to_owned()]);
        // c0, c4 and c5 (no increments, value 0) are exact; c1 lies within its unacknowledged one.
        assert_eq!(check.exact, 3);
    }

    #[test]
    fn exact_counts_pass() {
        let tallies: BTreeMap<u32, Tally> = [(0, tally(2, 0, &[2, 1]))].into_iter().collect();
        let finals: BTreeMap<u32, i64> = [(0, 2), (1, 0)].into_iter().collect();
        let check = check_counts(2, &tallies, &finals);
        assert_eq!(
            check,
            CountCheck {
                exact: 2,
                ..CountCheck::default()
            }
        );
    }
}
