//! Serving a router on a TCP listener: one HTTP/1.1 connection per task (hyper's connection
//! builder), stopped gracefully.

use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// How long the accept loop pauses after an accept error that is not about one connection (out of
/// files, out of memory), so that it does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// An HTTP server task (see [`serve`]).
#[derive(Debug)]
pub struct HttpServer {
    local_addr: Option<SocketAddr>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Serves `router` on `listener` until [`HttpServer::stop`]. `what` names the server in logs
/// (`gateway`, `metrics`).
pub fn serve(what: &'static str, listener: TcpListener, router: Router) -> HttpServer {
    let local_addr = listener.local_addr().ok();
    let stop = CancellationToken::new();
    let task = tokio::spawn(accept_loop(what, listener, router, stop.clone()));
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
    stop: CancellationToken,
) {
    let builder = http1::Builder::new();
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
