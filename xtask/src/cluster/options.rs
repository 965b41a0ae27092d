//! Options of `cargo xtask test-cluster` and the fault schedule.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

/// Where the runners keep their shared storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StorageKind {
    /// A fresh database on the test Postgres (created by the run, dropped unless --keep).
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
    /// Requests to send in all: persisted increments, and one volatile `get` in every four.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) requests: u64,
    /// Concurrent HTTP callers.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) concurrency: u32,
    /// Distinct counter ids.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) ids: u32,
    /// Shared storage of the runners.
    #[arg(long, value_enum, default_value_t = StorageKind::Postgres)]
    pub(crate) storage: StorageKind,
    /// Fault schedule: `default` (SIGKILL a runner at 20% of the load, a second process at a
    /// live runner's address at 30%, SIGTERM a runner at 45%, on Postgres a client-only gateway
    /// on a live runner's machine id at 50%, a replacement at 60%), `none`, `kill` (SIGKILL at
    /// 30%, replacement at 60%), `term` (SIGTERM at 30%, replacement at 60%), or a list like
    /// `kill@20%,duplicate@30%,term@45%,collide@50%,start@60%`.
    #[arg(long, default_value = "default")]
    pub(crate) faults: String,
    /// Shard lease TTL of the runners (bounds recovery after SIGKILL).
    #[arg(long, default_value = "2s", value_parser = humantime_duration)]
    pub(crate) lease_ttl: Duration,
    /// Build profile of the `shoal` binary.
    #[arg(long, value_enum, default_value_t = Profile::Release)]
    pub(crate) profile: Profile,
    /// Keep the database and the run's directory (runner logs) even when every check passes.
    #[arg(long)]
    pub(crate) keep: bool,
    /// Use the `shoal` binary already built for --profile instead of building it (`cargo xtask
    /// test` uses the one its test build made: building the package alone would rebuild crates
    /// with other features).
    #[arg(long)]
    pub(crate) no_build: bool,
}

impl ClusterArgs {
    /// The short run `cargo xtask test` does: the debug binary the tests built, 3 runners,
    /// 3,000 requests over 1,000 ids.
    pub(crate) fn short(faults: &str) -> Self {
        Self {
            runners: 3,
            requests: 3_000,
            concurrency: 64,
            ids: 1000,
            storage: StorageKind::Postgres,
            faults: faults.to_owned(),
            lease_ttl: Duration::from_secs(2),
            profile: Profile::Debug,
            keep: false,
            no_build: true,
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
    /// Start a second process advertising a live runner's address: it must be refused.
    Duplicate,
    /// Start a client-only gateway that leases a live runner's machine id (Postgres only).
    Collide,
}

/// One scheduled fault.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Fault {
    pub(crate) action: Action,
    /// When, as a share of the load (0.0–1.0).
    pub(crate) at: f64,
}

/// The named schedules and what they stand for.
const NAMED: &[(&str, &str)] = &[
    (
        "default",
        "kill@20%,duplicate@30%,term@45%,collide@50%,start@60%",
    ),
    ("kill", "kill@30%,start@60%"),
    ("term", "term@30%,start@60%"),
    ("none", ""),
];

/// Parses a named schedule (`default`, `none`, `kill`, `term`) or a list like
/// `kill@20%,term@45%,start@60%`.
pub(crate) fn parse_faults(spec: &str) -> Result<Vec<Fault>> {
    let spec = spec.trim();
    let spec = NAMED
        .iter()
        .find(|(name, _)| *name == spec)
        .map_or(spec, |(_, list)| list);
    if spec.is_empty() {
        return Ok(Vec::new());
    }
    let mut faults = Vec::new();
    for part in spec.split(',') {
        let (action, at) = part.trim().split_once('@').with_context(|| {
            format!(
                "fault {part:?}: expected default, none, kill, term, or a list of ACTION@PERCENT \
                 like kill@20%,term@45%,start@60%"
            )
        })?;
        let action = match action {
            "kill" => Action::Kill,
            "term" => Action::Term,
            "start" => Action::Start,
            "duplicate" => Action::Duplicate,
            "collide" => Action::Collide,
            other => bail!(
                "fault {part:?}: unknown action {other:?} (kill, term, start, duplicate or collide)"
            ),
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

/// The schedule `spec` names, for runners on `storage`: the `default` schedule leaves out the
/// `collide` fault on SQLite (it edits the storage with `psql`); asking for it explicitly there
/// is an error.
pub(crate) fn faults_for(spec: &str, storage: StorageKind) -> Result<Vec<Fault>> {
    let mut faults = parse_faults(spec)?;
    if storage == StorageKind::Sqlite {
        if spec.trim() == "default" {
            faults.retain(|f| f.action != Action::Collide);
        } else if faults.iter().any(|f| f.action == Action::Collide) {
            bail!(
                "the collide fault needs --storage postgres (the harness edits the machine-id table with psql)"
            );
        }
    }
    Ok(faults)
}

/// Checks that `faults` never stops every runner of a cluster of `runners`.
pub(crate) fn check_schedule(faults: &[Fault], runners: u32) -> Result<()> {
    let mut live = i64::from(runners);
    for fault in faults {
        live += match fault.action {
            Action::Start => 1,
            Action::Kill | Action::Term => -1,
            Action::Duplicate | Action::Collide => 0,
        };
        if live < 1 {
            bail!(
                "the fault schedule would stop every one of the {runners} runners (at {:.0}%); \
                 start more with --runners",
                fault.at * 100.0
            );
        }
    }
    Ok(())
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
        let default = parse_faults("default").unwrap();
        let actions: Vec<Action> = default.iter().map(|f| f.action).collect();
        assert_eq!(
            actions,
            [
                Action::Kill,
                Action::Duplicate,
                Action::Term,
                Action::Collide,
                Action::Start
            ]
        );
        assert!(
            !faults_for("default", StorageKind::Sqlite)
                .unwrap()
                .iter()
                .any(|f| f.action == Action::Collide)
        );
        assert!(faults_for("collide@10%", StorageKind::Sqlite).is_err());
        assert!(parse_faults("none").unwrap().is_empty());
        assert_eq!(
            parse_faults("kill").unwrap(),
            vec![
                Fault {
                    action: Action::Kill,
                    at: 0.3
                },
                Fault {
                    action: Action::Start,
                    at: 0.6
                },
            ]
        );
        assert_eq!(parse_faults("term").unwrap()[0].action, Action::Term);
        assert!(parse_faults("explode@10%").is_err());
        assert!(parse_faults("kill@120%").is_err());
        assert!(parse_faults("sometimes").is_err());
    }

    #[test]
    fn refuses_schedules_that_stop_every_runner() {
        let faults = parse_faults("default").unwrap();
        assert!(check_schedule(&faults, 3).is_ok());
        assert!(check_schedule(&faults, 2).is_err());
        assert!(check_schedule(&[], 2).is_ok());
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("soon").is_err());
    }
}
