//! Restarting a worker whose session ended, with backoff.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use shoal_protocol::Backoff;
use tracing::Instrument;

use super::session::{CloseReason, Session};
use super::{HostInner, HostState, link};
use crate::describe::difference;
use crate::spec::WorkerSource;

/// Watches the session; when it ends, restarts (or reconnects to) the worker until a new session
/// is open, and repeats until the host stops.
pub(crate) async fn supervise(host: Arc<HostInner>, first: Arc<Session>) {
    let name = host.shared.name.clone();
    let options = host.shared.options.clone();
    let mut backoff = Backoff::new(options.restart_backoff_min, options.restart_backoff_max)
        .with_jitter()
        .attempts();
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
