//! The client side: a tonic [`Channel`] over a worker's Unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::launch::{LaunchConfig, LaunchError, Launched, launch};

/// How long [`connect_unix`] keeps retrying a worker whose accept queue is full (`EAGAIN`).
pub const BUSY_RETRY_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a gRPC channel to the worker listening on `socket`. A full accept queue (`EAGAIN`) is
/// retried with a short backoff for up to [`BUSY_RETRY_TIMEOUT`]; other failures are returned.
/// The channel reconnects through the same socket path when the connection drops.
pub async fn connect_unix(socket: impl AsRef<Path>) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.as_ref().to_path_buf();
    // The URI is required by the HTTP/2 layer but never resolved: the connector dials the socket.
    Endpoint::from_static("http://worker.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { connect_stream(&socket).await.map(TokioIo::new) }
        }))
        .await
}

/// Connects to `socket`, waiting out a full accept queue.
pub async fn connect_stream(socket: &Path) -> std::io::Result<UnixStream> {
    let deadline = tokio::time::Instant::now() + BUSY_RETRY_TIMEOUT;
    let mut pause = Duration::from_millis(1);
    loop {
        match UnixStream::connect(socket).await {
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && tokio::time::Instant::now() + pause < deadline =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// [`launch`] then [`connect_unix`]. When the connection is refused or the socket is gone — the
/// worker idled out between the launcher's probe and our connect — launches once more and
/// connects again.
pub async fn launch_and_connect(
    config: &LaunchConfig,
) -> Result<(Launched, Channel), LaunchAndConnectError> {
    let launched = launch(config).await?;
    match connect_unix(&launched.socket).await {
        Ok(channel) => Ok((launched, channel)),
        Err(error) => {
            tracing::debug!(%error, "connect after launch failed; launching again");
            let launched = launch(config).await?;
            let channel = connect_unix(&launched.socket).await.map_err(|source| {
                LaunchAndConnectError::Connect {
                    socket: launched.socket.clone(),
                    source,
                }
            })?;
            Ok((launched, channel))
        }
    }
}

/// Why [`launch_and_connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchAndConnectError {
    /// The launch failed.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// The worker's socket did not accept a gRPC connection.
    #[error("connecting to worker socket {socket:?}: {source}")]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
}
