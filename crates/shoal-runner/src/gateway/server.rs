//! Serving a router on a TCP listener: one HTTP/1.1 connection per task (hyper's connection
//! builder), within [`ConnectionLimits`], stopped gracefully.
//!
//! **At the connection cap** the server stops accepting: new connections wait in the kernel's
//! accept queue (they hold no file of this process) and are accepted, oldest first, as open ones
//! close. Stalled clients cannot hold their slots for long: a connection whose request head does
//! not arrive within the header timeout is closed, so a waiting connection (a `/readyz` probe, a
//! call) is accepted within about one header timeout (more if more than a cap's worth of
//! connections are queued ahead of it). Accept-and-close was not chosen: it would spend a file on
//! every refused connection and refuse well-behaved clients that would be served a moment later.

use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long the accept loop pauses after an accept error that is not about one connection (out of
/// files, out of memory), so that it does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// At most one warning this often while the connection cap is reached.
const CAP_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// The longest header or body timeout: longer ones are cut to it (a day is already as good as
/// none, and far-off deadlines overflow the clock).
pub const MAX_LIMIT_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// The largest connection cap derived from the open-file limit.
pub const AUTO_MAX_CONNECTIONS_CEILING: usize = 10_000;

/// Limits on the connections of an HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A client must send a request's whole head (request line and headers) within this, counted
    /// from when the server starts waiting for it: on a new connection, and after each answer on a
    /// kept-alive one, so it is also how long an idle keep-alive connection stays open. Past it the
    /// connection is closed without an answer (default 10 s; more than zero, at most
    /// [`MAX_LIMIT_TIMEOUT`]).
    pub header_timeout: Duration,
    /// At most this many connections are open at once; past it the server stops accepting until
    /// one closes (default 10,000; `shoal run` derives it from the open-file limit, see
    /// [`auto_max_connections`]). At least 1.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            max_connections: AUTO_MAX_CONNECTIONS_CEILING,
        }
    }
}

/// The connection cap for a process whose open-file limit (soft) is `open_files` (`None`:
/// unlimited): half of it, at most [`AUTO_MAX_CONNECTIONS_CEILING`], at least 1. The other half
/// is left to storage, the other runners, workers and the metrics listener.
pub fn max_connections_for_open_files(open_files: Option<u64>) -> usize {
    let ceiling = AUTO_MAX_CONNECTIONS_CEILING;
    open_files
        .map(|files| usize::try_from(files / 2).unwrap_or(ceiling).min(ceiling))
        .unwrap_or(ceiling)
        .max(1)
}

/// The connection cap derived from this process's open-file limit
/// ([`max_connections_for_open_files`]), and that limit (`None`: unlimited).
pub fn auto_max_connections() -> (usize, Option<u64>) {
    let open_files = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    (max_connections_for_open_files(open_files), open_files)
}

/// An HTTP server task (see [`serve`]).
#[derive(Debug)]
pub struct HttpServer {
    local_addr: Option<SocketAddr>,
    counts: Arc<Counts>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Open connections, now and at most.
#[derive(Debug, Default)]
struct Counts {
    open: AtomicUsize,
    peak: AtomicUsize,
}

/// Serves `router` on `listener` within `limits` until [`HttpServer::stop`]. `what` names the
/// server in logs and metrics (`gateway`, `metrics`).
pub fn serve(
    what: &'static str,
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
) -> HttpServer {
    let local_addr = listener.local_addr().ok();
    let counts = Arc::new(Counts::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(accept_loop(
        what,
        listener,
        router,
        limits,
        counts.clone(),
        stop.clone(),
    ));
    HttpServer {
        local_addr,
        counts,
        stop,
        task,
    }
}

impl HttpServer {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.counts.open.load(Ordering::SeqCst)
    }

    /// The most connections that were open at once since the server started.
    pub fn peak_connections(&self) -> usize {
        self.counts.peak.load(Ordering::SeqCst)
    }

    /// Stops accepting, lets open requests finish for up to `grace`, then closes every
    /// connection.
    pub async fn stop(self, grace: Duration) {
        self.stop.cancel();
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            tracing::warn!("HTTP requests still open after {grace:?}; closing them");
            // Dropping the task's connection set aborts the connections.
            task.abort();
        }
    }
}

/// One accepted connection: holds its slot under the cap until dropped.
struct Slot {
    what: &'static str,
    counts: Arc<Counts>,
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    fn open(what: &'static str, counts: Arc<Counts>, permit: OwnedSemaphorePermit) -> Self {
        let open = counts.open.fetch_add(1, Ordering::SeqCst) + 1;
        counts.peak.fetch_max(open, Ordering::SeqCst);
        metrics::gauge!("shoal_http_connections", "server" => what).increment(1.0);
        Self {
            what,
            counts,
            _permit: permit,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counts.open.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!("shoal_http_connections", "server" => self.what).decrement(1.0);
    }
}

async fn accept_loop(
    what: &'static str,
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    counts: Arc<Counts>,
    stop: CancellationToken,
) {
    let mut builder = http1::Builder::new();
    // hyper closes a connection whose request head is not complete within the timeout; it starts
    // the clock whenever it waits for a head, so idle keep-alive connections are bounded too.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout.min(MAX_LIMIT_TIMEOUT));
    let max_connections = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut last_cap_warning: Option<Instant> = None;
    let mut connections = JoinSet::new();
    loop {
        // A slot first: at the cap, stop accepting (connections wait in the accept queue).
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => {
                metrics::counter!("shoal_http_accept_paused_total", "server" => what).increment(1);
                if last_cap_warning.is_none_or(|at| at.elapsed() >= CAP_WARNING_INTERVAL) {
                    last_cap_warning = Some(Instant::now());
                    tracing::warn!(
                        server = what,
                        max_connections,
                        "at the connection cap: new connections wait until open ones close"
                    );
                }
                tokio::select! {
                    permit = slots.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_closed) => break,
                    },
                    () = stop.cancelled() => break,
                }
            }
            Err(TryAcquireError::Closed) => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        // Reap finished connections, so the set holds only open ones.
        while connections.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                tracing::error!(server = what, %error, "cannot accept HTTP connections");
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                    () = stop.cancelled() => break,
                }
            }
        };
        let slot = Slot::open(what, counts.clone(), permit);
        connections.spawn(serve_connection(
            builder.clone(),
            stream,
            router.clone(),
            slot,
            stop.clone(),
        ));
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Serves one connection; on `stop`, finishes the request in progress and closes.
async fn serve_connection(
    builder: http1::Builder,
    stream: TcpStream,
    router: Router,
    slot: Slot,
    stop: CancellationToken,
) {
    let service = TowerToHyperService::new(router);
    let mut connection = pin!(builder.serve_connection(TokioIo::new(stream), service));
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "HTTP connection ended with an error");
    }
    drop(slot);
}

/// Errors about one connection (the client went away before it was accepted): accept the next.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_automatic_cap_is_half_the_open_file_limit_at_most_ten_thousand() {
        assert_eq!(max_connections_for_open_files(Some(1024)), 512);
        assert_eq!(max_connections_for_open_files(Some(20_000)), 10_000);
        assert_eq!(max_connections_for_open_files(Some(1 << 20)), 10_000);
        assert_eq!(max_connections_for_open_files(None), 10_000);
        assert_eq!(max_connections_for_open_files(Some(1)), 1);
        assert_eq!(max_connections_for_open_files(Some(0)), 1);
    }
}
