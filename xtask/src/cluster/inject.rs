//! Injecting each fault into the running cluster, and starting what watches it.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rustix::process::Signal;

use super::faults::{Watch, watch_recovery, watch_termination};
use super::findings::Finding;
use super::fleet::Fleet;
use super::identity;
use super::lasting::{Hold, hold};
use super::links::Links;
use super::options::{Action, Fault};
use super::pgserver::PgServer;
use super::probe::Healing;
use super::proxy::Mode;
use super::report::fmt_duration;
use super::runners::{Launcher, signal_pid};
use super::soak::Rng;

/// Everything a fault needs.
pub(crate) struct Cluster {
    pub(crate) fleet: Fleet,
    pub(crate) launcher: Launcher,
    pub(crate) watch: Watch,
    pub(crate) links: Arc<Links>,
    /// The run's own Postgres server, when it has one.
    pub(crate) server: Option<Arc<PgServer>>,
    /// Draws the runner a fault acts on when the schedule names none (soak runs); else the
    /// most recently started runner.
    pub(crate) rng: Option<Rng>,
    /// The threads watching faults, joined before the final checks.
    pub(crate) threads: Vec<JoinHandle<()>>,
}

/// A runner a fault acts on without stopping it.
struct Target {
    number: usize,
    pid: u32,
    gateway: String,
}

impl Cluster {
    /// The index in `fleet.live` of the runner a fault acts on: `requested`, else one drawn, else
    /// the most recently started. Another runner must keep serving.
    fn pick(&mut self, requested: Option<usize>, action: Action) -> Result<usize> {
        let live = &self.fleet.live;
        if live.len() < 2 {
            bail!(
                "{}: only {} runner running; another must keep serving",
                action.name(),
                live.len()
            );
        }
        match (requested, &mut self.rng) {
            (Some(number), _) => live
                .iter()
                .position(|r| r.number == number)
                .with_context(|| format!("{}: runner {number} is not running", action.name())),
            (None, Some(rng)) => Ok(rng.below(live.len() as u64) as usize),
            (None, None) => Ok(live.len() - 1),
        }
    }

    fn target(&mut self, requested: Option<usize>, action: Action) -> Result<Target> {
        let index = self.pick(requested, action)?;
        let runner = &self.fleet.live[index];
        Ok(Target {
            number: runner.number,
            pid: runner.pid,
            gateway: runner.gateway.clone(),
        })
    }

    pub(crate) fn inject(&mut self, fault: Fault) -> Result<()> {
        let at = fault.at;
        let pct = at * 100.0;
        let log = self.watch.log.clone();
        let lease_ttl = self.watch.lease_ttl;
        match fault.action {
            Action::Kill => {
                let index = self.pick(fault.runner, fault.action)?;
                let victim = self.fleet.live.remove(index);
                self.watch.gateways.remove(&victim.gateway);
                let active = log.injected();
                let killed_at = Instant::now();
                victim.kill()?;
                eprintln!("==> SIGKILL runner {} at {pct:.0}%", victim.number);
                let survivors = self.fleet.addresses();
                self.threads.push(watch_recovery(
                    self.watch.clone(),
                    victim.number,
                    at,
                    killed_at,
                    survivors,
                    active,
                ));
                self.fleet.killed.push(victim);
            }
            Action::Term => {
                let index = self.pick(fault.runner, fault.action)?;
                let victim = self.fleet.live.remove(index);
                eprintln!("==> SIGTERM runner {} at {pct:.0}%", victim.number);
                log.note();
                self.threads.push(watch_termination(
                    victim,
                    at,
                    self.watch.reader.clone(),
                    self.watch.gateways.clone(),
                    log,
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
                log.note();
                log.push(Finding::line(
                    at,
                    started,
                    format!("start runner {}", runner.number),
                    format!(
                        "start runner {} at {pct:.0}%: ready (registered, holding its share) after {ready}",
                        runner.number
                    ),
                ));
                self.watch.gateways.add(&runner.gateway);
                self.fleet.live.push(runner);
            }
            Action::Duplicate => {
                let victim = self
                    .fleet
                    .live
                    .first()
                    .context("no live runner to duplicate")?;
                let (number, address) = (victim.number, victim.address.clone());
                eprintln!(
                    "==> a second process advertising {address} (runner {number}'s address) at {pct:.0}%"
                );
                let started = Instant::now();
                let watcher = identity::start_duplicate(&self.launcher, &address, at)?;
                log.note();
                self.threads.push(std::thread::spawn(move || {
                    let mut finding = Finding::line(
                        at,
                        started,
                        format!("duplicate of runner {number}"),
                        String::new(),
                    );
                    match watcher.join() {
                        Ok(duplicate) => match duplicate.outcome {
                            Ok(what) => {
                                finding.line = format!(
                                    "duplicate at {:.0}%: a second process advertising {}: {what}",
                                    duplicate.at * 100.0,
                                    duplicate.address
                                );
                            }
                            Err(violation) => finding.violations.push(violation),
                        },
                        Err(_) => finding
                            .violations
                            .push("the duplicate-address watcher panicked".to_owned()),
                    }
                    log.push(finding);
                }));
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
                let started = Instant::now();
                let collision =
                    identity::collide(&mut self.launcher, &self.watch.reader, &victim, at)?;
                eprintln!("    {}", collision.line);
                log.note();
                log.push(Finding::line(
                    at,
                    started,
                    format!("collide with {victim}"),
                    collision.line,
                ));
                self.watch.gateways.add(&collision.client.gateway);
                self.fleet.clients.push(collision.client);
            }
            Action::Freeze => {
                let target = self.target(fault.runner, fault.action)?;
                let length = fault.length(lease_ttl);
                let name = format!(
                    "freeze runner {} for {}",
                    target.number,
                    fmt_duration(length)
                );
                // Its gateway leaves the rotation: callers would hang on it.
                self.watch.gateways.remove(&target.gateway);
                let active = log.injected();
                let started = Instant::now();
                signal_pid(target.pid, Signal::STOP)?;
                eprintln!(
                    "==> SIGSTOP runner {} at {pct:.0}% for {}",
                    target.number,
                    fmt_duration(length)
                );
                let probe = self.watch.probe(started, Healing::ToldApart, None);
                let gateways = self.watch.gateways.clone();
                let Target {
                    number,
                    pid,
                    gateway,
                    ..
                } = target;
                self.threads.push(hold(
                    Hold {
                        at,
                        fault: name,
                        started,
                        length,
                        target: Some(self.watch.target()),
                        words: ("SIGSTOP", "SIGCONT"),
                        probe,
                    },
                    self.watch.clone(),
                    active,
                    move || {
                        signal_pid(pid, Signal::CONT)?;
                        gateways.add(&gateway);
                        eprintln!("==> SIGCONT runner {number}");
                        Ok(String::new())
                    },
                ));
            }
            Action::Partition => {
                let target = self.target(fault.runner, fault.action)?;
                let length = fault.length(lease_ttl);
                let name = format!(
                    "partition runner {} for {}",
                    target.number,
                    fmt_duration(length)
                );
                let active = log.injected();
                let started = Instant::now();
                self.links.partition(target.number, target.pid)?;
                eprintln!(
                    "==> partition: runner {}'s runner-to-runner traffic blackholed both ways at {pct:.0}% for {}",
                    target.number,
                    fmt_duration(length)
                );
                // Measured through the other side's gateways: the partitioned runner's cannot
                // reach the others' entities.
                let probe =
                    self.watch
                        .probe(started, Healing::ToldApart, Some(target.gateway.clone()));
                let links = self.links.clone();
                let number = target.number;
                self.threads.push(hold(
                    Hold {
                        at,
                        fault: name,
                        started,
                        length,
                        target: Some(self.watch.target()),
                        words: ("the partition began", "it healed"),
                        probe,
                    },
                    self.watch.clone(),
                    active,
                    move || {
                        links.heal_partition();
                        eprintln!("==> partition of runner {number} healed");
                        Ok(String::new())
                    },
                ));
            }
            Action::StorageLatency | Action::StorageCut => {
                let length = fault.length(lease_ttl);
                let (mode, name, words) = if fault.action == Action::StorageLatency {
                    let delay = fault.delay();
                    (
                        Mode::Delay(delay),
                        format!(
                            "storage latency {} for {}",
                            fmt_duration(delay),
                            fmt_duration(length)
                        ),
                        ("it began", "it ended"),
                    )
                } else {
                    (
                        Mode::Cut,
                        format!("storage cut for {}", fmt_duration(length)),
                        ("the cut began", "storage came back"),
                    )
                };
                let active = log.injected();
                let started = Instant::now();
                self.links.set_storage(mode)?;
                eprintln!("==> {name} at {pct:.0}%");
                let probe = self.watch.probe(started, Healing::ToldApart, None);
                let links = self.links.clone();
                self.threads.push(hold(
                    Hold {
                        at,
                        fault: name,
                        started,
                        length,
                        target: None,
                        words,
                        probe,
                    },
                    self.watch.clone(),
                    active,
                    move || {
                        links.set_storage(Mode::Forward)?;
                        eprintln!("==> storage link forwarding again");
                        Ok(String::new())
                    },
                ));
            }
            Action::PgRestart => {
                let server = self
                    .server
                    .clone()
                    .context("pg-restart needs a Postgres server of the run's own")?;
                let active = log.injected();
                let started = Instant::now();
                eprintln!("==> restarting Postgres (fast mode) at {pct:.0}%");
                let probe = self.watch.probe(started, Healing::Told, None);
                self.threads.push(hold(
                    Hold {
                        at,
                        fault: "Postgres restart (fast)".to_owned(),
                        started,
                        length: std::time::Duration::ZERO,
                        target: None,
                        words: ("the restart began", "the restart"),
                        probe,
                    },
                    self.watch.clone(),
                    active,
                    move || {
                        let took = server.restart()?;
                        eprintln!(
                            "==> Postgres accepts connections again after {}",
                            fmt_duration(took)
                        );
                        Ok(format!(
                            "the server accepted connections again {} after the restart began",
                            fmt_duration(took)
                        ))
                    },
                ));
            }
        }
        Ok(())
    }
}
