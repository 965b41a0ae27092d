//! Binding TCP and Unix sockets and serving the runner service on them.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::FileTypeExt;
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

use shoal_sharding::InboundHandler;

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

/// Whether `ip` is reachable from this machine only (127.0.0.0/8, `::1`, or `::ffff:127.x.y.z`).
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Refuses to serve on `ip` when other hosts can reach it and nothing authenticates callers:
/// no token, no mutual TLS, and `insecure_transport` not set.
fn check_exposure(
    listen: &ListenAddress,
    ip: IpAddr,
    config: &SocketConfig,
) -> Result<(), SocketError> {
    let token = config.auth_token.as_deref().is_some_and(|t| !t.is_empty());
    if is_loopback(ip) || token || config.tls.is_some() {
        return Ok(());
    }
    if !config.insecure_transport {
        return Err(SocketError::InsecureTransport {
            address: listen.to_string(),
            ip,
        });
    }
    tracing::warn!(
        address = %listen,
        "the runner transport is open: other hosts can reach this address and it authenticates \
         no caller (insecure_transport = true); anything that reaches it can send requests"
    );
    Ok(())
}

/// Binds the socket. A TCP address with port 0 gets a free port; a stale Unix socket file
/// (nobody answers on it) is replaced, a live one or a non-socket file is an error, and the
/// socket file has mode 0600 from the moment it appears. A TCP
/// address other hosts can reach is refused unless `config` authenticates callers (token or
/// mutual TLS) or sets `insecure_transport`.
pub(crate) async fn bind(
    listen: &ListenAddress,
    config: &SocketConfig,
) -> Result<Listener, SocketError> {
    match listen {
        ListenAddress::Tcp { .. } => {
            let addr = listen.resolve()?;
            check_exposure(listen, addr.ip(), config)?;
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
            // Mode 0600 before the file appears at `path` and before it accepts anything.
            let listener =
                super::unix_socket::bind_private(&path).map_err(|source| SocketError::Bind {
                    address: listen.to_string(),
                    source,
                })?;
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
    /// Where it is bound.
    pub(crate) fn bound(&self) -> Bound {
        match self {
            Listener::Tcp(_, local) => Bound::Tcp(*local),
            Listener::Unix(_, path) => Bound::Unix(path.clone()),
        }
    }

    /// The address other runners reach this listener at: `host` and `port` (default: the bound
    /// port) for TCP, the socket path for a Unix socket.
    pub(crate) fn advertised(
        &self,
        host: &str,
        port: Option<u16>,
    ) -> Result<RunnerAddress, SocketError> {
        match self {
            Listener::Tcp(_, local) => {
                let port = port.unwrap_or(local.port());
                RunnerAddress::tcp(host, port).map_err(|e| SocketError::InvalidAddress {
                    address: format!("{host}:{port}"),
                    reason: e.to_string(),
                })
            }
            Listener::Unix(_, _) if port.is_some() => Err(SocketError::InvalidAddress {
                address: format!("port {}", port.unwrap_or_default()),
                reason: "a Unix-socket runner has no port to advertise; leave advertise_port unset"
                    .to_owned(),
            }),
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
pub(crate) fn serve_on<H: InboundHandler>(
    listener: Listener,
    host: &str,
    service: RunnerServiceImpl<H>,
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

/// Binds `listen` and serves the runner service on it, handing requests to `handler` (a
/// [`Sharding`](shoal_sharding::Sharding), or any other [`InboundHandler`]). A TCP address other hosts can
/// reach (not loopback) is refused with [`SocketError::InsecureTransport`] unless `config` sets
/// a token, mutual TLS, or `insecure_transport`.
pub async fn serve(
    listen: &ListenAddress,
    handler: impl InboundHandler,
    config: &SocketConfig,
) -> Result<ServerHandle, SocketError> {
    let listener = bind(listen, config).await?;
    let host = match listen {
        ListenAddress::Tcp { host, .. } => host.clone(),
        ListenAddress::Unix(_) => String::new(),
    };
    serve_on(
        listener,
        &host,
        RunnerServiceImpl {
            handler,
            max_batch: config.max_batch,
            max_message_size: config.max_message_size,
            window: config.window,
        },
        config,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// Binds and unbinds a Unix socket many times while another thread stats its path: the
    /// file must never be seen with a mode other than 0600 (another local user could connect
    /// through a more open mode).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_unix_socket_file_never_appears_with_another_mode_than_0600() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runner.sock");
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut seen, mut stats) = (Vec::new(), 0u64);
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(meta) = std::fs::symlink_metadata(&path) {
                        stats += 1;
                        let mode = meta.permissions().mode() & 0o777;
                        if mode != 0o600 {
                            seen.push(mode);
                        }
                    }
                }
                (seen, stats)
            })
        };
        let listen = ListenAddress::Unix(path.clone());
        for _ in 0..300 {
            let listener = bind(&listen, &SocketConfig::default()).await.unwrap();
            // Right after bind returns, before anything is accepted.
            let mode = std::fs::symlink_metadata(&path)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
            drop(listener);
            std::fs::remove_file(&path).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let (seen, stats) = watcher.join().unwrap();
        assert!(stats > 0, "the watcher never saw the file");
        assert!(
            seen.is_empty(),
            "the socket file was seen {} times (of {stats}) with modes {:?} (octal)",
            seen.len(),
            seen.iter()
                .take(5)
                .map(|m| format!("{m:o}"))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn only_loopback_addresses_count_as_local() {
        for local in ["127.0.0.1", "127.4.5.6", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(local.parse().unwrap()), "{local}");
        }
        for open in [
            "0.0.0.0",
            "::",
            "10.0.3.17",
            "192.168.1.2",
            "fd00::2",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_loopback(open.parse().unwrap()), "{open}");
        }
    }

    #[test]
    fn an_open_address_needs_a_token_tls_or_the_explicit_setting() {
        let listen: ListenAddress = "0.0.0.0:7400".parse().unwrap();
        let ip: IpAddr = "0.0.0.0".parse().unwrap();
        let open = SocketConfig::default();
        assert!(matches!(
            check_exposure(&listen, ip, &open),
            Err(SocketError::InsecureTransport { .. })
        ));
        let empty_token = SocketConfig {
            auth_token: Some(String::new()),
            ..SocketConfig::default()
        };
        assert!(check_exposure(&listen, ip, &empty_token).is_err());
        let token = SocketConfig {
            auth_token: Some("s3cret".to_owned()),
            ..SocketConfig::default()
        };
        check_exposure(&listen, ip, &token).unwrap();
        let insecure = SocketConfig {
            insecure_transport: true,
            ..SocketConfig::default()
        };
        check_exposure(&listen, ip, &insecure).unwrap();
        check_exposure(&listen, "127.0.0.1".parse().unwrap(), &open).unwrap();
    }
}
