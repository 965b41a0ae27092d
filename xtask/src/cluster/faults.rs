//! Watching what a fault does: recovery after a SIGKILL, handoff after a SIGTERM.

use std::collections::HashSet;
use std::process::ExitStatus;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::load;
use super::runners::{RunnerProcess, SharedGateways};
use super::status::StatusReader;

/// How long a fault's effects are watched before they count as never completed.
pub(crate) const WATCH_FOR: Duration = Duration::from_secs(60);

/// What the SIGKILL watcher measured.
pub(crate) struct KillReport {
    /// When storage showed every shard leased by a surviving runner.
    pub(crate) leased: Option<Duration>,
    /// When every entity had answered a `get`.
    pub(crate) answered: Option<Duration>,
}

/// Measures recovery after a SIGKILL: how long until storage shows every shard leased by a
/// survivor, and until every counter answers again (ids that have not answered yet are asked
/// again and again, each call with a 100 ms deadline, so the figure is precise to about one such
/// sweep).
pub(crate) fn watch_recovery(
    killed_at: Instant,
    gateways: SharedGateways,
    ids: u32,
    reader: StatusReader,
    survivors: HashSet<String>,
) -> JoinHandle<KillReport> {
    std::thread::spawn(move || {
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
        let answered = load::read_all(&gateways, ids, killed_at, WATCH_FOR, 100).0;
        KillReport {
            leased: leases.join().ok().flatten(),
            answered,
        }
    })
}

/// What the SIGTERM watcher measured.
pub(crate) struct TermReport {
    pub(crate) number: usize,
    /// When, as a share of the load.
    pub(crate) at: f64,
    /// From the signal until storage showed every shard leased by another runner.
    pub(crate) handoff: Option<Duration>,
    /// From the signal until the process exited.
    pub(crate) exited: Option<Duration>,
    pub(crate) status: Option<ExitStatus>,
}

/// Sends SIGTERM to `victim` and measures, in a thread, the handoff (until storage shows every
/// shard leased and none by the victim) and the exit. The victim's gateway leaves `gateways` when
/// the process has exited (it answers `shutting_down` until then, which callers resend).
pub(crate) fn watch_termination(
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
        TermReport {
            number,
            at,
            handoff,
            exited,
            status,
        }
    }))
}
