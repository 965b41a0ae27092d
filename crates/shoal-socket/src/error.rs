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
    /// TLS material could not be loaded.
    #[error("TLS configuration error: {0}")]
    Tls(String),
    /// Starting the sharding runtime failed.
    #[error(transparent)]
    Start(#[from] shoal_sharding::StartError),
}
