//! The invariants a run must keep, and the report.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use super::load::{LoadResult, Tally, id_name};

/// Increments per id against the final values.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct CountCheck {
    /// Ids whose value is below their acknowledged increments (acknowledged work lost).
    pub(crate) lost: Vec<(String, u64)>,
    /// Ids whose value is above acknowledged plus unknown increments (counted twice).
    pub(crate) extra: Vec<(String, u64)>,
    /// Ids where two acknowledged increments returned the same value.
    pub(crate) repeated: Vec<String>,
    /// Ids with unknown outcomes that were applied (allowed).
    pub(crate) applied_unknown: u64,
}

/// Compares each id's final value with what the load saw: the value must be at least the
/// acknowledged increments (nothing acknowledged is lost), at most acknowledged plus unknown
/// ones (nothing is counted twice), and no two acknowledged increments may return the same value.
pub(crate) fn check_counts(
    tallies: &BTreeMap<u32, Tally>,
    finals: &BTreeMap<u32, i64>,
) -> CountCheck {
    let mut check = CountCheck::default();
    for (index, tally) in tallies {
        let Some(&value) = finals.get(index) else {
            continue;
        };
        let value = value.max(0) as u64;
        let name = id_name(*index);
        if value < tally.acked {
            check.lost.push((name.clone(), tally.acked - value));
        } else if value > tally.acked + tally.unknown {
            check
                .extra
                .push((name.clone(), value - tally.acked - tally.unknown));
        } else {
            check.applied_unknown += value - tally.acked;
        }
        let mut seen = HashSet::new();
        if tally.replies.iter().any(|r| !seen.insert(*r)) {
            check.repeated.push(name);
        }
    }
    check
}

/// Figures and findings of one run.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) storage: String,
    pub(crate) runners: String,
    pub(crate) plan: String,
    pub(crate) load: LoadResult,
    /// `(when, as a share of the load; what happened)`.
    pub(crate) faults: Vec<(f64, String)>,
    pub(crate) leases: String,
    pub(crate) entities: String,
    pub(crate) counts: String,
    pub(crate) violations: Vec<String>,
    /// Problems reported but tolerated (for example lost increments with --lenient-counts).
    pub(crate) tolerated: Vec<String>,
}

fn ms(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    }
}

pub(crate) fn fmt_duration(d: Duration) -> String {
    ms(d)
}

impl Report {
    pub(crate) fn render(&self) -> String {
        let l = &self.load;
        let mut out = String::new();
        let _ = writeln!(out, "\n== test-cluster report ==");
        let _ = writeln!(out, "storage      {}", self.storage);
        let _ = writeln!(out, "runners      {}", self.runners);
        let _ = writeln!(out, "load         {}", self.plan);
        let _ = writeln!(
            out,
            "outcomes     {} acknowledged, {} unknown outcome, {} failed; {} refusals resent",
            l.acked(),
            l.unknown(),
            l.failed(),
            l.resent
        );
        let secs = l.elapsed.as_secs_f64().max(0.001);
        let _ = writeln!(
            out,
            "throughput   {:.0} acknowledged increments/s over {}",
            l.acked() as f64 / secs,
            ms(l.elapsed)
        );
        let _ = writeln!(
            out,
            "latency      p50 {}, p90 {}, p99 {}, max {} (acknowledged calls)",
            ms(l.latency(0.5)),
            ms(l.latency(0.9)),
            ms(l.latency(0.99)),
            ms(l.latency(1.0))
        );
        let mut faults = self.faults.clone();
        faults.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (_, fault) in &faults {
            let _ = writeln!(out, "fault        {fault}");
        }
        let _ = writeln!(out, "leases       {}", self.leases);
        let _ = writeln!(out, "entities     {}", self.entities);
        let _ = writeln!(out, "counts       {}", self.counts);
        for (what, map) in [
            ("refused", &l.refusals),
            ("unknown", &l.unknowns),
            ("failed", &l.failures),
        ] {
            if !map.is_empty() {
                let parts: Vec<String> = map.iter().map(|(k, v)| format!("{v}× {k}")).collect();
                let _ = writeln!(out, "{what:<12} {}", parts.join("; "));
            }
        }
        for t in &self.tolerated {
            let _ = writeln!(out, "TOLERATED    {t}");
        }
        for v in &self.violations {
            let _ = writeln!(out, "VIOLATION    {v}");
        }
        let _ = writeln!(
            out,
            "RESULT       {}",
            if self.violations.is_empty() {
                "PASS"
            } else {
                "FAIL"
            }
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(acked: u64, unknown: u64, replies: &[i64]) -> Tally {
        Tally {
            acked,
            unknown,
            failed: 0,
            replies: replies.to_vec(),
        }
    }

    #[test]
    fn counts_must_match_acknowledged_increments() {
        let tallies: BTreeMap<u32, Tally> = [
            (0, tally(3, 0, &[1, 2, 3])),
            (1, tally(2, 1, &[1, 3])),
            (2, tally(2, 0, &[1, 2])),
            (3, tally(1, 0, &[1])),
            (4, tally(2, 0, &[1, 1])),
        ]
        .into_iter()
        .collect();
        let finals: BTreeMap<u32, i64> = [(0, 3), (1, 3), (2, 1), (3, 2), (4, 2)]
            .into_iter()
            .collect();
        let check = check_counts(&tallies, &finals);
        assert_eq!(check.lost, vec![("c2".to_owned(), 1)]);
        assert_eq!(check.extra, vec![("c3".to_owned(), 1)]);
        assert_eq!(check.repeated, vec!["c4".to_owned()]);
        assert_eq!(check.applied_unknown, 1);
    }
}
