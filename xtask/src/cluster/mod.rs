//! `cargo xtask test-cluster`: several real `shoal run` processes on shared storage, load through
//! every gateway, faults injected (SIGKILL, SIGTERM, a replacement), then the invariants:
//!
//! - (a) every acknowledged persisted increment is counted exactly once: each increment carries
//!   its own `Idempotency-Key` and is resent with it until acknowledged, so each counter's final
//!   value must equal its acknowledged increments (and no two of them may return the same value,
//!   and no `get` may read less than an increment acknowledged before it was sent);
//! - (b) every entity answers a `get` after the faults;
//! - (c) storage shows every shard leased by exactly one live runner;
//! - (d) no shard's epoch ever went back, and no shard changed owner without a new epoch (the
//!   lease table is sampled during the run);
//!
//! and the runners stopped with SIGTERM exited cleanly. Identity faults check that a second
//! process given a live runner's address is refused, and that a client-only process holding a
//! live runner's machine id changes nothing to (a) (see `identity`). It prints a report
//! (throughput, latency, recovery after SIGKILL, handoff after SIGTERM) and fails when an
//! invariant is violated.

mod faults;
mod fleet;
mod http;
mod identity;
mod load;
mod options;
mod report;
mod runners;
mod status;
mod storage;
mod verify;

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use faults::{KillReport, TermReport, WATCH_FOR, watch_recovery, watch_termination};
use fleet::Fleet;
pub(crate) use options::ClusterArgs;
use options::{Action, Fault, Profile};
use report::{Report, fmt_duration};
use runners::{Gateways, Launcher, SharedGateways};
use status::{LeaseSampler, Snapshot, StatusReader};
use storage::ClusterStorage;
use verify::check_counts;

/// Runs the cluster test; fails when an invariant is violated.
pub(crate) fn run(args: &ClusterArgs) -> Result<()> {
    let faults = options::faults_for(&args.faults, args.storage)?;
    options::check_schedule(&faults, args.runners)?;
    let binary = build(args.profile, args.no_build)?;
    let dir = std::env::temp_dir().join(format!("shoal-test-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let storage = ClusterStorage::create(args.storage, &dir, args.keep)?;
    let outcome = drive(args, &faults, &binary, &dir, &storage);
    let storage_label = storage.url.clone();
    drop(storage);
    match outcome {
        Ok(report) => {
            println!("{}", report.render());
            if !report.passed() {
                bail!(
                    "test-cluster: {} invariant(s) violated (see VIOLATION above); runner logs \
                     are in {}",
                    report.violations.len(),
                    dir.display()
                );
            }
            if args.keep {
                println!(
                    "kept: runner logs in {}, storage {storage_label}",
                    dir.display()
                );
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

/// Builds the `shoal` binary (unless `no_build`) and returns its path.
fn build(profile: Profile, no_build: bool) -> Result<PathBuf> {
    if !no_build {
        let mut argv = vec!["cargo", "build"];
        if profile == Profile::Release {
            argv.push("--release");
        }
        argv.extend(["-p", "shoal-runner", "--locked"]);
        crate::process::step("build the shoal binary", &argv, &[])?;
    }
    let out = Command::new("cargo")
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("could not run cargo metadata")?;
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let target = meta["target_directory"]
        .as_str()
        .context("cargo metadata has no target_directory")?;
    let dir = match profile {
        Profile::Release => "release",
        Profile::Debug => "debug",
    };
    let binary = Path::new(target).join(dir).join("shoal");
    if !binary.exists() {
        bail!(
            "{} was not built{}",
            binary.display(),
            if no_build {
                " (build it, or leave out --no-build)"
            } else {
                ""
            }
        );
    }
    Ok(binary)
}

/// Waits until storage shows every shard leased by a live runner, and every live runner
/// registered.
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

/// A tag that makes this run's idempotency keys unique.
fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("tc{}-{nanos:x}", std::process::id())
}

/// What the fault loop started and must collect.
#[derive(Default)]
struct Watches {
    kills: Vec<(usize, f64, JoinHandle<KillReport>)>,
    terms: Vec<JoinHandle<TermReport>>,
    duplicates: Vec<JoinHandle<identity::DuplicateReport>>,
}

/// Everything a fault needs.
struct Cluster<'a> {
    fleet: Fleet,
    launcher: Launcher,
    gateways: SharedGateways,
    reader: StatusReader,
    plan: load::Plan,
    report: &'a mut Report,
    watches: Watches,
    tty: bool,
}

impl Cluster<'_> {
    fn inject(&mut self, fault: Fault) -> Result<()> {
        let pct = fault.at * 100.0;
        if self.tty {
            eprintln!();
        }
        match fault.action {
            Action::Kill => {
                let victim = self.fleet.take_victim()?;
                self.gateways.remove(&victim.gateway);
                let killed_at = Instant::now();
                victim.kill()?;
                eprintln!("==> SIGKILL runner {} at {pct:.0}%", victim.number);
                let mut survivors = self.fleet.addresses();
                survivors.remove(&victim.address);
                self.watches.kills.push((
                    victim.number,
                    fault.at,
                    watch_recovery(
                        killed_at,
                        self.gateways.clone(),
                        self.plan.ids,
                        self.reader.clone(),
                        survivors,
                    ),
                ));
                self.fleet.killed.push(victim);
            }
            Action::Term => {
                let victim = self.fleet.take_victim()?;
                eprintln!("==> SIGTERM runner {} at {pct:.0}%", victim.number);
                self.watches.terms.push(watch_termination(
                    victim,
                    fault.at,
                    self.reader.clone(),
                    self.gateways.clone(),
                )?);
            }
            Action::Start => {
                let started = Instant::now();
                let runner = self.launcher.start()?;
                let ready = fmt_duration(started.elapsed());
                eprintln!(
                    "==> started runner {} at {pct:.0}% (ready after {ready})",
                    runner.number
                );
                self.report.faults.push((
                    fault.at,
                    format!(
                        "start runner {} at {pct:.0}%: ready (registered, holding its share) after {ready}",
                        runner.number
                    ),
                ));
                self.gateways.add(&runner.gateway);
                self.fleet.live.push(runner);
            }
            Action::Duplicate => {
                let victim = self
                    .fleet
                    .live
                    .first()
                    .context("no live runner to duplicate")?
                    .address
                    .clone();
                eprintln!(
                    "==> a second process advertising {victim} (runner 1's address) at {pct:.0}%"
                );
                self.watches.duplicates.push(identity::start_duplicate(
                    &self.launcher,
                    &victim,
                    fault.at,
                )?);
            }
            Action::Collide => {
                let victim = self
                    .fleet
                    .live
                    .first()
                    .context("no live runner to collide with")?
                    .address
                    .clone();
                eprintln!(
                    "==> a client-only gateway on the machine id of runner {victim} at {pct:.0}%"
                );
                let collision =
                    identity::collide(&mut self.launcher, &self.reader, &victim, fault.at)?;
                eprintln!("    {}", collision.line);
                self.report.faults.push((fault.at, collision.line));
                self.gateways.add(&collision.client.gateway);
                self.fleet.clients.push(collision.client);
            }
        }
        Ok(())
    }
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
        "==> test-cluster: starting {} runners on {} (logs in {})",
        args.runners,
        storage.label,
        dir.display()
    );
    for _ in 0..args.runners {
        let runner = launcher.start()?;
        eprintln!(
            "    runner {} at {} (gateway {}, metrics {})",
            runner.number, runner.address, runner.gateway, runner.metrics
        );
        gateways.add(&runner.gateway);
        fleet.live.push(runner);
    }
    settle(&reader, &fleet.addresses(), WATCH_FOR)
        .map_err(|e| anyhow::anyhow!("the cluster never settled: {e}"))?;

    let plan = load::Plan {
        requests: args.requests,
        ids: args.ids,
        concurrency: args.concurrency,
    };
    let mut report = Report {
        storage: storage.label.clone(),
        plan: format!(
            "{} requests ({} persisted increments, each with an Idempotency-Key and resent until acknowledged; {} volatile gets) over {} ids from {} callers, round-robin over every gateway",
            plan.requests,
            plan.increments(),
            plan.requests - plan.increments(),
            plan.ids,
            plan.concurrency
        ),
        ..Report::default()
    };
    eprintln!(
        "==> test-cluster: load: {} requests over {} ids from {} callers; faults: {}",
        plan.requests, plan.ids, plan.concurrency, args.faults
    );
    let sampler = LeaseSampler::start(reader.clone(), Duration::from_millis(200));
    let load = load::Load::start(plan, gateways.clone(), &run_id());
    let tty = std::io::stderr().is_terminal();
    let mut cluster = Cluster {
        fleet,
        launcher,
        gateways: gateways.clone(),
        reader: reader.clone(),
        plan,
        report: &mut report,
        watches: Watches::default(),
        tty,
    };
    let mut next_fault = 0;
    let mut printed = Instant::now();
    let mut fault_error = None;
    let every = if tty {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(2)
    };
    while !load.is_done() {
        std::thread::sleep(Duration::from_millis(20));
        while fault_error.is_none()
            && let Some(&fault) = faults.get(next_fault)
            && fault.at <= load.progress()
        {
            next_fault += 1;
            if let Err(e) = cluster.inject(fault) {
                load.stop();
                fault_error = Some(e);
            }
        }
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
    let Cluster {
        mut fleet,
        launcher,
        watches,
        ..
    } = cluster;
    report.load = load.finish();
    if let Some(e) = fault_error {
        return Err(e.context("a fault could not be injected"));
    }
    for fault in &faults[next_fault..] {
        report.violations.push(format!(
            "the {:?} fault at {:.0}% was not injected: the load ended first (send more --requests)",
            fault.action,
            fault.at * 100.0
        ));
    }
    collect_fault_watches(&mut report, watches, args.lease_ttl);
    // The load is over: the client-only gateways leave the rotation for the final reads.
    for client in &fleet.clients {
        gateways.remove(&client.gateway);
    }
    report.runners = format!(
        "{} started, {} more during the run; lease TTL {}; {:?} build",
        args.runners,
        launcher.started - args.runners as usize,
        fmt_duration(args.lease_ttl),
        args.profile
    );

    // (c) and (d): the leases after the faults, and the samples taken during the run.
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
                "{} samples during the run ({} unreadable): no epoch went back, no owner change without a new epoch; at the end {}/{} shards leased, each by one live runner ({})",
                sampler_report.samples,
                sampler_report.read_errors,
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
    report.violations.append(&mut sampler_report.violations);

    // (b): every entity answers.
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

    // (a): counts.
    check_load(&mut report, plan.ids, &finals);
    report.violations.extend(fleet.stop_all());
    Ok(report)
}

/// Collects what the SIGKILL, SIGTERM and duplicate-address watchers measured into the report.
fn collect_fault_watches(report: &mut Report, watches: Watches, lease_ttl: Duration) {
    for watch in watches.duplicates {
        match watch.join() {
            Ok(duplicate) => match duplicate.outcome {
                Ok(what) => report.faults.push((
                    duplicate.at,
                    format!(
                        "duplicate at {:.0}%: a second process advertising {}: {what}",
                        duplicate.at * 100.0,
                        duplicate.address
                    ),
                )),
                Err(violation) => report.violations.push(violation),
            },
            Err(_) => report
                .violations
                .push("the duplicate-address watcher panicked".to_owned()),
        }
    }
    for (number, at, probe) in watches.kills {
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
                    "SIGKILL runner {number} at {:.0}%: every entity answered again {} later; its shards were leased by live runners after {} (lease TTL {})",
                    at * 100.0,
                    fmt_duration(after),
                    recovery
                        .leased
                        .map_or_else(|| "never".to_owned(), fmt_duration),
                    fmt_duration(lease_ttl)
                ),
            )),
            None => report.violations.push(format!(
                "after SIGKILL of runner {number}, not every entity answered within {} s",
                WATCH_FOR.as_secs()
            )),
        }
    }
    for watch in watches.terms {
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
                    "SIGTERM runner {} at {:.0}%: handoff (its shards leased by the others) {} after the signal; it exited after {}",
                    t.number,
                    t.at * 100.0,
                    fmt_duration(handoff),
                    fmt_duration(exited)
                ),
            )),
            _ => report.violations.push(format!(
                "after SIGTERM, runner {} did not hand its shards off or exit within {} s",
                t.number,
                WATCH_FOR.as_secs()
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
}

/// Invariant (a), and the requests that were never answered or failed.
fn check_load(report: &mut Report, ids: u32, finals: &std::collections::BTreeMap<u32, i64>) {
    let counts = check_counts(ids, &report.load.tallies, finals);
    let lost: u64 = counts.lost.iter().map(|(_, n)| n).sum();
    let extra: u64 = counts.extra.iter().map(|(_, n)| n).sum();
    report.counts = format!(
        "{}/{ids} counters equal their acknowledged increments; {lost} acknowledged increments lost (on {} ids), {extra} counted twice (on {} ids), {} ids with repeated replies, {} stale reads",
        counts.exact,
        counts.lost.len(),
        counts.extra.len(),
        counts.repeated.len(),
        report.load.stale_reads.len()
    );
    let sample = |v: &[(String, u64)]| {
        v.iter()
            .take(5)
            .map(|(id, n)| format!("{id} ({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let l = &report.load;
    let mut violations = Vec::new();
    if !counts.lost.is_empty() {
        violations.push(format!(
            "(a) acknowledged increments were lost: {lost} on {} ids, e.g. {}",
            counts.lost.len(),
            sample(&counts.lost)
        ));
    }
    if !counts.extra.is_empty() {
        violations.push(format!(
            "(a) increments were counted twice: {extra} on {} ids, e.g. {}",
            counts.extra.len(),
            sample(&counts.extra)
        ));
    }
    if !counts.repeated.is_empty() {
        violations.push(format!(
            "(a) {} ids returned the same value to two acknowledged increments, e.g. {}",
            counts.repeated.len(),
            counts.repeated[..counts.repeated.len().min(5)].join(", ")
        ));
    }
    if !l.stale_reads.is_empty() {
        violations.push(format!(
            "(a) {} gets read less than an increment acknowledged before they were sent, e.g. {}",
            l.stale_reads.len(),
            l.stale_reads[..l.stale_reads.len().min(3)].join("; ")
        ));
    }
    if l.unacked() > 0 {
        violations.push(format!(
            "{} increments were not acknowledged within {} s of resending",
            l.unacked(),
            load::RESEND_FOR.as_secs()
        ));
    }
    if l.failed() > 0 {
        violations.push(format!(
            "{} requests failed or were never answered (see `failed`)",
            l.failed()
        ));
    }
    report.violations.extend(violations);
}
