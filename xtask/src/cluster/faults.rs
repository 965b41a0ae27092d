//! Watching what a fault does: recovery after a SIGKILL, handoff after a SIGTERM. Each watcher
//! pushes its finding to the run's fault log.

use std::collections::HashSet;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::findings::{Active, Finding, SharedLog};
use super::probe::{Healing, Probe};
use super::report::fmt_duration;
use super::runners::{RunnerProcess, SharedGateways};
use super::served::SharedLedger;
use super::status::StatusReader;

/// How long a fault's effects are watched before they count as never completed.
pub(crate) const WATCH_FOR: Duration = Duration::from_secs(60);

/// What a fault's watcher needs.
#[derive(Clone)]
pub(crate) struct Watch {
    pub(crate) gateways: SharedGateways,
    pub(crate) ids: u32,
    pub(crate) ledger: SharedLedger,
    pub(crate) reader: StatusReader,
    pub(crate) lease_ttl: Duration,
    pub(crate) log: SharedLog,
}

impl Watch {
    /// What recovery after losing a runner should take: the lease TTL and half a second.
    pub(crate) fn target(&self) -> Duration {
        self.lease_ttl + Duration::from_millis(500)
    }

    /// Starts a probe from `started` (see [`Probe::start`]).
    pub(crate) fn probe(
        &self,
        started: Instant,
        healing: Healing,
        exclude: Option<String>,
    ) -> Probe {
        Probe::start(
            started,
            healing,
            self.lease_ttl,
            self.gateways.clone(),
            self.ids,
            self.ledger.clone(),
            exclude,
        )
    }
}

/// Measures recovery after a SIGKILL of runner `number`: how long until storage shows every
/// shard leased by a survivor, and until every counter answers again (see `probe`).
pub(crate) fn watch_recovery(
    watch: Watch,
    number: usize,
    at: f64,
    killed_at: Instant,
    survivors: HashSet<String>,
    active: Active,
) -> JoinHandle<()> {
    let probe = watch.probe(killed_at, Healing::Instant, None);
    std::thread::spawn(move || {
        let reader = watch.reader.clone();
        let leases = std::thread::spawn(move || {
            while killed_at.elapsed() < WATCH_FOR {
                if let Ok(s) = reader.read()
                    && s.held_by(&survivors) as u64 == s.total
                {
                    return Some(killed_at.elapsed());
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            None
        });
        let probe = probe.finish();
        let leased = leases.join().ok().flatten();
        let fault = format!("kill runner {number}");
        let mut finding = Finding::line(at, killed_at, fault, String::new());
        finding.unavailable = Some(probe.unavailable);
        finding.recovery = probe.answered;
        finding.settled = probe.settled;
        finding.watched = Some(probe.watched);
        finding.target = Some(watch.target());
        match probe.answered {
            Some(after) => {
                finding.line = format!(
                    "SIGKILL runner {number} at {:.0}%: every entity answered again {} later \
                     (target lease TTL + 0.5 s = {}; {} had stopped answering); its shards were \
                     leased by live runners after {}",
                    at * 100.0,
                    fmt_duration(after),
                    fmt_duration(watch.target()),
                    probe.unavailable,
                    leased.map_or_else(|| "never".to_owned(), fmt_duration),
                );
            }
            None => {
                finding.line = format!(
                    "SIGKILL runner {number} at {:.0}%: {} entities never answered again",
                    at * 100.0,
                    probe.still_out
                );
                finding.violations.push(format!(
                    "after SIGKILL of runner {number}, {} entities did not answer within {} s",
                    probe.still_out,
                    WATCH_FOR.as_secs()
                ));
            }
        }
        watch.log.push(finding);
        drop(active);
    })
}

/// Sends SIGTERM to `victim` and measures, in a thread, the handoff (until storage shows every
/// shard leased and none by the victim) and the exit. The victim's gateway leaves `gateways` when
/// the process has exited (it answers `shutting_down` until then, which callers resend).
pub(crate) fn watch_termination(
    victim: RunnerProcess,
    at: f64,
    reader: StatusReader,
    gateways: SharedGateways,
    log: SharedLog,
) -> Result<JoinHandle<()>> {
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
        while signalled.elapsed() < WATCH_FOR {
            if let Ok(s) = reader.read()
                && s.held_by_one(&address) == 0
                && s.leases.len() as u64 == s.total
            {
                handoff = Some(signalled.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let exited = rx.recv_timeout(WATCH_FOR).ok();
        let status = waiter.join().ok().flatten();
        let mut finding = Finding::line(
            at,
            signalled,
            format!("term runner {number}"),
            String::new(),
        );
        match (handoff, exited) {
            (Some(handoff), Some(exited)) => {
                finding.line = format!(
                    "SIGTERM runner {number} at {:.0}%: handoff (its shards leased by the others) \
                     {} after the signal; it exited after {}",
                    at * 100.0,
                    fmt_duration(handoff),
                    fmt_duration(exited)
                );
            }
            _ => {
                finding.line = format!("SIGTERM runner {number} at {:.0}%", at * 100.0);
                finding.violations.push(format!(
                    "after SIGTERM, runner {number} did not hand its shards off or exit within {} s",
                    WATCH_FOR.as_secs()
                ));
            }
        }
        if let Some(status) = status
            && !status.success()
        {
            finding.violations.push(format!(
                "runner {number} exited with {status} after SIGTERM"
            ));
        }
        log.push(finding);
    }))
}
