//! Transport errors.

use std::path::PathBuf;

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketError {
    /// The listen address does not parse.
    #[error("invalid listen address {address:?}: {reason}")]
    InvalidAddress {
        /// The text given.
        address: String,
        /// Why.
        reason: String,
    },
    /// Binding the socket failed.
    #[error("could not listen on {address}: {source}")]
    Bind {
        /// Where.
        address: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A Unix socket path is taken by a live server.
    #[error("unix socket {0} is in use by a running server")]
    SocketInUse(PathBuf),
    /// Something that is not a socket sits at the Unix socket path.
    #[error("{0} exists and is not a socket; refusing to remove it")]
    NotASocket(PathBuf),
    /// The server would listen where other hosts can reach it (a TCP address that is not
    /// loopback) with nothing to authenticate its callers: no token, no mutual TLS, and
    /// `insecure_transport` not set.
    #[error(
        "refusing to listen on {address} ({ip}) without authentication: other hosts can reach this \
         address, and anything that reaches it could send requests to this runner's entities. \
         Set a shared runner token (runner_token; SocketConfig::auth_token), or mutual TLS \
         (tls_cert, tls_key and tls_ca; SocketConfig::tls), or listen on a loopback address or a \
         unix: socket; on a network that keeps strangers away from the port, set \
         insecure_transport = true to accept unauthenticated peers"
    )]
    InsecureTransport {
        /// The listen address as given.
        address: String,
        /// The IP it resolved to.
        ip: std::net::IpAddr,
    },
    /// TLS material could not be loaded.
    #[error("TLS configuration error: {0}")]
    Tls(String),
    /// Starting the sharding runtime failed.
    #[error(transparent)]
    Start(#[from] shoal_sharding::StartError),
}
