//! Options of `cargo xtask test-cluster` and the fault schedule.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

/// Where the runners keep their shared storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StorageKind {
    /// A fresh database on the test Postgres (created and dropped by the run).
    Postgres,
    /// A SQLite file in the run's temporary directory.
    Sqlite,
}

/// The cargo profile the `shoal` binary is built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Profile {
    /// Optimized (what an operator runs).
    Release,
    /// Unoptimized (fast to build; what `cargo xtask test` already built).
    Debug,
}

/// `cargo xtask test-cluster`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ClusterArgs {
    /// Runner processes started at the beginning.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=16))]
    pub(crate) runners: u32,
    /// Increments to send (each to one of --ids counters).
    #[arg(long, default_value_t = 20_000)]
    pub(crate) requests: u64,
    /// Send load for this long instead of a fixed count (for example 30s); fault times are then
    /// shares of the duration.
    #[arg(long, value_parser = humantime_duration)]
    pub(crate) duration: Option<Duration>,
    /// Distinct counter ids.
    #[arg(long, default_value_t = 1000)]
    pub(crate) ids: u32,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 32)]
    pub(crate) concurrency: u32,
    /// Shared storage of the runners.
    #[arg(long, value_enum, default_value_t = StorageKind::Postgres)]
    pub(crate) storage: StorageKind,
    /// Faults, in order: ACTION@PERCENT, comma-separated. Actions: kill (SIGKILL a runner),
    /// term (SIGTERM a runner), start (start a replacement). `none` for no faults.
    #[arg(long, default_value = "kill@20%,term@45%,start@60%")]
    pub(crate) faults: String,
    /// Shard lease TTL of the runners (bounds recovery after SIGKILL).
    #[arg(long, default_value = "2s", value_parser = humantime_duration)]
    pub(crate) lease_ttl: Duration,
    /// Build profile of the `shoal` binary.
    #[arg(long, value_enum, default_value_t = Profile::Release)]
    pub(crate) profile: Profile,
    /// Report lost or repeated increments without failing (for builds whose demo counter keeps
    /// its state in memory, so a shard move resets it).
    #[arg(long)]
    pub(crate) lenient_counts: bool,
    /// Keep the run's directory (runner logs) even when every check passes.
    #[arg(long)]
    pub(crate) keep_logs: bool,
    /// The short run of `cargo xtask test` (debug build, 3 runners, 3,000 increments over 200
    /// ids); the load options above are ignored.
    #[arg(long)]
    pub(crate) quick: bool,
}

impl ClusterArgs {
    /// The short run `cargo xtask test` does: debug binary, fewer requests and ids.
    pub(crate) fn quick() -> Self {
        Self {
            runners: 3,
            requests: 3_000,
            duration: None,
            ids: 200,
            concurrency: 16,
            storage: StorageKind::Postgres,
            faults: "kill@20%,term@45%,start@60%".to_owned(),
            lease_ttl: Duration::from_secs(2),
            profile: Profile::Debug,
            // The demo counter keeps its state in memory until durable entity state lands in
            // shoal-sharding, so shard moves reset it; the short run reports lost increments
            // without failing until then. Set this to false when the counter persists.
            lenient_counts: true,
            keep_logs: false,
            quick: true,
        }
    }
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

/// `500ms`, `2s`, `1m`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("{text:?} is not a duration like 2s or 500ms"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" | "" => number,
        "m" => number * 60.0,
        _ => bail!("{text:?} is not a duration like 2s or 500ms"),
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// SIGKILL a runner (a crash: its leases must expire).
    Kill,
    /// SIGTERM a runner (a graceful stop: its shards are handed off).
    Term,
    /// Start a replacement runner.
    Start,
}

/// One scheduled fault.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Fault {
    pub(crate) action: Action,
    /// When, as a share of the load (0.0–1.0).
    pub(crate) at: f64,
}

/// Parses `kill@20%,term@45%,start@60%` (or `none`).
pub(crate) fn parse_faults(spec: &str) -> Result<Vec<Fault>> {
    if spec.trim() == "none" || spec.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut faults = Vec::new();
    for part in spec.split(',') {
        let (action, at) = part
            .trim()
            .split_once('@')
            .with_context(|| format!("fault {part:?}: expected ACTION@PERCENT, like kill@20%"))?;
        let action = match action {
            "kill" => Action::Kill,
            "term" => Action::Term,
            "start" => Action::Start,
            other => bail!("fault {part:?}: unknown action {other:?} (kill, term or start)"),
        };
        let percent: f64 = at
            .trim_end_matches('%')
            .parse()
            .with_context(|| format!("fault {part:?}: {at:?} is not a percentage"))?;
        if !(0.0..100.0).contains(&percent) {
            bail!("fault {part:?}: the percentage must be from 0 to below 100");
        }
        faults.push(Fault {
            action,
            at: percent / 100.0,
        });
    }
    faults.sort_by(|a, b| a.at.total_cmp(&b.at));
    Ok(faults)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fault_schedules() {
        let faults = parse_faults("term@45%,kill@20%,start@60").unwrap();
        assert_eq!(
            faults,
            vec![
                Fault {
                    action: Action::Kill,
                    at: 0.2
                },
                Fault {
                    action: Action::Term,
                    at: 0.45
                },
                Fault {
                    action: Action::Start,
                    at: 0.6
                },
            ]
        );
        assert!(parse_faults("none").unwrap().is_empty());
        assert!(parse_faults("explode@10%").is_err());
        assert!(parse_faults("kill@120%").is_err());
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("soon").is_err());
    }
}
