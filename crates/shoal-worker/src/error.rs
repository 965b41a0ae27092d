//! Why a worker could not be hosted.

use std::path::PathBuf;
use std::time::Duration;

use shoal_launcher::LaunchError;

/// A worker that could not be started, reached or understood. Every variant names the worker
/// (its command line or socket) and says what to look at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The launcher could not start the worker, or the worker exited or stayed silent before
    /// announcing its socket (the message quotes its stderr when a stderr file is set).
    #[error("could not launch worker `{worker}`: {source}")]
    Launch {
        /// The worker's command line.
        worker: String,
        /// The launcher's error.
        #[source]
        source: LaunchError,
    },
    /// Nothing accepted a gRPC connection on the worker's socket.
    #[error("could not connect to worker `{worker}` on {socket:?}: {source}")]
    Connect {
        /// The worker.
        worker: String,
        /// Its socket.
        socket: PathBuf,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The worker did not answer `Describe` (it may not speak `shoal.worker.v1`).
    #[error("worker `{worker}` did not answer Describe: {message}")]
    Describe {
        /// The worker.
        worker: String,
        /// The gRPC status.
        message: String,
    },
    /// The worker speaks another protocol version.
    #[error("worker `{worker}` speaks protocol version {version}; this runner speaks {expected}")]
    ProtocolVersion {
        /// The worker.
        worker: String,
        /// Its version.
        version: u32,
        /// Ours.
        expected: u32,
    },
    /// The worker described entity types the runner cannot host.
    #[error("worker `{worker}` described an invalid entity type: {detail}")]
    InvalidDescription {
        /// The worker.
        worker: String,
        /// What is wrong.
        detail: String,
    },
    /// After a restart, the worker described other entity types than before. Registered types
    /// cannot change while the runner runs: restart the runner to pick up the change.
    #[error("worker `{worker}` changed its entity types after a restart: {detail}")]
    DescriptionChanged {
        /// The worker.
        worker: String,
        /// What changed.
        detail: String,
    },
    /// The worker refused or dropped the session at once.
    #[error("worker `{worker}` refused the session: {message}")]
    Session {
        /// The worker.
        worker: String,
        /// What it said.
        message: String,
    },
    /// Connecting and describing took longer than the connect timeout.
    #[error("worker `{worker}` did not answer within {timeout:?}")]
    Timeout {
        /// The worker.
        worker: String,
        /// The connect timeout.
        timeout: Duration,
    },
}
