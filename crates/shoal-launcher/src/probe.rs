//! Is a worker listening on this socket?

use std::path::Path;
use std::time::Duration;

use tokio::net::UnixStream;

/// Pauses before re-probing a socket that refused the connection (350 ms in all).
pub const REFUSED_BACKOFF: [Duration; 3] = [
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(200),
];

/// Default time one connection attempt may take.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What one connection attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    Alive,
    Refused,
    Dead,
}

/// Whether a worker listens on `socket`: a connect that succeeds, or fails with `EAGAIN` (a full
/// accept queue: busy, not dead), means alive. `ECONNREFUSED` is retried after 50, 100 and 200 ms
/// (some kernels report a full queue that way) before the socket is declared dead; any other
/// failure (no such file, not a socket, timeout) is dead at once.
///
/// This checks that someone listens, not that the worker answers requests.
pub async fn probe(socket: &Path, timeout: Duration) -> bool {
    let mut attempt = connect_once(socket, timeout).await;
    for pause in REFUSED_BACKOFF {
        if attempt != Attempt::Refused {
            break;
        }
        tokio::time::sleep(pause).await;
        attempt = connect_once(socket, timeout).await;
    }
    let alive = attempt == Attempt::Alive;
    tracing::trace!(?socket, alive, "probed worker socket");
    alive
}

async fn connect_once(socket: &Path, timeout: Duration) -> Attempt {
    match tokio::time::timeout(timeout, UnixStream::connect(socket)).await {
        Ok(Ok(_stream)) => Attempt::Alive,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => Attempt::Alive,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Attempt::Refused,
        Ok(Err(_)) | Err(_) => Attempt::Dead,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listening_missing_and_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.sock");
        assert!(!probe(&path, DEFAULT_PROBE_TIMEOUT).await);

        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        assert!(probe(&path, DEFAULT_PROBE_TIMEOUT).await);

        // A socket file nobody listens on any more: refused four times, then dead.
        drop(listener);
        assert!(path.exists());
        assert!(!probe(&path, DEFAULT_PROBE_TIMEOUT).await);

        // Not a socket at all.
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        assert!(!probe(&file, DEFAULT_PROBE_TIMEOUT).await);
    }
}
