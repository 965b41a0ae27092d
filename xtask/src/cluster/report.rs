//! The report a run prints: figures, what the faults did, and the invariants' findings.

use std::fmt::Write as _;
use std::time::Duration;

use super::findings::Finding;
use super::load::LoadResult;

/// Figures and findings of one run.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) storage: String,
    pub(crate) runners: String,
    pub(crate) plan: String,
    pub(crate) load: LoadResult,
    /// What each fault did, in the order they began.
    pub(crate) findings: Vec<Finding>,
    /// Per finding, the longest time without an acknowledged increment from the fault's start
    /// until it settled.
    pub(crate) write_pauses: Vec<Option<Duration>>,
    /// Per finding, the ownership violations that followed it.
    pub(crate) ownership_after: Vec<usize>,
    /// Schedule entries never injected (the load ended first).
    pub(crate) not_injected: Vec<String>,
    pub(crate) leases: String,
    pub(crate) ownership: String,
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
        for finding in &self.findings {
            let _ = writeln!(out, "fault        {}", finding.line);
        }
        for fault in &self.not_injected {
            let _ = writeln!(
                out,
                "fault        {fault}: not injected (the load ended first)"
            );
        }
        if self.findings.iter().any(|f| f.recovery.is_some()) {
            out.push_str(&self.table());
        }
        let _ = writeln!(out, "leases       {}", self.leases);
        let _ = writeln!(out, "entities     {}", self.entities);
        let _ = writeln!(out, "counts       {}", self.counts);
        let _ = writeln!(out, "ownership    {}", self.ownership);
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

impl Report {
    /// The faults that were measured, one row each.
    fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "recovery     (from the fault's start until every entity answered again; target: lease TTL + 0.5 s, reported, not asserted;\n             \
             settled: until the last outage it caused ended; write pause: the longest time without an acknowledged increment)"
        );
        let _ = writeln!(
            out,
            "             {:<36} {:>4} {:>11} {:>9} {:>9} {:>9} {:>11} {:>9}",
            "fault",
            "at",
            "unavailable",
            "recovery",
            "target",
            "settled",
            "write pause",
            "ownership"
        );
        let dash = |d: Option<Duration>| d.map_or_else(|| "-".to_owned(), fmt_duration);
        for (i, f) in self.findings.iter().enumerate() {
            if f.unavailable.is_none() {
                continue;
            }
            let _ = writeln!(
                out,
                "             {:<36} {:>3.0}% {:>11} {:>9} {:>9} {:>9} {:>11} {:>9}",
                f.fault,
                f.at * 100.0,
                f.unavailable
                    .map_or_else(|| "-".to_owned(), |n| n.to_string()),
                dash(f.recovery),
                dash(f.target),
                dash(f.settled),
                dash(self.write_pauses.get(i).copied().flatten()),
                self.ownership_after.get(i).copied().unwrap_or(0)
            );
        }
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
        let mut finding = Finding::line(
            0.2,
            std::time::Instant::now(),
            "freeze runner 2 for 6.00 s".to_owned(),
            "freeze runner 2 for 6.00 s at 20%: ...".to_owned(),
        );
        finding.unavailable = Some(310);
        finding.recovery = Some(Duration::from_millis(2610));
        finding.target = Some(Duration::from_millis(2500));
        report.findings.push(finding);
        report.write_pauses.push(Some(Duration::from_secs(3)));
        report.ownership_after.push(0);
        let text = report.render();
        assert!(
            text.contains("fault        freeze runner 2 for 6.00 s at 20%"),
            "{text}"
        );
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with("freeze runner 2 for 6.00 s "))
            .unwrap_or_default();
        let cells: Vec<&str> = row.split_whitespace().skip(6).collect();
        assert_eq!(
            cells,
            [
                "20%", "310", "2.61", "s", "2.50", "s", "-", "3.00", "s", "0"
            ],
            "{text}"
        );
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
