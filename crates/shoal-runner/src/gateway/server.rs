//! Serving a router on a TCP listener: one HTTP/1.1 connection per task (hyper's connection
//! builder), stopped gracefully.

use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// How long the accept loop pauses after an accept error that is not about one connection (out of
/// files, out of memory), so that it does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Limits on the connections of an HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A client must send a request's whole head (request line and headers) within this, counted
    /// from when the server starts waiting for it: on a new connection, and after each answer on a
    /// kept-alive one, so it is also how long an idle keep-alive connection stays open. Past it the
    /// connection is closed without an answer (default 10 s).
    pub header_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// An HTTP server task (see [`serve`]).
#[derive(Debug)]
pub struct HttpServer {
    local_addr: Option<SocketAddr>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Serves `router` on `listener` within `limits` until [`HttpServer::stop`]. `what` names the
/// server in logs (`gateway`, `metrics`).
pub fn serve(
    what: &'static str,
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
) -> HttpServer {
    let local_addr = listener.local_addr().ok();
    let stop = CancellationToken::new();
    let task = tokio::spawn(accept_loop(what, listener, router, limits, stop.clone()));
    HttpServer {
        local_addr,
        stop,
        task,
    }
}

impl HttpServer {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
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

async fn accept_loop(
    what: &'static str,
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    stop: CancellationToken,
) {
    let mut builder = http1::Builder::new();
    // hyper closes a connection whose request head is not complete within the timeout; it starts
    // the clock whenever it waits for a head, so idle keep-alive connections are bounded too.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let mut connections = JoinSet::new();
    loop {
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
        connections.spawn(serve_connection(
            builder.clone(),
            stream,
            router.clone(),
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
