//! Shard ownership checked from the outside, with what every reply says about who served it (the
//! runner process and the lease epoch its instance started under):
//!
//! - **writes in epoch order**: increments of one counter are serialized by the value they
//!   return, so along that order the epochs must never go back; an increment accepted under an
//!   epoch older than one an earlier increment was accepted under means a fenced-off owner wrote;
//! - **no overlapping owners**: a reply served under an older epoch whose request was sent after a
//!   reply served under a newer epoch had come back means the old owner served after the new one
//!   had started — two owners at once;
//! - **one owner per epoch**: an epoch is one lease, taken by one process.
//!
//! A reply is served somewhere between when its request was first sent (an increment resent with
//! its idempotency key may be answered by an earlier attempt) and when it came back; only orders
//! that follow from those instants for certain are flagged.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Instant;

use super::load::id_name;
use super::served::{Owner, Served};

/// One violation.
#[derive(Debug, Clone)]
pub(crate) struct Violation {
    /// When the offending reply's request was sent (to tell which fault it followed).
    pub(crate) at: Instant,
    pub(crate) text: String,
}

/// What the checker saw and found.
#[derive(Debug, Default)]
pub(crate) struct OwnershipCheck {
    pub(crate) writes: usize,
    pub(crate) reads: usize,
    /// Distinct (process, epoch) pairs that served.
    pub(crate) owners: usize,
    /// Distinct runner processes (incarnations) that served.
    pub(crate) processes: usize,
    /// Increments accepted under an epoch older than an earlier increment's.
    pub(crate) stale_writes: Vec<Violation>,
    /// Replies served under an older epoch after a newer epoch had served.
    pub(crate) overlaps: Vec<Violation>,
    /// Epochs two processes served under.
    pub(crate) shared_epochs: Vec<Violation>,
}

impl OwnershipCheck {
    /// Every violation.
    pub(crate) fn violations(&self) -> impl Iterator<Item = &Violation> {
        self.stale_writes
            .iter()
            .chain(&self.overlaps)
            .chain(&self.shared_epochs)
    }
}

/// Checks every reply of a run.
pub(crate) fn check(served: &[Served]) -> OwnershipCheck {
    let mut by_id: BTreeMap<u32, Vec<&Served>> = BTreeMap::new();
    let mut owners = HashSet::new();
    let mut processes = HashSet::new();
    let mut out = OwnershipCheck::default();
    for reply in served {
        by_id.entry(reply.id).or_default().push(reply);
        owners.insert((reply.owner.incarnation, reply.owner.epoch));
        processes.insert(reply.owner.incarnation);
        if reply.write {
            out.writes += 1;
        } else {
            out.reads += 1;
        }
    }
    out.owners = owners.len();
    out.processes = processes.len();
    for (id, replies) in &by_id {
        check_writes(*id, replies, &mut out.stale_writes);
        check_overlaps(*id, replies, &mut out.overlaps);
        check_epochs(*id, replies, &mut out.shared_epochs);
    }
    out
}

/// Along the value order of one counter's increments, epochs never go back.
fn check_writes(id: u32, replies: &[&Served], violations: &mut Vec<Violation>) {
    let mut writes: Vec<&Served> = replies.iter().copied().filter(|r| r.write).collect();
    writes.sort_by_key(|r| r.value);
    let mut newest: Option<&Served> = None;
    for write in writes {
        match newest {
            Some(before) if write.owner.epoch < before.owner.epoch => {
                violations.push(Violation {
                    at: write.sent,
                    text: format!(
                        "{}: the increment that returned {} was accepted from {} after the one \
                         that returned {} was accepted from {}",
                        id_name(id),
                        write.value,
                        write.owner,
                        before.value,
                        before.owner
                    ),
                });
            }
            Some(before) if write.owner.epoch == before.owner.epoch => {}
            _ => newest = Some(write),
        }
    }
}

/// No reply served under an older epoch was sent after a reply from a newer epoch came back.
fn check_overlaps(id: u32, replies: &[&Served], violations: &mut Vec<Violation>) {
    // Per epoch, the reply that came back first: by then that epoch's owner had served.
    let mut first: BTreeMap<u64, &Served> = BTreeMap::new();
    for reply in replies {
        let entry = first.entry(reply.owner.epoch).or_insert(reply);
        if reply.received < entry.received {
            *entry = reply;
        }
    }
    // Per epoch, the earliest of those among the strictly newer epochs.
    let mut newer: BTreeMap<u64, &Served> = BTreeMap::new();
    let mut earliest: Option<&Served> = None;
    for (&epoch, &reply) in first.iter().rev() {
        if let Some(earliest) = earliest {
            newer.insert(epoch, earliest);
        }
        if earliest.is_none_or(|e| reply.received < e.received) {
            earliest = Some(reply);
        }
    }
    let mut flagged: BTreeSet<(&Owner, &Owner)> = BTreeSet::new();
    for reply in replies {
        let Some(newer) = newer.get(&reply.owner.epoch) else {
            continue;
        };
        if newer.received < reply.sent && flagged.insert((&reply.owner, &newer.owner)) {
            violations.push(Violation {
                at: reply.sent,
                text: format!(
                    "{}: a {} served by {} (value {}) was sent {:.3} s after a reply served by {} \
                     (value {}) had come back: two owners at once",
                    id_name(id),
                    if reply.write { "increment" } else { "get" },
                    reply.owner,
                    reply.value,
                    reply.sent.duration_since(newer.received).as_secs_f64(),
                    newer.owner,
                    newer.value
                ),
            });
        }
    }
}

/// One process per epoch.
fn check_epochs(id: u32, replies: &[&Served], violations: &mut Vec<Violation>) {
    let mut by_epoch: BTreeMap<u64, &Served> = BTreeMap::new();
    let mut flagged = BTreeSet::new();
    for reply in replies {
        let first = *by_epoch.entry(reply.owner.epoch).or_insert(reply);
        if first.owner != reply.owner && flagged.insert(reply.owner.epoch) {
            violations.push(Violation {
                at: reply.sent,
                text: format!(
                    "{}: epoch {} was served by two processes: {} and {}",
                    id_name(id),
                    reply.owner.epoch,
                    first.owner,
                    reply.owner
                ),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    /// A reply to counter 0: `(write, process, epoch, value, sent ms, received ms)`.
    fn reply(base: Instant, spec: (bool, u64, u64, i64, u64, u64)) -> Served {
        let (write, incarnation, epoch, value, sent, received) = spec;
        Served {
            id: 0,
            write,
            owner: Owner {
                epoch,
                incarnation,
                runner: Arc::from(format!("127.0.0.1:{}", 7000 + incarnation).as_str()),
            },
            value,
            sent: base + Duration::from_millis(sent),
            received: base + Duration::from_millis(received),
        }
    }

    fn run(specs: &[(bool, u64, u64, i64, u64, u64)]) -> OwnershipCheck {
        let base = Instant::now();
        let served: Vec<Served> = specs.iter().map(|s| reply(base, *s)).collect();
        check(&served)
    }

    const W: bool = true;
    const R: bool = false;

    #[test]
    fn a_clean_handover_passes() {
        // Process 1 serves under epoch 3; it dies; process 2 takes the shard under epoch 4.
        let check = run(&[
            (W, 1, 3, 1, 0, 10),
            (R, 1, 3, 1, 20, 30),
            (W, 1, 3, 2, 40, 50),
            // In flight across the handover: sent before epoch 4 answered, so it may have been
            // served before.
            (R, 1, 3, 2, 55, 3000),
            (W, 2, 4, 3, 2000, 2600),
            (R, 2, 4, 3, 2700, 2710),
            (W, 2, 4, 4, 2720, 2730),
        ]);
        assert_eq!(check.violations().count(), 0, "{check:?}");
        assert_eq!((check.writes, check.reads), (4, 3));
        assert_eq!((check.owners, check.processes), (2, 2));
    }

    #[test]
    fn flags_a_write_accepted_from_an_older_epoch() {
        let check = run(&[
            (W, 1, 3, 1, 0, 10),
            (W, 2, 4, 2, 20, 30),
            // Value 3 was written under epoch 3 after value 2 under epoch 4.
            (W, 1, 3, 3, 15, 40),
            (W, 2, 4, 4, 50, 60),
        ]);
        assert_eq!(check.stale_writes.len(), 1, "{check:?}");
        assert!(
            check.stale_writes[0].text.contains("returned 3")
                && check.stale_writes[0].text.contains("returned 2"),
            "{}",
            check.stale_writes[0].text
        );
        // Its intervals overlap the newer epoch's, so it is not flagged as certainly overlapping.
        assert!(check.overlaps.is_empty(), "{check:?}");
    }

    #[test]
    fn flags_an_old_owner_serving_after_a_new_one() {
        let check = run(&[
            (W, 1, 3, 5, 0, 10),
            (R, 2, 4, 5, 100, 110),
            // A frozen runner back: it answers a get sent after epoch 4 had answered.
            (R, 1, 3, 5, 120, 130),
            (R, 1, 3, 5, 140, 150),
        ]);
        assert_eq!(check.overlaps.len(), 1, "one per pair of owners: {check:?}");
        assert!(check.overlaps[0].text.contains("two owners at once"));
        assert!(check.stale_writes.is_empty());
    }

    #[test]
    fn overlap_needs_certainty() {
        // The old owner's get was sent before the new owner's reply came back: either order is
        // possible.
        let check = run(&[(R, 2, 4, 5, 100, 110), (R, 1, 3, 5, 105, 200)]);
        assert_eq!(check.violations().count(), 0, "{check:?}");
        // Epochs compare, not processes: the same process under an older epoch is also flagged.
        let check = run(&[(R, 1, 4, 5, 100, 110), (R, 1, 3, 5, 120, 130)]);
        assert_eq!(check.overlaps.len(), 1, "{check:?}");
    }

    #[test]
    fn flags_two_processes_under_one_epoch() {
        let check = run(&[(R, 1, 3, 5, 0, 10), (R, 2, 3, 5, 20, 30)]);
        assert_eq!(check.shared_epochs.len(), 1, "{check:?}");
        assert!(check.overlaps.is_empty() && check.stale_writes.is_empty());
    }

    #[test]
    fn counters_are_checked_apart() {
        let base = Instant::now();
        let mut a = reply(base, (R, 2, 4, 5, 100, 110));
        let mut b = reply(base, (R, 1, 3, 5, 120, 130));
        a.id = 1;
        b.id = 2;
        assert_eq!(check(&[a, b]).violations().count(), 0);
    }
}
