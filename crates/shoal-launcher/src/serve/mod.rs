//! `serve_unix`: the worker side — serve a tonic router on the socket a launcher handed us.

mod args;
mod connection;
mod listener;
mod options;

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::Router;

pub use args::{DEFAULT_WORKER_IDLE_TIMEOUT, WorkerArgs, WorkerArgsError};
pub use options::{
    Announce, DEFAULT_BACKLOG, DEFAULT_DRAIN_TIMEOUT, DEFAULT_STARTUP_GRACE, OnBound,
    UnixServeOptions,
};

use crate::paths::{SocketPathTooLong, absolute_normalized, check_socket_path_len};
use connection::ConnectionCounter;

/// Why a server stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// No connection was open for the idle timeout.
    IdleTimeout,
    /// [`UnixServer::stop`] or a [`StopHandle`] asked.
    Stopped,
    /// SIGTERM or SIGINT (with [`UnixServeOptions::stop_on_signals`]).
    Signal,
}

/// A server that could not start or failed while serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket path does not fit in a Unix socket address.
    #[error(transparent)]
    PathTooLong(#[from] SocketPathTooLong),
    /// Something that is not a socket sits at the path; it is never deleted.
    #[error("refusing to replace {path:?}: it exists and is not a socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Another process listens on the path.
    #[error("another process already listens on {path:?}")]
    AlreadyServing {
        /// The path.
        path: PathBuf,
    },
    /// A socket or file system operation failed.
    #[error("{op} {path:?}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing the `UNIX:` announcement failed (the launcher is gone?).
    #[error("writing the UNIX: announcement: {0}")]
    Announce(#[source] std::io::Error),
    /// Installing the signal handlers failed.
    #[error("installing signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// Reflection could not decode a file descriptor set.
    #[error("gRPC reflection: {0}")]
    Reflection(#[source] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("serving gRPC: {0}")]
    Serve(#[source] tonic::transport::Error),
    /// The serving task panicked or was cancelled.
    #[error("the serving task ended abnormally: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// Asks a server to stop; cheap to clone and send to other tasks.
#[derive(Debug, Clone)]
pub struct StopHandle {
    reason: Arc<watch::Sender<Option<StopReason>>>,
}

impl StopHandle {
    /// Stops the server (new connections are refused, open ones drain, the socket is unlinked).
    pub fn stop(&self) {
        self.set(StopReason::Stopped);
    }

    fn set(&self, reason: StopReason) {
        self.reason.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(reason);
            true
        });
    }
}

/// A running server. Dropping it does not stop the server; call [`UnixServer::stop`] and await
/// [`UnixServer::done`].
#[derive(Debug)]
pub struct UnixServer {
    path: PathBuf,
    stop: StopHandle,
    connections: watch::Receiver<usize>,
    task: JoinHandle<Result<StopReason, ServeError>>,
}

impl UnixServer {
    /// The absolute socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops the server.
    pub fn stop(&self) {
        self.stop.stop();
    }

    /// A handle that can stop the server from elsewhere.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Connections open right now.
    pub fn open_connections(&self) -> usize {
        *self.connections.borrow()
    }

    /// Waits until the server has stopped and its socket is unlinked.
    pub async fn done(self) -> Result<StopReason, ServeError> {
        self.task.await.map_err(ServeError::Task)?
    }
}

/// Serves `router` on the Unix socket `options.path`, the way a launched worker must:
///
/// 1. refuse a path holding a non-socket or a socket someone listens on; remove a stale socket;
/// 2. bind, set mode 0600, listen;
/// 3. run the `on_bound` hook, then print exactly one `UNIX:<absolute path>\n` (stdout by default);
/// 4. serve (with gRPC reflection and health unless disabled), counting open connections;
/// 5. stop after `idle_timeout` with no open connection (the timer starts after `startup_grace`),
///    on [`UnixServer::stop`], or on SIGTERM/SIGINT when asked; then drain and unlink the socket
///    if it is still ours.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use shoal_launcher::{WorkerArgs, serve_unix};
///
/// let args = WorkerArgs::from_env()?;
/// let router = tonic::transport::Server::builder().add_routes(Default::default());
/// let server = serve_unix(router, args.serve_options()?).await?;
/// server.done().await?;
/// # Ok(()) }
/// ```
pub async fn serve_unix(
    router: Router,
    options: UnixServeOptions,
) -> Result<UnixServer, ServeError> {
    let UnixServeOptions {
        path,
        idle_timeout,
        startup_grace,
        announce,
        on_bound,
        reflection,
        health,
        file_descriptor_sets,
        drain_timeout,
        stop_on_signals,
        backlog,
    } = options;
    let path = absolute_normalized(&path).map_err(|source| ServeError::Io {
        op: "resolving",
        path: path.clone(),
        source,
    })?;
    check_socket_path_len(&path)?;

    let mut router = router;
    let mut health_reporter = None;
    if health {
        let (reporter, service) = tonic_health::server::health_reporter();
        health_reporter = Some(reporter);
        router = router.add_service(service);
    }
    if reflection {
        let builder = || {
            let mut builder = tonic_reflection::server::Builder::configure();
            if health {
                builder = builder
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
            }
            for set in &file_descriptor_sets {
                builder = builder.register_encoded_file_descriptor_set(set);
            }
            builder
        };
        router = router
            .add_service(builder().build_v1().map_err(ServeError::Reflection)?)
            .add_service(builder().build_v1alpha().map_err(ServeError::Reflection)?);
    }

    listener::clear_path(&path).await?;
    let (listener, socket_id) = listener::bind(&path, backlog)?;
    let stop_signals = if stop_on_signals {
        Some(StopSignals::install().inspect_err(|_| {
            listener::unlink_if_ours(&path, socket_id);
        })?)
    } else {
        None
    };

    if let Some(hook) = on_bound {
        hook(&path);
    }
    if let Err(error) = write_announcement(announce, &path) {
        listener::unlink_if_ours(&path, socket_id);
        return Err(ServeError::Announce(error));
    }
    tracing::info!(socket = %path.display(), ?idle_timeout, "worker listening");

    let counter = ConnectionCounter::new();
    let connections = counter.subscribe();
    let (reason_tx, reason_rx) = watch::channel(None);
    let stop = StopHandle {
        reason: Arc::new(reason_tx),
    };

    let incoming = UnixListenerStream::new(listener).map({
        let counter = counter.clone();
        move |accepted| accepted.map(|stream| counter.track(stream))
    });

    let mut watchers = tokio::task::JoinSet::new();
    if let Some(idle) = idle_timeout {
        let stop = stop.clone();
        let connections = counter.subscribe();
        watchers.spawn(async move {
            idle_watch(connections, startup_grace, idle).await;
            stop.set(StopReason::IdleTimeout);
        });
    }
    if let Some(mut signals) = stop_signals {
        let stop = stop.clone();
        watchers.spawn(async move {
            signals.recv().await;
            stop.set(StopReason::Signal);
        });
    }

    let task_path = path.clone();
    let task = tokio::spawn(async move {
        let shutdown = {
            let mut reason = reason_rx.clone();
            async move {
                let _ = reason.wait_for(Option::is_some).await;
                if let Some(reporter) = health_reporter {
                    reporter
                        .set_service_status("", tonic_health::ServingStatus::NotServing)
                        .await;
                }
            }
        };
        let drain_deadline = {
            let mut reason = reason_rx.clone();
            async move {
                let _ = reason.wait_for(Option::is_some).await;
                tokio::time::sleep(drain_timeout).await;
            }
        };
        let served = tokio::select! {
            served = router.serve_with_incoming_shutdown(incoming, shutdown) => served.map_err(ServeError::Serve),
            () = drain_deadline => {
                tracing::warn!(?drain_timeout, "connections did not drain in time; closing them");
                Ok(())
            }
        };
        watchers.abort_all();
        listener::unlink_if_ours(&task_path, socket_id);
        let reason = (*reason_rx.borrow()).unwrap_or(StopReason::Stopped);
        tracing::info!(socket = %task_path.display(), ?reason, "worker stopped");
        served.map(|()| reason)
    });

    Ok(UnixServer {
        path,
        stop,
        connections,
        task,
    })
}

/// Returns once no connection has been open for `idle`, not before `grace` has passed.
async fn idle_watch(mut connections: watch::Receiver<usize>, grace: Duration, idle: Duration) {
    tokio::time::sleep(grace).await;
    loop {
        if connections.wait_for(|open| *open == 0).await.is_err() {
            return std::future::pending().await;
        }
        tokio::select! {
            () = tokio::time::sleep(idle) => {
                if *connections.borrow() == 0 {
                    return;
                }
            }
            changed = connections.changed() => {
                if changed.is_err() {
                    return std::future::pending().await;
                }
            }
        }
    }
}

fn write_announcement(announce: Announce, path: &Path) -> std::io::Result<()> {
    let mut line = b"UNIX:".to_vec();
    line.extend_from_slice(path.as_os_str().as_bytes());
    line.push(b'\n');
    match announce {
        Announce::Stdout => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&line)?;
            stdout.flush()
        }
        Announce::Writer(mut writer) => {
            writer.write_all(&line)?;
            writer.flush()
        }
        Announce::Silent => Ok(()),
    }
}

/// SIGTERM and SIGINT.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> Result<Self, ServeError> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).map_err(ServeError::Signals)?,
            int: signal(SignalKind::interrupt()).map_err(ServeError::Signals)?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn idle_timer_starts_after_the_grace_and_restarts_when_the_last_connection_closes() {
        let (count, rx) = watch::channel(0usize);
        let start = Instant::now();
        let watcher = tokio::spawn(idle_watch(
            rx,
            Duration::from_secs(5),
            Duration::from_secs(1),
        ));

        // A connection opens during the grace and stays open for an hour: no shutdown.
        tokio::time::sleep(Duration::from_secs(2)).await;
        count.send_replace(1);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!watcher.is_finished());

        // It closes; a new one comes and goes half-way through the idle period.
        count.send_replace(0);
        tokio::time::sleep(Duration::from_millis(500)).await;
        count.send_replace(1);
        count.send_replace(0);
        let closed_at = Instant::now();
        watcher.await.unwrap();
        assert_eq!(closed_at.elapsed(), Duration::from_secs(1));
        assert!(start.elapsed() > Duration::from_secs(3600));
    }

    #[tokio::test(start_paused = true)]
    async fn without_connections_the_first_shutdown_is_grace_plus_idle() {
        let (_count, rx) = watch::channel(0usize);
        let start = Instant::now();
        idle_watch(rx, Duration::from_secs(5), Duration::from_secs(1)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(6));
    }
}
