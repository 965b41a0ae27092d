//! `cargo xtask test-cluster`: several real `shoal run` processes on shared storage, load through
//! every gateway, faults injected (SIGKILL, SIGTERM, a replacement, identity faults, SIGSTOP,
//! partitions, storage latency and cuts, a Postgres restart), then the invariants:
//!
//! - (a) every acknowledged persisted increment is counted exactly once: each increment carries
//!   its own `Idempotency-Key` and is resent with it until acknowledged, so each counter's final
//!   value must equal its acknowledged increments (and no two of them may return the same value,
//!   and no `get` may read less than an increment acknowledged before it was sent);
//! - (b) every entity answers a `get` after the faults;
//! - (c) storage shows every shard leased by exactly one live runner;
//! - (d) no shard's epoch ever went back, and no shard changed owner without a new epoch (the
//!   lease table is sampled during the run);
//! - (e) ownership seen from the outside: every reply says which runner process and lease epoch
//!   served it; along each counter's increments epochs never go back, no reply from an older
//!   epoch was served after a newer epoch had answered, and one epoch is one process (see
//!   `ownership`);
//!
//! and the runners stopped with SIGTERM exited cleanly. Identity faults check that a second
//! process given a live runner's address is refused, and that a client-only process holding a
//! live runner's machine id changes nothing to (a) (see `identity`). It prints a report
//! (throughput, latency, per fault the time until every entity answered again, handoff after
//! SIGTERM) and fails when an invariant is violated; recovery times are reported, never
//! asserted. `--soak` runs the load for a given time with faults drawn from a seed (see `soak`).

mod faults;
mod findings;
mod fleet;
mod http;
mod identity;
mod inject;
mod lasting;
mod links;
mod load;
mod options;
mod ownership;
mod peer;
mod pgserver;
mod probe;
mod proxy;
mod report;
mod runners;
mod served;
mod soak;
mod status;
mod storage;
mod verify;

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use faults::{WATCH_FOR, Watch};
use findings::{FaultLog, fault_before, write_pause};
use fleet::Fleet;
use inject::Cluster;
use links::Links;
pub(crate) use options::ClusterArgs;
use options::{Action, Fault, Profile};
use report::{Report, fmt_duration};
use runners::{Gateways, Launcher, SharedGateways};
use served::SharedLedger;
use status::{LeaseSampler, Snapshot, StatusReader};
use storage::ClusterStorage;
use verify::check_counts;

/// The schedule of a run, and the seed it was drawn from (soak runs).
struct Schedule {
    faults: Vec<Fault>,
    seed: Option<u64>,
}

/// Runs the cluster test; fails when an invariant is violated.
pub(crate) fn run(args: &ClusterArgs) -> Result<()> {
    let schedule = match args.soak {
        Some(length) => {
            let seed = args.seed.unwrap_or_else(soak::fresh_seed);
            eprintln!(
                "==> test-cluster: soak for {} with seed {seed} (replay: cargo xtask test-cluster \
                 --soak {} --seed {seed})",
                fmt_duration(length),
                options::short_duration(length)
            );
            Schedule {
                faults: soak::schedule(seed, length, args.lease_ttl, args.storage),
                seed: Some(seed),
            }
        }
        None => Schedule {
            faults: options::faults_for(&args.faults, args.storage)?,
            seed: None,
        },
    };
    let faults = &schedule.faults;
    options::check_schedule(faults, args.runners)?;
    let binary = build(args.profile, args.no_build)?;
    let partitions = args.proxies || faults.iter().any(|f| f.action == Action::Partition);
    if partitions {
        check_advertise_port(&binary)?;
    }
    let dir = std::env::temp_dir().join(format!("shoal-test-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let storage = if faults.iter().any(|f| f.action.needs_own_postgres()) {
        ClusterStorage::own_server(&dir, args.keep)?
    } else {
        ClusterStorage::create(args.storage, &dir, args.keep)?
    };
    let storage_proxy = args.proxies || faults.iter().any(|f| f.action.needs_storage_proxy());
    let links = Arc::new(Links::start(
        if storage_proxy {
            storage.server_address()?
        } else {
            None
        },
        partitions,
    )?);
    let outcome = drive(args, &schedule, &binary, &dir, &storage, &links);
    drop(links);
    let storage_label = storage.url.clone();
    drop(storage);
    match outcome {
        Ok(report) => {
            println!("{}", report.render());
            if !report.passed() {
                bail!(
                    "test-cluster: {} invariant(s) violated (see VIOLATION above); runner logs \
                     are in {}{}",
                    report.violations.len(),
                    dir.display(),
                    schedule
                        .seed
                        .map_or_else(String::new, |seed| format!("; soak seed {seed}"))
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

/// Partitions need runners that advertise a port other than the one they listen on.
fn check_advertise_port(binary: &Path) -> Result<()> {
    let out = Command::new(binary)
        .args(["run", "--help"])
        .output()
        .with_context(|| format!("could not run {} run --help", binary.display()))?;
    if !String::from_utf8_lossy(&out.stdout).contains("--advertise-port") {
        bail!(
            "the partition fault needs `shoal run --advertise-port` (runners advertise their \
             proxy's port); {} has no such option",
            binary.display()
        );
    }
    Ok(())
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

fn drive(
    args: &ClusterArgs,
    schedule: &Schedule,
    binary: &Path,
    dir: &Path,
    storage: &ClusterStorage,
    links: &Arc<Links>,
) -> Result<Report> {
    let faults = &schedule.faults;
    let reader = StatusReader {
        binary: binary.to_path_buf(),
        storage_url: storage.url.clone(),
    };
    let mut launcher = Launcher {
        binary: binary.to_path_buf(),
        storage_url: links.storage_url(&storage.url)?,
        direct_url: storage.url.clone(),
        links: links.clone(),
        lease_ttl: args.lease_ttl,
        dir: dir.to_path_buf(),
        started: 0,
    };
    let gateways: SharedGateways = Arc::new(Gateways::default());
    let ledger = SharedLedger::default();
    let log = Arc::new(FaultLog::default());
    let mut fleet = Fleet::default();
    let mut through = Vec::new();
    if launcher.storage_url != storage.url {
        through.push(format!(
            "storage through a proxy at {}",
            launcher.storage_url
        ));
    }
    if links.runner_proxies() {
        through.push("runner-to-runner traffic through a proxy per runner".to_owned());
    }
    eprintln!(
        "==> test-cluster: starting {} runners on {}{} (logs in {})",
        args.runners,
        storage.label,
        if through.is_empty() {
            String::new()
        } else {
            format!("; {}", through.join("; "))
        },
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
        requests: if args.soak.is_some() {
            u64::MAX
        } else {
            args.request_count()
        },
        ids: args.ids,
        concurrency: args.concurrency,
        run_for: args.soak,
    };
    let how_many = match args.soak {
        Some(length) => format!(
            "requests for {} (a soak; seed {})",
            fmt_duration(length),
            schedule.seed.unwrap_or_default()
        ),
        None => format!(
            "{} requests ({} persisted increments, {} volatile gets)",
            plan.requests,
            plan.increments(),
            plan.requests - plan.increments()
        ),
    };
    let mut report = Report {
        storage: storage.label.clone(),
        plan: format!(
            "{how_many} over {} ids from {} callers, round-robin over every gateway; each increment with an Idempotency-Key and resent until acknowledged; one get in {}",
            plan.ids,
            plan.concurrency,
            load::GET_EVERY
        ),
        ..Report::default()
    };
    let listed: Vec<String> = faults.iter().map(ToString::to_string).collect();
    eprintln!(
        "==> test-cluster: load: {how_many} over {} ids from {} callers; faults: {}",
        plan.ids,
        plan.concurrency,
        if listed.is_empty() {
            "none".to_owned()
        } else {
            listed.join(",")
        }
    );
    let sampler = LeaseSampler::start(reader.clone(), Duration::from_millis(200));
    let load = load::Load::start(plan, gateways.clone(), &run_id(), &ledger);
    let tty = std::io::stderr().is_terminal() && args.soak.is_none();
    let mut cluster = Cluster {
        fleet,
        launcher,
        watch: Watch {
            gateways: gateways.clone(),
            ids: plan.ids,
            ledger: ledger.clone(),
            reader: reader.clone(),
            lease_ttl: args.lease_ttl,
            log: log.clone(),
        },
        links: links.clone(),
        server: storage.server.clone(),
        rng: schedule
            .seed
            .map(|seed| soak::Rng::new(seed ^ 0x5eed_0f71_c71a)),
        threads: Vec::new(),
    };
    let mut next_fault = 0;
    let mut printed = Instant::now();
    let mut fault_error = None;
    let every = match (tty, args.soak) {
        (_, Some(_)) => Duration::from_secs(5),
        (true, None) => Duration::from_millis(250),
        (false, None) => Duration::from_secs(2),
    };
    let mut progress = args.soak.map(soak::Progress::new);
    while !load.is_done() {
        std::thread::sleep(Duration::from_millis(20));
        // A fault waits for those before it to end and for the cluster to recover from them.
        while fault_error.is_none()
            && !log.busy()
            && let Some(&fault) = faults.get(next_fault)
            && fault.at <= load.progress()
        {
            next_fault += 1;
            if tty {
                eprintln!();
            }
            if let Err(e) = cluster.inject(fault) {
                load.stop();
                fault_error = Some(e.context(format!("fault {fault}")));
            }
        }
        if printed.elapsed() >= every {
            printed = Instant::now();
            let line = match &mut progress {
                Some(progress) => progress.line(&load.snapshot(), &log, gateways.len()),
                None => load.line(gateways.len()),
            };
            if tty {
                eprint!("\r{line}\x1b[K");
            } else {
                eprintln!("{line}");
            }
        }
    }
    if progress.is_none() {
        eprintln!(
            "{}{}",
            if tty { "\r" } else { "" },
            load.line(gateways.len())
        );
    }
    report.load = load.finish();
    let Cluster {
        mut fleet,
        launcher,
        threads,
        ..
    } = cluster;
    eprintln!("==> test-cluster: load done; waiting for the faults' watchers");
    for thread in threads {
        if thread.join().is_err() {
            report
                .violations
                .push("a fault's watcher panicked".to_owned());
        }
    }
    if let Some(e) = fault_error {
        return Err(e.context("a fault could not be injected"));
    }
    for fault in &faults[next_fault..] {
        report.not_injected.push(fault.to_string());
        // A soak's schedule slides when recoveries take long; its last faults may not fit.
        if args.soak.is_none() {
            report.violations.push(format!(
                "the fault {fault} was not injected: the load ended first (send more --requests)"
            ));
        }
    }
    report.findings = log.take();
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
        &ledger,
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
    // (e): ownership, from every reply of the run.
    check_ownership(&mut report, &ledger);
    for finding in &report.findings {
        report.violations.extend(finding.violations.iter().cloned());
    }
    report.violations.extend(fleet.stop_all());
    Ok(report)
}

/// Invariant (e), and per fault the longest pause in acknowledged increments.
fn check_ownership(report: &mut Report, ledger: &SharedLedger) {
    let mut served = ledger.take();
    served.sort_by_key(|s| s.received);
    let check = ownership::check(&served);
    report.ownership = format!(
        "{} replies checked ({} acknowledged increments, {} gets) from {} owners ({} runner processes, each with its lease epochs); {} increments accepted under an older epoch, {} overlapping owners, {} epochs served by two processes",
        check.writes + check.reads,
        check.writes,
        check.reads,
        check.owners,
        check.processes,
        check.stale_writes.len(),
        check.overlaps.len(),
        check.shared_epochs.len()
    );
    report.ownership_after = vec![0; report.findings.len()];
    for violation in check.violations() {
        if let Some(finding) = fault_before(&report.findings, violation.at)
            && let Some(index) = report
                .findings
                .iter()
                .position(|f| f.started == finding.started)
        {
            report.ownership_after[index] += 1;
        }
    }
    report.write_pauses = report
        .findings
        .iter()
        .map(|f| {
            f.watched
                .map(|watched| write_pause(&served, f.started, f.started + watched))
        })
        .collect();
    let after = |at: Instant| {
        fault_before(&report.findings, at).map_or_else(
            || " (before any fault)".to_owned(),
            |f| format!(" (after: {})", f.fault),
        )
    };
    let mut violations = Vec::new();
    for (what, list) in [
        (
            "increments accepted under an older epoch",
            &check.stale_writes,
        ),
        ("owners serving at once", &check.overlaps),
        ("epochs served by two processes", &check.shared_epochs),
    ] {
        if list.is_empty() {
            continue;
        }
        let samples: Vec<String> = list
            .iter()
            .take(5)
            .map(|v| format!("{}{}", v.text, after(v.at)))
            .collect();
        violations.push(format!(
            "(e) {} {what}, e.g. {}",
            list.len(),
            samples.join("; ")
        ));
    }
    report.violations.extend(violations);
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
