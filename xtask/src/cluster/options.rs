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
    /// Requests to send in all: persisted increments, and one volatile `get` in every four
    /// (default 20,000; 150,000 with `--faults all`; ignored with `--soak`, whose load runs for
    /// the given time).
    #[arg(long)]
    pub(crate) requests: Option<u64>,
    /// Concurrent HTTP callers.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) concurrency: u32,
    /// Distinct counter ids.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) ids: u32,
    /// Shared storage of the runners.
    #[arg(long, value_enum, default_value_t = StorageKind::Postgres)]
    pub(crate) storage: StorageKind,
    /// Fault schedule: a name, or a comma-separated list of `ACTION@PERCENT[:ARG]...`, where
    /// PERCENT is how far the load is when the fault starts and the `:`-separated ARGs are `rN`
    /// (act on runner N, numbered in start order from 1; kill, term, freeze, partition) or
    /// durations like `6s` or `300ms` (how long freeze, partition and storage-cut last;
    /// storage-latency takes the delay, then how long).
    ///
    /// Actions: kill (SIGKILL), term (SIGTERM), start (a replacement runner), duplicate (a second
    /// process at a live runner's address), collide (a client-only gateway on a live runner's
    /// machine id), freeze[:D][:rN] (SIGSTOP for D, default 3× the lease TTL, then SIGCONT),
    /// partition[:D][:rN] (runner-to-runner traffic of one runner blackholed both ways for D,
    /// default 3× the lease TTL), pg-restart (fast restart of the run's own Postgres server),
    /// storage-latency[:DELAY][:D] (every chunk between runners and Postgres delayed by DELAY,
    /// default 300ms, for D, default 4s), storage-cut[:D] (connections to Postgres dropped and
    /// refused for D, default 3s).
    ///
    /// Names: `default` (kill@20%,duplicate@30%,term@45%,collide@50%,start@60%), `all` (every
    /// fault, more requests), `none`, `kill` (kill@30%,start@60%), `term` (term@30%,start@60%).
    /// A fault waits for the lasting faults before it to end and for the cluster to recover from
    /// them.
    #[arg(long, default_value = "default", verbatim_doc_comment)]
    pub(crate) faults: String,
    /// Run a soak test for this long (`10m`, `90s`) instead of a fixed number of requests: the
    /// load runs continuously and faults of every kind come on a random schedule drawn from
    /// `--seed` (replacing `--faults`).
    #[arg(long, value_parser = humantime_duration)]
    pub(crate) soak: Option<Duration>,
    /// The seed of the soak schedule (printed at the start; give it again to replay a run).
    #[arg(long, requires = "soak")]
    pub(crate) seed: Option<u64>,
    /// Shard lease TTL of the runners (bounds recovery after SIGKILL).
    #[arg(long, default_value = "2s", value_parser = humantime_duration)]
    pub(crate) lease_ttl: Duration,
    /// Put the storage proxy and the runners' proxies in place even when no fault of the
    /// schedule needs them (to see what they cost).
    #[arg(long)]
    pub(crate) proxies: bool,
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
    /// The requests of a run with a fixed count (more for `--faults all`, so every fault lands).
    pub(crate) fn request_count(&self) -> u64 {
        self.requests.unwrap_or(if self.faults.trim() == "all" {
            150_000
        } else {
            20_000
        })
    }

    /// The short run `cargo xtask test` does: the debug binary the tests built, 3 runners,
    /// 3,000 requests over 1,000 ids.
    pub(crate) fn short(faults: &str) -> Self {
        Self {
            runners: 3,
            requests: Some(3_000),
            concurrency: 64,
            ids: 1000,
            storage: StorageKind::Postgres,
            faults: faults.to_owned(),
            soak: None,
            seed: None,
            proxies: false,
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
    /// SIGSTOP a runner for a while (longer than the lease TTL by default), then SIGCONT.
    Freeze,
    /// Cut one runner's runner-to-runner traffic both ways for a while (storage stays reachable).
    Partition,
    /// Restart the run's own Postgres server (fast mode) under load.
    PgRestart,
    /// Delay every chunk between the runners and Postgres, both ways, for a while.
    StorageLatency,
    /// Drop every connection between the runners and Postgres and refuse new ones for a while.
    StorageCut,
}

impl Action {
    /// Every action with its name in `--faults`.
    pub(crate) const ALL: [(Action, &'static str); 10] = [
        (Action::Kill, "kill"),
        (Action::Term, "term"),
        (Action::Start, "start"),
        (Action::Duplicate, "duplicate"),
        (Action::Collide, "collide"),
        (Action::Freeze, "freeze"),
        (Action::Partition, "partition"),
        (Action::PgRestart, "pg-restart"),
        (Action::StorageLatency, "storage-latency"),
        (Action::StorageCut, "storage-cut"),
    ];

    /// The name in `--faults`.
    pub(crate) fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(a, _)| *a == self)
            .map_or("?", |(_, name)| name)
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(a, _)| *a)
    }

    /// Whether `:rN` may pick the runner it acts on.
    fn takes_runner(self) -> bool {
        matches!(
            self,
            Action::Kill | Action::Term | Action::Freeze | Action::Partition
        )
    }

    /// How many durations it takes after `@PERCENT`.
    fn durations(self) -> usize {
        match self {
            Action::Freeze | Action::Partition | Action::StorageCut => 1,
            Action::StorageLatency => 2,
            _ => 0,
        }
    }

    /// Whether it needs the runners' storage to go through the harness's proxy.
    pub(crate) fn needs_storage_proxy(self) -> bool {
        matches!(self, Action::StorageLatency | Action::StorageCut)
    }

    /// Whether it needs a Postgres server of the run's own (it disturbs the server).
    pub(crate) fn needs_own_postgres(self) -> bool {
        self == Action::PgRestart
    }

    /// Whether it needs Postgres storage.
    pub(crate) fn needs_postgres(self) -> bool {
        self == Action::Collide || self.needs_storage_proxy() || self.needs_own_postgres()
    }
}

/// One scheduled fault.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Fault {
    pub(crate) action: Action,
    /// When, as a share of the load (0.0–1.0; of the time with `--soak`).
    pub(crate) at: f64,
    /// The runner to act on (its number: 1 is the first started); the harness picks when `None`.
    pub(crate) runner: Option<usize>,
    /// How long a lasting fault lasts; its default when `None` (see [`Fault::length`]).
    pub(crate) length: Option<Duration>,
    /// `storage-latency`: the delay added to every chunk; 300 ms when `None`.
    pub(crate) delay: Option<Duration>,
}

/// The delay `storage-latency` adds when none is given.
pub(crate) const DEFAULT_DELAY: Duration = Duration::from_millis(300);

impl Fault {
    /// A fault with nothing but its action and time.
    pub(crate) fn new(action: Action, at: f64) -> Self {
        Self {
            action,
            at,
            runner: None,
            length: None,
            delay: None,
        }
    }

    /// How long a lasting fault lasts: as given, else 3× the lease TTL for a freeze or a
    /// partition (the lease must expire), 4 s for storage latency, 3 s for a storage cut.
    pub(crate) fn length(&self, lease_ttl: Duration) -> Duration {
        self.length.unwrap_or(match self.action {
            Action::Freeze | Action::Partition => lease_ttl * 3,
            Action::StorageLatency => Duration::from_secs(4),
            _ => Duration::from_secs(3),
        })
    }

    /// The delay of `storage-latency`.
    pub(crate) fn delay(&self) -> Duration {
        self.delay.unwrap_or(DEFAULT_DELAY)
    }
}

impl std::fmt::Display for Fault {
    /// The fault in `--faults` syntax (`freeze@20%:6s:r2`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let percent = self.at * 100.0;
        if (percent - percent.round()).abs() < 1e-9 {
            write!(f, "{}@{percent:.0}%", self.action.name())?;
        } else {
            write!(f, "{}@{percent:.2}%", self.action.name())?;
        }
        let delay = match (self.delay, self.length) {
            // The first duration of storage-latency is its delay.
            (None, Some(_)) if self.action == Action::StorageLatency => Some(DEFAULT_DELAY),
            (delay, _) => delay,
        };
        if let Some(delay) = delay {
            write!(f, ":{}", short_duration(delay))?;
        }
        if let Some(length) = self.length {
            write!(f, ":{}", short_duration(length))?;
        }
        if let Some(runner) = self.runner {
            write!(f, ":r{runner}")?;
        }
        Ok(())
    }
}

/// `300ms`, `4s`, `1.5s`: what [`parse_duration`] reads back.
pub(crate) fn short_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// The named schedules and what they stand for.
pub(crate) const NAMED: &[(&str, &str)] = &[
    (
        "default",
        "kill@20%,duplicate@30%,term@45%,collide@50%,start@60%",
    ),
    (
        "all",
        "kill@5%,start@10%,freeze@15%,duplicate@20%,storage-latency@25%:300ms:4s,term@30%,\
         start@35%,partition@40%,collide@45%,storage-cut@50%:3s,pg-restart@60%,\
         storage-latency@70%:1s:4s,freeze@80%:r1",
    ),
    ("kill", "kill@30%,start@60%"),
    ("term", "term@30%,start@60%"),
    ("none", ""),
];

/// The grammar, for error messages.
const GRAMMAR: &str = "a schedule name (default, all, none, kill, term) or a list of \
    ACTION@PERCENT[:DURATION][:rN] like kill@20%,freeze@30%:6s:r2,storage-latency@50%:300ms:4s";

/// Parses a named schedule (`default`, `all`, `none`, `kill`, `term`) or a list like
/// `kill@20%,freeze@30%:6s:r2,storage-latency@50%:300ms:4s,start@60%`: each entry is
/// `ACTION@PERCENT`, then `:`-separated arguments: `rN` picks runner N (kill, term, freeze,
/// partition), durations say how long a lasting fault lasts (freeze, partition, storage-cut), and
/// `storage-latency` takes the delay first, then how long.
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
        faults.push(parse_fault(part.trim())?);
    }
    faults.sort_by(|a, b| a.at.total_cmp(&b.at));
    Ok(faults)
}

fn parse_fault(part: &str) -> Result<Fault> {
    let (action, rest) = part
        .split_once('@')
        .with_context(|| format!("fault {part:?}: expected {GRAMMAR}"))?;
    let action = Action::parse(action).with_context(|| {
        let names: Vec<&str> = Action::ALL.iter().map(|(_, n)| *n).collect();
        format!(
            "fault {part:?}: unknown action {action:?} (one of {})",
            names.join(", ")
        )
    })?;
    let mut args = rest.split(':');
    let at = args.next().unwrap_or_default();
    let percent: f64 = at
        .trim_end_matches('%')
        .parse()
        .with_context(|| format!("fault {part:?}: {at:?} is not a percentage"))?;
    if !(0.0..100.0).contains(&percent) {
        bail!("fault {part:?}: the percentage must be from 0 to below 100");
    }
    let mut fault = Fault::new(action, percent / 100.0);
    let mut durations = Vec::new();
    for arg in args {
        if let Some(number) = arg.strip_prefix('r') {
            if !action.takes_runner() {
                bail!(
                    "fault {part:?}: {} does not take a runner (kill, term, freeze and partition do)",
                    action.name()
                );
            }
            let number: usize = number
                .parse()
                .ok()
                .filter(|&n| n >= 1)
                .with_context(|| format!("fault {part:?}: {arg:?} is not a runner like r2"))?;
            if fault.runner.replace(number).is_some() {
                bail!("fault {part:?}: two runners given");
            }
        } else {
            let duration = parse_duration(arg)
                .with_context(|| format!("fault {part:?}: {arg:?} is neither rN nor a duration"))?;
            if duration.is_zero() {
                bail!("fault {part:?}: durations must be above zero");
            }
            durations.push(duration);
        }
    }
    if durations.len() > action.durations() {
        bail!(
            "fault {part:?}: {} takes {}",
            action.name(),
            match action.durations() {
                0 => "no duration",
                1 => "one duration (how long it lasts)",
                _ => "at most two durations (the delay, then how long it lasts)",
            }
        );
    }
    match (action, durations.as_slice()) {
        (Action::StorageLatency, [delay, length]) => {
            fault.delay = Some(*delay);
            fault.length = Some(*length);
        }
        (Action::StorageLatency, [delay]) => fault.delay = Some(*delay),
        (_, [length]) => fault.length = Some(*length),
        _ => {}
    }
    Ok(fault)
}

/// The schedule `spec` names, for runners on `storage`: on SQLite, the `default` and `all`
/// schedules leave out the faults that need Postgres (collide, pg-restart, storage-latency,
/// storage-cut); asking for one explicitly there is an error.
pub(crate) fn faults_for(spec: &str, storage: StorageKind) -> Result<Vec<Fault>> {
    let mut faults = parse_faults(spec)?;
    if storage == StorageKind::Sqlite {
        if matches!(spec.trim(), "default" | "all") {
            faults.retain(|f| !f.action.needs_postgres());
        } else if let Some(f) = faults.iter().find(|f| f.action.needs_postgres()) {
            bail!(
                "the {} fault needs --storage postgres (the harness edits, proxies or restarts \
                 the database)",
                f.action.name()
            );
        }
    }
    Ok(faults)
}

/// Checks that `faults` never stops every runner of a cluster of `runners`, never acts on a
/// runner that is not running, and leaves at least one runner serving during a freeze or a
/// partition. Runners are numbered in start order: `start` makes the next number.
pub(crate) fn check_schedule(faults: &[Fault], runners: u32) -> Result<()> {
    let mut live: Vec<usize> = (1..=runners as usize).collect();
    let mut next = runners as usize + 1;
    for fault in faults {
        let at = fault.at * 100.0;
        if let Some(n) = fault.runner
            && !live.contains(&n)
        {
            bail!(
                "fault {fault}: runner {n} is not running at {at:.0}% (running: {live:?}; runners \
                 are numbered in start order from 1)"
            );
        }
        match fault.action {
            Action::Start => {
                live.push(next);
                next += 1;
            }
            Action::Kill | Action::Term => {
                if live.len() < 2 {
                    bail!(
                        "the fault schedule would stop every one of the {runners} runners (at \
                         {at:.0}%); start more with --runners"
                    );
                }
                let victim = fault.runner.unwrap_or(live[live.len() - 1]);
                live.retain(|&n| n != victim);
            }
            Action::Freeze | Action::Partition => {
                if live.len() < 2 {
                    bail!(
                        "fault {fault}: a {} needs two running runners (one keeps serving)",
                        fault.action.name()
                    );
                }
            }
            Action::Duplicate
            | Action::Collide
            | Action::PgRestart
            | Action::StorageLatency
            | Action::StorageCut => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(action: Action, at: f64) -> Fault {
        Fault::new(action, at)
    }

    #[test]
    fn parses_fault_schedules() {
        let faults = parse_faults("term@45%,kill@20%,start@60").unwrap();
        assert_eq!(
            faults,
            vec![
                fault(Action::Kill, 0.2),
                fault(Action::Term, 0.45),
                fault(Action::Start, 0.6),
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
        assert!(faults_for("storage-cut@10%", StorageKind::Sqlite).is_err());
        assert!(parse_faults("none").unwrap().is_empty());
        assert_eq!(
            parse_faults("kill").unwrap(),
            vec![fault(Action::Kill, 0.3), fault(Action::Start, 0.6)]
        );
        assert_eq!(parse_faults("term").unwrap()[0].action, Action::Term);
        assert!(parse_faults("explode@10%").is_err());
        assert!(parse_faults("kill@120%").is_err());
        assert!(parse_faults("sometimes").is_err());
    }

    #[test]
    fn parses_lasting_faults_with_their_arguments() {
        let faults = parse_faults(
            "freeze@20%:6s,pg-restart@45%,partition@60%:r2:5s,storage-latency@30%:300ms:4s,\
             storage-cut@50%:3s",
        )
        .unwrap();
        assert_eq!(
            faults,
            vec![
                Fault {
                    length: Some(Duration::from_secs(6)),
                    ..fault(Action::Freeze, 0.2)
                },
                Fault {
                    delay: Some(Duration::from_millis(300)),
                    length: Some(Duration::from_secs(4)),
                    ..fault(Action::StorageLatency, 0.3)
                },
                fault(Action::PgRestart, 0.45),
                Fault {
                    length: Some(Duration::from_secs(3)),
                    ..fault(Action::StorageCut, 0.5)
                },
                Fault {
                    runner: Some(2),
                    length: Some(Duration::from_secs(5)),
                    ..fault(Action::Partition, 0.6)
                },
            ]
        );
        // Arguments in any order; defaults.
        let freeze = parse_faults("freeze@10%:r1:1.5s").unwrap()[0];
        assert_eq!(freeze.runner, Some(1));
        assert_eq!(
            freeze.length(Duration::from_secs(2)),
            Duration::from_millis(1500)
        );
        let freeze = parse_faults("freeze@10%").unwrap()[0];
        assert_eq!(
            freeze.length(Duration::from_secs(2)),
            Duration::from_secs(6)
        );
        let latency = parse_faults("storage-latency@10%:1s").unwrap()[0];
        assert_eq!(latency.delay(), Duration::from_secs(1));
        assert_eq!(
            latency.length(Duration::from_secs(2)),
            Duration::from_secs(4)
        );
        assert_eq!(parse_faults("kill@5%:r3").unwrap()[0].runner, Some(3));
        // Wrong arguments.
        assert!(parse_faults("pg-restart@10%:3s").is_err());
        assert!(parse_faults("storage-cut@10%:r1").is_err());
        assert!(parse_faults("freeze@10%:1s:2s").is_err());
        assert!(parse_faults("freeze@10%:r0").is_err());
        assert!(parse_faults("freeze@10%:r1:r2").is_err());
        assert!(parse_faults("freeze@10%:0s").is_err());
        assert!(parse_faults("storage-latency@10%:1s:2s:3s").is_err());
        assert!(parse_faults("start@10%:r1").is_err());
    }

    #[test]
    fn prints_faults_as_they_are_parsed() {
        for text in [
            "kill@20%",
            "freeze@20%:6s:r2",
            "storage-latency@30%:300ms:4s",
            "partition@12.35%:1.5s",
            "pg-restart@45%",
        ] {
            let fault = parse_faults(text).unwrap()[0];
            assert_eq!(fault.to_string(), text);
            assert_eq!(parse_faults(&fault.to_string()).unwrap()[0], fault);
        }
    }

    #[test]
    fn the_all_schedule_has_every_fault() {
        let all = parse_faults("all").unwrap();
        for (action, name) in Action::ALL {
            assert!(all.iter().any(|f| f.action == action), "{name} missing");
        }
        assert!(check_schedule(&all, 3).is_ok());
        let sqlite = faults_for("all", StorageKind::Sqlite).unwrap();
        assert!(sqlite.iter().all(|f| !f.action.needs_postgres()));
        assert!(sqlite.iter().any(|f| f.action == Action::Partition));
    }

    #[test]
    fn refuses_schedules_that_stop_every_runner() {
        let faults = parse_faults("default").unwrap();
        assert!(check_schedule(&faults, 3).is_ok());
        assert!(check_schedule(&faults, 2).is_err());
        assert!(check_schedule(&[], 2).is_ok());
        // Runner 3 is gone after the kill; runner 4 is the replacement.
        assert!(check_schedule(&parse_faults("kill@10%,freeze@20%:r3").unwrap(), 3).is_err());
        assert!(
            check_schedule(
                &parse_faults("kill@10%,start@15%,freeze@20%:r4").unwrap(),
                3
            )
            .is_ok()
        );
        assert!(check_schedule(&parse_faults("kill@10%:r1,freeze@20%:r1").unwrap(), 3).is_err());
        // A freeze needs another runner serving.
        assert!(check_schedule(&parse_faults("kill@10%,freeze@20%").unwrap(), 2).is_err());
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("soon").is_err());
    }
}
