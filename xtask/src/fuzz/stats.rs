//! Reading libFuzzer's output: the status lines (`#N NEW cov: .. ft: .. corp: .. exec/s: ..`),
//! the final statistics (`-print_final_stats=1`) and the signs of a failure.

/// What a run of one target did, as libFuzzer reported it.
#[derive(Debug, Default, Clone)]
pub(crate) struct Stats {
    /// Inputs executed.
    pub(crate) runs: u64,
    /// Average executions per second.
    pub(crate) exec_per_sec: u64,
    /// Coverage: instrumented edges reached (`cov:`).
    pub(crate) coverage: u64,
    /// Features (`ft:`): edges with hit counts, compared values, ...
    pub(crate) features: u64,
    /// Corpus entries at the end (`corp:`).
    pub(crate) corpus: u64,
    /// Peak resident memory, in MB.
    pub(crate) peak_rss_mb: u64,
    /// What went wrong (a crash, a timeout, a leak, running out of memory), if anything.
    pub(crate) failure: Option<String>,
    /// The input that reproduces the failure.
    pub(crate) reproducer: Option<String>,
}

/// The number after `key` in `line` (`"cov: 123"` → 123).
fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

impl Stats {
    /// Takes what one line of libFuzzer's output says. Returns true for a status line (the
    /// kind worth showing as progress).
    pub(crate) fn read(&mut self, line: &str) -> bool {
        if let Some(value) = line.strip_prefix("stat::number_of_executed_units:") {
            self.runs = value.trim().parse().unwrap_or(self.runs);
        } else if let Some(value) = line.strip_prefix("stat::average_exec_per_sec:") {
            self.exec_per_sec = value.trim().parse().unwrap_or(self.exec_per_sec);
        } else if let Some(value) = line.strip_prefix("stat::peak_rss_mb:") {
            self.peak_rss_mb = value.trim().parse().unwrap_or(self.peak_rss_mb);
        } else if let Some(path) = line.split("Test unit written to ").nth(1) {
            self.reproducer = Some(path.trim().to_owned());
        } else if line.contains("==ERROR: libFuzzer:")
            || line.starts_with("==") && line.contains("ERROR:")
            || line.contains("panicked at")
            || line.contains("ALARM: working on the last Unit for")
        {
            if self.failure.is_none() {
                let start = line.find("ERROR:").unwrap_or(0);
                self.failure = Some(line[start..].trim().to_owned());
            }
        } else if line.starts_with('#') && line.contains("cov:") {
            if let Some(runs) = number_after(line, "#") {
                self.runs = runs;
            }
            self.coverage = number_after(line, "cov:").unwrap_or(self.coverage);
            self.features = number_after(line, "ft:").unwrap_or(self.features);
            self.corpus = number_after(line, "corp:").unwrap_or(self.corpus);
            self.exec_per_sec = number_after(line, "exec/s:").unwrap_or(self.exec_per_sec);
            self.peak_rss_mb = number_after(line, "rss:").unwrap_or(self.peak_rss_mb);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_lines_final_stats_and_failures() {
        let mut stats = Stats::default();
        assert!(stats.read(
            "#65536\tpulse  cov: 1234 ft: 5678 corp: 90/12Kb lim: 4096 exec/s: 21845 rss: 61Mb"
        ));
        assert_eq!(
            (stats.runs, stats.coverage, stats.features, stats.corpus),
            (65536, 1234, 5678, 90)
        );
        assert_eq!((stats.exec_per_sec, stats.peak_rss_mb), (21845, 61));
        assert!(!stats.read("stat::number_of_executed_units: 70000"));
        assert!(!stats.read("stat::average_exec_per_sec:     23333"));
        assert_eq!((stats.runs, stats.exec_per_sec), (70000, 23333));
        assert!(stats.failure.is_none());
        stats.read("==1234== ERROR: libFuzzer: deadly signal");
        stats.read("artifact_prefix='a/'; Test unit written to a/crash-0123");
        assert_eq!(
            stats.failure.as_deref(),
            Some("ERROR: libFuzzer: deadly signal")
        );
        assert_eq!(stats.reproducer.as_deref(), Some("a/crash-0123"));
    }
}
