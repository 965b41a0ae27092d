//! `cargo xtask test-cluster`: several real `shoal run` processes on shared storage, load through
//! every gateway, faults injected (SIGKILL, SIGTERM, a replacement), then the invariants:
//!
//! - every acknowledged increment is counted exactly once (each id's final value lies between its
//!   acknowledged increments and those plus the ones whose outcome is unknown, and no two
//!   acknowledged increments return the same value);
//! - every entity answers after the faults;
//! - storage shows every shard with exactly one live owner, and no shard's epoch ever went back
//!   (the lease table is sampled during the run);
//! - the runners that were stopped gracefully exited cleanly.
//!
//! It prints a report (throughput, latency, recovery after SIGKILL, handoff after SIGTERM) and
//! fails when an invariant is violated.

mod http;
mod load;
mod options;
mod runners;
mod status;
mod storage;
mod verify;

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub(crate) use options::ClusterArgs;
use options::{Action, Fault, Profile};
use runners::{Gateways, Launcher, RunnerProcess, SharedGateways};
use status::{LeaseSampler, Snapshot, StatusReader};
use storage::ClusterStorage;
use verify::{Report, check_counts, fmt_duration};

/// Runs the cluster test; fails when an invariant is violated.
pub(crate) fn run(args: &ClusterArgs) -> Result<()> {
    let faults = options::parse_faults(&args.faults)?;
    let mut live = args.runners as i64;
    for fault in &faults {
        live += if fault.action == Action::Start { 1 } else { -1 };
        if live < 1 {
            bail!(
                "the fault schedule {:?} would stop every runner",
                args.faults
            );
        }
    }
    let binary = build(args.profile)?;
    let dir = std::env::temp_dir().join(format!("shoal-test-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let storage = ClusterStorage::create(args.storage, &dir)?;
    let outcome = drive(args, &faults, &binary, &dir, &storage);
    drop(storage);
    match outcome {
        Ok(report) => {
            println!("{}", report.render());
            if !report.violations.is_empty() {
                bail!(
                    "test-cluster: {} invariant(s) violated; runner logs are in {}",
                    report.violations.len(),
                    dir.display()
                );
            }
            if args.keep_logs {
                println!("runner logs: {}", dir.display());
            } else {
                let _ = std::fs::remove_dir_all(&dir);
            }
            Ok(())
        }
        Err(e) => Err(e.context(format!(
            "test-cluster failed; runner logs are in {}",
            dir.display()
        ))),
    }
}

/// Builds the `shoal` binary and returns its path.
fn build(profile: Profile) -> Result<PathBuf> {
    let mut argv = vec![
        "cargo",
        "build",
        "--locked",
        "--package",
        "shoal-runner",
        "--bin",
        "shoal",
    ];
    if profile == Profile::Release {
        argv.push("--release");
    }
    crate::process::step("build the shoal binary", &argv, &[])?;
    let out = Command::new("cargo")
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("could not run cargo metadata")?;
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let target = meta["target_directory"]
        .as_str()
        .context("cargo metadata has no target_directory")?;
    let dir = if profile == Profile::Release {
        "release"
    } else {
        "debug"
    };
    let binary = Path::new(target).join(dir).join("shoal");
    if !binary.exists() {
        bail!("{} was not built", binary.display());
    }
    Ok(binary)
}

/// The runner processes; any still running when this is dropped are killed.
#[derive(Default)]
struct Fleet {
    live: Vec<RunnerProcess>,
    killed: Vec<RunnerProcess>,
}

impl Fleet {
    fn addresses(&self) -> HashSet<String> {
        self.live.iter().map(|r| r.address.clone()).collect()
    }

    /// The most recently started live runner (never the last one).
    fn take_victim(&mut self) -> Result<RunnerProcess> {
        if self.live.len() < 2 {
            bail!("no runner left to stop");
        }
        self.live.pop().context("no runner left to stop")
    }

    /// SIGTERM to every live runner; returns those that did not exit cleanly within 60 s.
    fn stop_all(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let stopping: Vec<RunnerProcess> = std::mem::take(&mut self.live);
        let mut waits = Vec::new();
        for runner in stopping {
            let number = runner.number;
            let log = runner.log.display().to_string();
            if let Err(e) = runner.terminate() {
                problems.push(format!("runner {number}: {e:#}"));
            }
            waits.push((number, log, wait_bounded(runner, Duration::from_secs(60))));
        }
        for (number, log, wait) in waits {
            match wait.join() {
                Ok(Some(status)) if status.success() => {}
                Ok(Some(status)) => problems.push(format!(
                    "runner {number} exited with {status} after SIGTERM (log: {log})"
                )),
                _ => problems.push(format!(
                    "runner {number} did not exit within 60 s of SIGTERM (log: {log})"
                )),
            }
        }
        for runner in std::mem::take(&mut self.killed) {
            let _ = runner.wait();
        }
        problems
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for runner in self.live.drain(..).chain(self.killed.drain(..)) {
            runner.stop_now();
        }
    }
}

/// Waits for `runner` to exit in a thread; kills it after `timeout` (then `None`).
fn wait_bounded(runner: RunnerProcess, timeout: Duration) -> JoinHandle<Option<ExitStatus>> {
    std::thread::spawn(move || {
        let pid = runner.pid;
        let (tx, rx) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let status = runner.wait();
            let _ = tx.send(());
            status
        });
        if rx.recv_timeout(timeout).is_err() {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            let _ = waiter.join();
            return None;
        }
        waiter.join().ok().and_then(Result::ok)
    })
}

/// Waits until storage shows every shard leased by a live runner.
fn settle(
    reader: &StatusReader,
    live: &HashSet<String>,
    timeout: Duration,
) -> Result<Snapshot, String> {
    let started = Instant::now();
    let mut last = Err("storage was never read".to_owned());
    while started.elapsed() < timeout {
        match reader.read() {
            Ok(snapshot) => {
                let registered = live.iter().all(|a| snapshot.runners.contains(a));
                if registered
                    && snapshot.total > 0
                    && snapshot.held_by(live) as u64 == snapshot.total
                {
                    return Ok(snapshot);
                }
                let orphaned = snapshot.leases.len() - snapshot.held_by(live);
                last = Err(format!(
                    "{} of {} shards leased, {} of them by runners that are not running; {} of {} \
                     running runners registered",
                    snapshot.leases.len(),
                    snapshot.total,
                    orphaned,
                    live.iter()
                        .filter(|a| snapshot.runners.contains(*a))
                        .count(),
                    live.len()
                ));
            }
            Err(e) => last = Err(format!("{e:#}")),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    last
}

/// What the SIGKILL watcher measured.
struct KillReport {
    /// When storage showed every shard leased by a surviving runner.
    leased: Option<Duration>,
    /// When every entity had answered a `get`.
    answered: Option<Duration>,
}

/// Measures recovery after a SIGKILL: how long until storage shows every shard leased by a
/// survivor, and until every counter answers again (ids that have not answered yet are asked
/// again and again, each call with a 100 ms deadline, so the figure is precise to about one such
/// sweep).
fn watch_recovery(
    killed_at: Instant,
    gateways: SharedGateways,
    ids: u32,
    reader: StatusReader,
    survivors: HashSet<String>,
) -> JoinHandle<KillReport> {
    std::thread::spawn(move || {
        let leases = std::thread::spawn(move || {
            while killed_at.elapsed() < Duration::from_secs(60) {
                if let Ok(s) = reader.read()
                    && s.held_by(&survivors) as u64 == s.total
                {
                    return Some(killed_at.elapsed());
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            None
        });
        let answered = load::read_all(&gateways, ids, killed_at, Duration::from_secs(60), 100).0;
        KillReport {
            leased: leases.join().ok().flatten(),
            answered,
        }
    })
}

/// What the SIGTERM watcher measured.
struct TermReport {
    number: usize,
    at: f64,
    handoff: Option<Duration>,
    exited: Option<Duration>,
    status: Option<ExitStatus>,
}

fn watch_termination(
    victim: RunnerProcess,
    at: f64,
    reader: StatusReader,
    gateways: SharedGateways,
) -> Result<JoinHandle<TermReport>> {
    let number = victim.number;
    let address = victim.address.clone();
    let gateway = victim.gateway.clone();
    let signalled = Instant::now();
    victim.terminate()?;
    Ok(std::thread::spawn(move || {
        let (tx, rx) = mpsc::channel();
        let gone = gateways.clone();
        let waiter = std::thread::spawn(move || {
            let status = victim.wait().ok();
            let _ = tx.send(signalled.elapsed());
            gone.remove(&gateway);
            status
        });
        let mut handoff = None;
        while signalled.elapsed() < Duration::from_secs(60) {
            if let Ok(s) = reader.read()
                && s.held_by_one(&address) == 0
                && s.leases.len() as u64 == s.total
            {
                handoff = Some(signalled.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let exited = rx.recv_timeout(Duration::from_secs(60)).ok();
        let status = waiter.join().ok().flatten();
        TermReport {
            number,
            at,
            handoff,
            exited,
            status,
        }
    }))
}

fn drive(
    args: &ClusterArgs,
    faults: &[Fault],
    binary: &Path,
    dir: &Path,
    storage: &ClusterStorage,
) -> Result<Report> {
    let reader = StatusReader {
        binary: binary.to_path_buf(),
        storage_url: storage.url.clone(),
    };
    let mut launcher = Launcher {
        binary: binary.to_path_buf(),
        storage_url: storage.url.clone(),
        lease_ttl: args.lease_ttl,
        dir: dir.to_path_buf(),
        started: 0,
    };
    let gateways: SharedGateways = Arc::new(Gateways::default());
    let mut fleet = Fleet::default();
    eprintln!(
        "==> test-cluster: starting {} runners on {}",
        args.runners, storage.label
    );
    for _ in 0..args.runners {
        let runner = launcher.start()?;
        eprintln!(
            "    runner {} at {} (gateway {})",
            runner.number, runner.address, runner.gateway
        );
        gateways.add(&runner.gateway);
        fleet.live.push(runner);
    }
    settle(&reader, &fleet.addresses(), Duration::from_secs(60))
        .map_err(|e| anyhow::anyhow!("the cluster never settled: {e}"))?;

    let plan = load::Plan {
        requests: if args.duration.is_some() {
            u64::MAX
        } else {
            args.requests
        },
        duration: args.duration,
        ids: args.ids.max(1),
        concurrency: args.concurrency.max(1),
    };
    let mut report = Report {
        storage: storage.label.clone(),
        plan: match args.duration {
            Some(d) => format!(
                "increments for {} over {} ids from {} clients, through every gateway",
                fmt_duration(d),
                plan.ids,
                plan.concurrency
            ),
            None => format!(
                "{} increments over {} ids from {} clients, through every gateway",
                plan.requests, plan.ids, plan.concurrency
            ),
        },
        ..Report::default()
    };
    eprintln!(
        "==> test-cluster: load ({}); faults: {}",
        report.plan, args.faults
    );
    let sampler = LeaseSampler::start(reader.clone(), Duration::from_millis(200));
    let load = load::Load::start(plan, gateways.clone());
    let tty = std::io::stderr().is_terminal();
    let mut next_fault = 0;
    let mut kill_probes: Vec<(usize, f64, JoinHandle<KillReport>)> = Vec::new();
    let mut term_watches: Vec<JoinHandle<TermReport>> = Vec::new();
    let mut printed = Instant::now();
    let mut fault_error = None;
    while !load.is_done() {
        std::thread::sleep(Duration::from_millis(20));
        while let Some(fault) = faults.get(next_fault)
            && fault.at <= load.progress()
            && fault_error.is_none()
        {
            next_fault += 1;
            let pct = fault.at * 100.0;
            let result: Result<()> = match fault.action {
                Action::Kill => fleet.take_victim().and_then(|victim| {
                    gateways.remove(&victim.gateway);
                    let killed_at = Instant::now();
                    victim.kill()?;
                    if tty {
                        eprintln!();
                    }
                    eprintln!("==> SIGKILL runner {} at {pct:.0}%", victim.number);
                    let mut survivors = fleet.addresses();
                    survivors.remove(&victim.address);
                    kill_probes.push((
                        victim.number,
                        fault.at,
                        watch_recovery(
                            killed_at,
                            gateways.clone(),
                            plan.ids,
                            reader.clone(),
                            survivors,
                        ),
                    ));
                    fleet.killed.push(victim);
                    Ok(())
                }),
                Action::Term => fleet.take_victim().and_then(|victim| {
                    if tty {
                        eprintln!();
                    }
                    eprintln!("==> SIGTERM runner {} at {pct:.0}%", victim.number);
                    term_watches.push(watch_termination(
                        victim,
                        fault.at,
                        reader.clone(),
                        gateways.clone(),
                    )?);
                    Ok(())
                }),
                Action::Start => {
                    let started = Instant::now();
                    launcher.start().map(|runner| {
                        if tty {
                            eprintln!();
                        }
                        eprintln!(
                            "==> started runner {} at {pct:.0}% (ready after {})",
                            runner.number,
                            fmt_duration(started.elapsed())
                        );
                        report.faults.push((
                            fault.at,
                            format!(
                                "start runner {} at {pct:.0}%: ready (registered, holding its share) after {}",
                                runner.number,
                                fmt_duration(started.elapsed())
                            ),
                        ));
                        gateways.add(&runner.gateway);
                        fleet.live.push(runner);
                    })
                }
            };
            if let Err(e) = result {
                load.stop();
                fault_error = Some(e);
            }
        }
        let every = if tty {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(2)
        };
        if printed.elapsed() >= every {
            printed = Instant::now();
            if tty {
                eprint!("\r{}\x1b[K", load.line(gateways.len()));
            } else {
                eprintln!("{}", load.line(gateways.len()));
            }
        }
    }
    eprintln!(
        "{}{}",
        if tty { "\r" } else { "" },
        load.line(gateways.len())
    );
    report.load = load.finish();
    if let Some(e) = fault_error {
        return Err(e.context("a fault could not be injected"));
    }

    for (number, at, probe) in kill_probes {
        let Ok(recovery) = probe.join() else {
            report
                .violations
                .push("the SIGKILL watcher panicked".to_owned());
            continue;
        };
        match recovery.answered {
            Some(after) => report.faults.push((
                at,
                format!(
                    "SIGKILL runner {number} at {:.0}%: its shards were leased by live runners {} later, every entity answered again {} later (lease TTL {})",
                    at * 100.0,
                    recovery
                        .leased
                        .map_or_else(|| "not".to_owned(), fmt_duration),
                    fmt_duration(after),
                    fmt_duration(args.lease_ttl)
                ),
            )),
            None => report.violations.push(format!(
                "after SIGKILL of runner {number}, not every entity answered within 60 s"
            )),
        }
    }
    for watch in term_watches {
        let Ok(t) = watch.join() else {
            report
                .violations
                .push("the SIGTERM watcher panicked".to_owned());
            continue;
        };
        match (t.handoff, t.exited) {
            (Some(handoff), Some(exited)) => report.faults.push((
                t.at,
                format!(
                    "SIGTERM runner {} at {:.0}%: its shards were leased by the others {} after the signal; it exited after {}",
                    t.number,
                    t.at * 100.0,
                    fmt_duration(handoff),
                    fmt_duration(exited)
                ),
            )),
            _ => report.violations.push(format!(
                "after SIGTERM, runner {} did not hand its shards off or exit within 60 s",
                t.number
            )),
        }
        if let Some(status) = t.status
            && !status.success()
        {
            report.violations.push(format!(
                "runner {} exited with {status} after SIGTERM",
                t.number
            ));
        }
    }
    report.runners = format!(
        "{} started, {} more during the run; lease TTL {}; {:?} build",
        args.runners,
        launcher.started - args.runners as usize,
        fmt_duration(args.lease_ttl),
        args.profile
    );

    // The cluster after the faults.
    let live = fleet.addresses();
    let mut sampler_report = sampler.finish();
    match settle(&reader, &live, Duration::from_secs(30)) {
        Ok(snapshot) => {
            let mut per_runner: Vec<String> = fleet
                .live
                .iter()
                .map(|r| format!("runner {}: {}", r.number, snapshot.held_by_one(&r.address)))
                .collect();
            per_runner.sort();
            report.leases = format!(
                "{} samples: no epoch went back, no owner change without a new epoch; at the end {}/{} shards leased, each by a live runner ({})",
                sampler_report.samples,
                snapshot.leases.len(),
                snapshot.total,
                per_runner.join(", ")
            );
        }
        Err(e) => {
            report.leases = format!("{} samples", sampler_report.samples);
            report.violations.push(format!(
                "storage does not show every shard with one live owner: {e}"
            ));
        }
    }
    if sampler_report.samples == 0 {
        report
            .violations
            .push("the lease table could not be sampled during the run".to_owned());
    }
    let epoch_violations = std::mem::take(&mut sampler_report.violations);
    report.violations.extend(epoch_violations);

    let (answered, finals) = load::read_all(
        &gateways,
        plan.ids,
        Instant::now(),
        Duration::from_secs(30),
        2_000,
    );
    report.entities = format!("{}/{} counters answered get", finals.len(), plan.ids);
    if answered.is_none() {
        report.violations.push(format!(
            "{} of {} counters did not answer get within 30 s",
            plan.ids as usize - finals.len(),
            plan.ids
        ));
    }

    let counts = check_counts(&report.load.tallies, &finals);
    let lost: u64 = counts.lost.iter().map(|(_, n)| n).sum();
    let extra: u64 = counts.extra.iter().map(|(_, n)| n).sum();
    report.counts = format!(
        "{} ids: {lost} acknowledged increments lost (on {} ids), {extra} counted twice (on {} ids), {} ids with repeated replies; {} unknown-outcome increments were applied",
        report.load.tallies.len(),
        counts.lost.len(),
        counts.extra.len(),
        counts.repeated.len(),
        counts.applied_unknown
    );
    let sample = |v: &[(String, u64)]| {
        v.iter()
            .take(5)
            .map(|(id, n)| format!("{id} ({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut count_findings = Vec::new();
    if !counts.lost.is_empty() {
        count_findings.push(format!(
            "acknowledged increments were lost: {lost} on {} ids, e.g. {}",
            counts.lost.len(),
            sample(&counts.lost)
        ));
    }
    if !counts.repeated.is_empty() {
        count_findings.push(format!(
            "{} ids returned the same value to two acknowledged increments, e.g. {}",
            counts.repeated.len(),
            counts
                .repeated
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if args.lenient_counts {
        report.tolerated.extend(count_findings);
    } else {
        report.violations.extend(count_findings);
    }
    if !counts.extra.is_empty() {
        report.violations.push(format!(
            "increments were counted twice: {extra} on {} ids, e.g. {}",
            counts.extra.len(),
            sample(&counts.extra)
        ));
    }
    if report.load.failed() > 0 {
        report.violations.push(format!(
            "{} increments failed with answers a counter should never give",
            report.load.failed()
        ));
    }
    report.violations.extend(fleet.stop_all());
    Ok(report)
}
