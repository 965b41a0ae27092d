//! Binding TCP and Unix sockets and serving the runner service on them.

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use shoal_protocol::RunnerAddress;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;

use super::RunnerServiceImpl;
use crate::auth::RequireToken;
use crate::config::SocketConfig;
use crate::error::SocketError;
use crate::listen::ListenAddress;

/// Where a server ended up listening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    /// A TCP socket (with the actual port when 0 was asked for).
    Tcp(SocketAddr),
    /// A Unix socket at this path.
    Unix(PathBuf),
}

/// A running server. Dropping it does not stop the server; call [`ServerHandle::shutdown`].
#[derive(Debug)]
pub struct ServerHandle {
    bound: Bound,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl ServerHandle {
    /// Where the server listens.
    pub fn bound(&self) -> &Bound {
        &self.bound
    }

    /// Stops accepting, lets open calls finish (up to `grace`), removes a Unix socket file.
    pub async fn shutdown(self, grace: Duration) {
        self.shutdown.cancel();
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
        }
        if let Bound::Unix(path) = &self.bound {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Stops at once, as a crash would (connections are dropped; a Unix socket file stays).
    pub fn abort(self) {
        self.task.abort();
    }
}

/// Binds the socket. A TCP address with port 0 gets a free port; a stale Unix socket file
/// (nobody answers on it) is replaced, a live one or a non-socket file is an error.
pub(crate) async fn bind(listen: &ListenAddress) -> Result<Listener, SocketError> {
    match listen {
        ListenAddress::Tcp { .. } => {
            let addr = listen.resolve()?;
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| SocketError::Bind {
                    address: listen.to_string(),
                    source,
                })?;
            let local = listener.local_addr().map_err(|source| SocketError::Bind {
                address: listen.to_string(),
                source,
            })?;
            Ok(Listener::Tcp(listener, local))
        }
        ListenAddress::Unix(path) => {
            let path = absolute(path);
            clear_stale(&path).await?;
            let listener = UnixListener::bind(&path).map_err(|source| SocketError::Bind {
                address: listen.to_string(),
                source,
            })?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
                |source| SocketError::Bind {
                    address: listen.to_string(),
                    source,
                },
            )?;
            Ok(Listener::Unix(listener, path))
        }
    }
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}

async fn clear_stale(path: &Path) -> Result<(), SocketError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket(path.to_path_buf()));
    }
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(SocketError::SocketInUse(path.to_path_buf()));
    }
    tracing::info!(path = %path.display(), "removing a stale unix socket file");
    std::fs::remove_file(path).map_err(|source| SocketError::Bind {
        address: path.display().to_string(),
        source,
    })
}

/// A bound socket, not yet serving.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener, SocketAddr),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// The address other runners should use, given the host to advertise for TCP.
    pub(crate) fn advertised(&self, host: &str) -> Result<RunnerAddress, SocketError> {
        match self {
            Listener::Tcp(_, local) => {
                RunnerAddress::tcp(host, local.port()).map_err(|e| SocketError::InvalidAddress {
                    address: format!("{host}:{}", local.port()),
                    reason: e.to_string(),
                })
            }
            Listener::Unix(_, path) => {
                RunnerAddress::unix(path).map_err(|e| SocketError::InvalidAddress {
                    address: path.display().to_string(),
                    reason: e.to_string(),
                })
            }
        }
    }
}

/// Serves the runner service on `listener`.
pub(crate) fn serve_on(
    listener: Listener,
    host: &str,
    service: RunnerServiceImpl,
    config: &SocketConfig,
) -> Result<ServerHandle, SocketError> {
    // Batches are limited by the sender to `max_message_size`; each request in them is checked
    // against the limit on its own (so one oversize request fails alone). The decoding limit is
    // looser so that a sender configured with a larger limit does not break the whole stream.
    let routes = super::Routes::new(
        service,
        config.max_message_size.saturating_mul(4),
        config.max_message_size.saturating_mul(4),
    );
    let service = InterceptedService::new(routes, RequireToken::new(config.auth_token.as_deref()));
    let mut builder = Server::builder()
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(8 * 1024 * 1024))
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone().cancelled_owned();
    let (bound, task) = match listener {
        Listener::Tcp(listener, local) => {
            if let Some(tls) = &config.tls {
                builder = builder
                    .tls_config(crate::tls::server(tls)?)
                    .map_err(|e| SocketError::Tls(e.to_string()))?;
            }
            // As other runners write it: `host:port`, `[v6]:port`.
            if host.contains(':') {
                tracing::info!("Listening on: [{host}]:{}", local.port());
            } else {
                tracing::info!("Listening on: {host}:{}", local.port());
            }
            let incoming = TcpListenerStream::new(listener).map(|stream| {
                stream.inspect(|s| {
                    let _ = s.set_nodelay(true);
                })
            });
            let router = builder.add_service(service);
            let task = tokio::spawn(async move {
                if let Err(e) = router.serve_with_incoming_shutdown(incoming, signal).await {
                    tracing::error!(error = %e, "runner server stopped with an error");
                }
            });
            (Bound::Tcp(local), task)
        }
        Listener::Unix(listener, path) => {
            tracing::info!("Listening on: {}", path.display());
            let incoming = UnixListenerStream::new(listener);
            let router = builder.add_service(service);
            let task = tokio::spawn(async move {
                if let Err(e) = router.serve_with_incoming_shutdown(incoming, signal).await {
                    tracing::error!(error = %e, "runner server stopped with an error");
                }
            });
            (Bound::Unix(path), task)
        }
    };
    Ok(ServerHandle {
        bound,
        shutdown,
        task,
    })
}

/// Binds `listen` and serves `sharding`'s runner service on it.
pub async fn serve(
    listen: &ListenAddress,
    sharding: shoal_sharding::Sharding,
    config: &SocketConfig,
) -> Result<ServerHandle, SocketError> {
    let listener = bind(listen).await?;
    let host = match listen {
        ListenAddress::Tcp { host, .. } => host.clone(),
        ListenAddress::Unix(_) => String::new(),
    };
    serve_on(
        listener,
        &host,
        RunnerServiceImpl {
            sharding,
            max_batch: config.max_batch,
            max_message_size: config.max_message_size,
        },
        config,
    )
}
