//! The report a run prints: figures, what the faults did, and the invariants' findings.

use std::fmt::Write as _;
use std::time::Duration;

use super::load::LoadResult;

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
    /// Violated invariants; any makes the run fail.
    pub(crate) violations: Vec<String>,
}

/// `12.3 ms` or `1.23 s`.
pub(crate) fn fmt_duration(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    }
}

fn quantiles(sorted: &[u64]) -> String {
    let q = |q| fmt_duration(LoadResult::quantile(sorted, q));
    format!("p50 {}, p99 {}, max {}", q(0.5), q(0.99), q(1.0))
}

impl Report {
    /// Whether every invariant held.
    pub(crate) fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    pub(crate) fn render(&self) -> String {
        let l = &self.load;
        let mut out = String::new();
        let _ = writeln!(out, "\n== test-cluster report ==");
        let _ = writeln!(out, "storage      {}", self.storage);
        let _ = writeln!(out, "runners      {}", self.runners);
        let _ = writeln!(out, "load         {}", self.plan);
        let _ = writeln!(
            out,
            "outcomes     {} increments acknowledged, {} gets answered, {} never answered, {} failed; {} resends",
            l.acked(),
            l.gets,
            l.unacked() + l.gets_unanswered,
            l.failed() - l.gets_unanswered,
            l.resends()
        );
        let secs = l.elapsed.as_secs_f64().max(0.001);
        let _ = writeln!(
            out,
            "throughput   {:.0} requests/s ({} requests in {})",
            l.done as f64 / secs,
            l.done,
            fmt_duration(l.elapsed)
        );
        let _ = writeln!(
            out,
            "latency      {} (one HTTP call); {} (a request, resends included)",
            quantiles(&l.call_us),
            quantiles(&l.request_us)
        );
        if let Some(slow) = &l.slowest {
            let _ = writeln!(
                out,
                "slowest      {} took {} in {} attempts: {}",
                slow.what,
                fmt_duration(slow.elapsed),
                slow.attempts.len(),
                slow.attempts.join("; ")
            );
        }
        let mut faults = self.faults.clone();
        faults.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (_, fault) in &faults {
            let _ = writeln!(out, "fault        {fault}");
        }
        let _ = writeln!(out, "leases       {}", self.leases);
        let _ = writeln!(out, "entities     {}", self.entities);
        let _ = writeln!(out, "counts       {}", self.counts);
        for (what, map) in [("resent", &l.resent), ("failed", &l.failures)] {
            if !map.is_empty() {
                let parts: Vec<String> = map.iter().map(|(k, v)| format!("{v}× {k}")).collect();
                let _ = writeln!(out, "{what:<12} {}", parts.join("; "));
            }
        }
        for v in &self.violations {
            let _ = writeln!(out, "VIOLATION    {v}");
        }
        let _ = writeln!(
            out,
            "RESULT       {}",
            if self.passed() { "PASS" } else { "FAIL" }
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_pass_and_fail() {
        let mut report = Report::default();
        assert!(report.render().contains("RESULT       PASS"));
        report.violations.push("something broke".to_owned());
        let text = report.render();
        assert!(text.contains("VIOLATION    something broke"), "{text}");
        assert!(text.contains("RESULT       FAIL"), "{text}");
    }

    #[test]
    fn formats_durations() {
        assert_eq!(fmt_duration(Duration::from_micros(1500)), "1.5 ms");
        assert_eq!(fmt_duration(Duration::from_millis(2340)), "2.34 s");
    }
}
