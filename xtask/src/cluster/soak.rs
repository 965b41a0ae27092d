//! Soak runs (`--soak 10m [--seed N]`): the load runs for the given time while faults of every
//! kind come on a random schedule drawn from the seed, and a progress line is printed every few
//! seconds. The same seed draws the same schedule (and the same victims, in the same order).

use std::time::{Duration, Instant};

use super::findings::FaultLog;
use super::load::Snapshot;
use super::options::{Action, Fault, StorageKind};
use super::report::fmt_duration;

/// A small, seeded random number generator (SplitMix64): the same seed, the same numbers.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A duration from `low` to `high`, in whole milliseconds.
    fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let (low, high) = (low.as_millis() as u64, high.as_millis() as u64);
        Duration::from_millis(low + self.below(high.saturating_sub(low) + 1))
    }
}

/// A seed from the clock, when none is given.
pub(crate) fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    Rng::new(nanos ^ u64::from(std::process::id())).next_u64() % 1_000_000_000
}

/// The faults a soak draws from, with their weights. A kill or a term is followed by a
/// replacement a few seconds later, so the cluster keeps its size.
const KINDS: &[(Action, u64)] = &[
    (Action::Kill, 3),
    (Action::Term, 2),
    (Action::Freeze, 3),
    (Action::Partition, 3),
    (Action::StorageLatency, 2),
    (Action::StorageCut, 2),
    (Action::PgRestart, 2),
    (Action::Duplicate, 1),
    (Action::Collide, 1),
];

/// Draws the schedule of a soak of `length` from `seed`: a fault every 6 to 20 s after the
/// previous one ended (its length, then room to recover), none in the last 20 s; the runners
/// they act on are drawn when they are injected. On SQLite, the faults that need Postgres are
/// left out.
pub(crate) fn schedule(
    seed: u64,
    length: Duration,
    lease_ttl: Duration,
    storage: StorageKind,
) -> Vec<Fault> {
    let mut rng = Rng::new(seed);
    let kinds: Vec<(Action, u64)> = KINDS
        .iter()
        .copied()
        .filter(|(a, _)| storage == StorageKind::Postgres || !a.needs_postgres())
        .collect();
    let total: u64 = kinds.iter().map(|(_, w)| w).sum();
    let share = |t: Duration| t.as_secs_f64() / length.as_secs_f64().max(0.001);
    let end = length.saturating_sub(Duration::from_secs(20));
    let mut faults = Vec::new();
    let mut t = Duration::from_secs(5);
    while t < end {
        let mut pick = rng.below(total);
        let action = kinds
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .map_or(Action::Kill, |(a, _)| *a);
        let mut fault = Fault::new(action, share(t));
        let mut lasts = Duration::ZERO;
        match action {
            Action::Freeze | Action::Partition => {
                fault.length = Some(rng.between(lease_ttl * 2, lease_ttl * 4));
            }
            Action::StorageLatency => {
                fault.delay =
                    Some(rng.between(Duration::from_millis(100), Duration::from_millis(1000)));
                fault.length = Some(rng.between(Duration::from_secs(2), Duration::from_secs(8)));
            }
            Action::StorageCut => {
                fault.length = Some(rng.between(Duration::from_secs(1), Duration::from_secs(5)));
            }
            Action::Kill | Action::Term => {
                lasts = rng.between(Duration::from_secs(2), Duration::from_secs(5));
                faults.push(fault);
                fault = Fault::new(Action::Start, share(t + lasts));
            }
            _ => {}
        }
        lasts = lasts.max(fault.length.unwrap_or_default());
        faults.push(fault);
        t += lasts + rng.between(Duration::from_secs(6), Duration::from_secs(20));
    }
    faults
}

/// The progress line of a soak: time, throughput since the last line, errors by answer, faults
/// so far and the last recovery.
pub(crate) struct Progress {
    started: Instant,
    length: Duration,
    last: (Instant, u64),
}

impl Progress {
    pub(crate) fn new(length: Duration) -> Self {
        let now = Instant::now();
        Self {
            started: now,
            length,
            last: (now, 0),
        }
    }

    pub(crate) fn line(&mut self, load: &Snapshot, log: &FaultLog, gateways: usize) -> String {
        let now = Instant::now();
        let rate = (load.done - self.last.1) as f64
            / now.duration_since(self.last.0).as_secs_f64().max(0.001);
        self.last = (now, load.done);
        let mut codes: Vec<(&String, &u64)> = load.codes.iter().collect();
        codes.sort_by(|a, b| b.1.cmp(a.1));
        let codes: Vec<String> = codes
            .iter()
            .take(4)
            .map(|(code, n)| format!("{code} ×{n}"))
            .collect();
        let recovery = log.last_recovery().map_or_else(
            || "none yet".to_owned(),
            |(fault, d)| format!("{} ({fault})", fmt_duration(d)),
        );
        format!(
            "[soak] {}/{} | {rate:.0} req/s | acked {} | gets {} | resent {} | failed {} | errors: {} | faults {} | last recovery {recovery} | gateways {gateways}",
            clock(now.duration_since(self.started)),
            clock(self.length),
            load.acked,
            load.gets,
            load.resent,
            load.failed,
            if codes.is_empty() {
                "none".to_owned()
            } else {
                codes.join(", ")
            },
            log.count(),
        )
    }
}

/// `3m05s`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}m{:02}s", s / 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::options::check_schedule;

    #[test]
    fn the_same_seed_draws_the_same_schedule() {
        let ttl = Duration::from_secs(2);
        let ten = Duration::from_secs(600);
        let a = schedule(7, ten, ttl, StorageKind::Postgres);
        assert_eq!(a, schedule(7, ten, ttl, StorageKind::Postgres));
        assert_ne!(a, schedule(8, ten, ttl, StorageKind::Postgres));
        assert!(a.len() > 20, "{}", a.len());
        // Every kind comes up in ten minutes; kills and terms are replaced.
        for (action, _) in KINDS {
            assert!(a.iter().any(|f| f.action == *action), "{action:?} missing");
        }
        let stops = a
            .iter()
            .filter(|f| matches!(f.action, Action::Kill | Action::Term))
            .count();
        let starts = a.iter().filter(|f| f.action == Action::Start).count();
        assert_eq!(stops, starts);
        assert!(check_schedule(&a, 2).is_ok());
        // In time order, inside the run, none in the last 20 s.
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(a.iter().all(|f| f.at < 1.0));
        assert!(
            a.iter()
                .filter(|f| f.action != Action::Start)
                .all(|f| f.at < 580.0 / 600.0)
        );
        // Printed and parsed back, the schedule is the same.
        let text: Vec<String> = a.iter().map(ToString::to_string).collect();
        let back = crate::cluster::options::parse_faults(&text.join(",")).unwrap();
        assert_eq!(back.len(), a.len());
        let sqlite = schedule(7, ten, ttl, StorageKind::Sqlite);
        assert!(sqlite.iter().all(|f| !f.action.needs_postgres()));
    }

    #[test]
    fn draws_stay_in_range() {
        let mut rng = Rng::new(1);
        for _ in 0..1000 {
            let d = rng.between(Duration::from_millis(100), Duration::from_millis(200));
            assert!((Duration::from_millis(100)..=Duration::from_millis(200)).contains(&d));
            assert!(rng.below(3) < 3);
        }
        assert_eq!(clock(Duration::from_secs(185)), "3m05s");
    }
}
