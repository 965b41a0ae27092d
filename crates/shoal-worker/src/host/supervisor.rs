//! Restarting a worker whose session ended, with backoff.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::Instrument;

use super::session::{CloseReason, Session};
use super::{HostInner, HostState, link};
use crate::describe::difference;
use crate::spec::WorkerSource;

/// Exponential backoff with up to 25 % jitter.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            attempt: 0,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self
            .min
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // A fresh `RandomState` has fresh keys: a cheap source of jitter without a dependency.
        let jitter = RandomState::new().hash_one(self.attempt) % 1000;
        base + base.mul_f64(jitter as f64 / 4000.0)
    }
}

/// Watches the session; when it ends, restarts (or reconnects to) the worker until a new session
/// is open, and repeats until the host stops.
pub(crate) async fn supervise(host: Arc<HostInner>, first: Arc<Session>) {
    let name = host.shared.name.clone();
    let options = host.shared.options.clone();
    let mut backoff = Backoff::new(options.restart_backoff_min, options.restart_backoff_max);
    let mut session = first;
    'sessions: loop {
        let reason = tokio::select! {
            biased;
            () = host.stop.cancelled() => {
                session.close(CloseReason {
                    message: "the runner stopped hosting it".to_owned(),
                    hung: false,
                });
                break 'sessions;
            }
            reason = session.closed() => reason,
        };
        host.state.send_replace(HostState::Connecting);
        if session.opened_at.elapsed() >= options.restart_backoff_reset {
            backoff.reset();
        }
        let restarts = host.restarts.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::counter!("shoal_worker_restarts_total", "worker" => name.to_string()).increment(1);
        tracing::warn!(
            worker = %name,
            pid = session.pid,
            session = session.number,
            reason = %reason.message,
            restarts,
            "worker session ended; calls in flight failed; restarting the worker"
        );
        if reason.hung {
            kill_hung(&host, session.pid);
        }
        session = loop {
            let delay = backoff.next_delay();
            tokio::select! {
                biased;
                () = host.stop.cancelled() => break 'sessions,
                () = tokio::time::sleep(delay) => {}
            }
            let number = host.sessions.fetch_add(1, Ordering::Relaxed) + 1;
            let span = tracing::info_span!("worker_restart", worker = %name, session = number);
            match link::link(&host.shared, &host.spec, number)
                .instrument(span)
                .await
            {
                Ok(link) => {
                    if let Some(change) = difference(&host.types, &link.types) {
                        tracing::error!(
                            worker = %name,
                            %change,
                            "the restarted worker describes other entity types than the ones \
                             registered; restart the runner to pick them up (retrying)"
                        );
                        link.session.close(CloseReason {
                            message: "it changed its entity types".to_owned(),
                            hung: false,
                        });
                        continue;
                    }
                    tracing::info!(worker = %name, pid = link.session.pid, "worker session open again");
                    break link.session;
                }
                Err(error) => {
                    tracing::warn!(worker = %name, %error, ?delay, "restarting the worker failed; retrying");
                }
            }
        };
        host.state.send_replace(HostState::Up(session.clone()));
    }
    host.state.send_replace(HostState::Stopped);
}

/// A worker that stopped answering heartbeats while its connection stayed open hangs: a launch
/// would find its socket accepting and reuse it. Kill it so that the next launch starts a fresh
/// one. (A worker on an explicit socket belongs to someone else and is left alone.)
fn kill_hung(host: &HostInner, pid: Option<u32>) {
    let (WorkerSource::Launch(_), Some(pid)) = (&host.spec.source, pid) else {
        return;
    };
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    match rustix::process::kill_process(pid, rustix::process::Signal::KILL) {
        Ok(()) => {
            tracing::warn!(worker = %host.shared.name, pid = pid.as_raw_nonzero().get(), "killed the hung worker")
        }
        Err(error) => {
            tracing::warn!(worker = %host.shared.name, %error, "could not kill the hung worker")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..6).map(|_| backoff.next_delay()).collect();
        let bases = [100u64, 200, 400, 800, 1000, 1000];
        for (delay, base) in delays.iter().zip(bases) {
            let base = Duration::from_millis(base);
            assert!(
                *delay >= base && *delay <= base.mul_f64(1.25),
                "{delay:?} vs {base:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(125));
    }
}
