//! Binding the worker socket: refuse what is not ours, bind with mode 0600, unlink only our own.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use super::ServeError;

/// The identity of the socket file we bound, to unlink it only if it is still ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SocketFileId {
    dev: u64,
    ino: u64,
}

impl SocketFileId {
    fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::symlink_metadata(path)?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// Makes `path` free for binding: absent is fine; a stale socket is removed; a socket someone
/// listens on, or anything that is not a socket, is refused.
pub(crate) async fn clear_path(path: &Path) -> Result<(), ServeError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(io("inspecting", path, source)),
    };
    if !meta.file_type().is_socket() {
        return Err(ServeError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    let connect = tokio::net::UnixStream::connect(path);
    match tokio::time::timeout(Duration::from_secs(1), connect).await {
        Ok(Ok(_)) => {
            return Err(ServeError::AlreadyServing {
                path: path.to_path_buf(),
            });
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
            return Err(ServeError::AlreadyServing {
                path: path.to_path_buf(),
            });
        }
        _ => {}
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io("removing stale socket", path, source)),
    }
}

/// Binds and listens on `path`. The file mode is set to 0600 between `bind` and `listen`, so
/// nobody can connect while the mode is still the umask's.
pub(crate) fn bind(
    path: &Path,
    backlog: i32,
) -> Result<(tokio::net::UnixListener, SocketFileId), ServeError> {
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(|e| io("creating socket for", path, e.into()))?;
    let addr = SocketAddrUnix::new(path).map_err(|e| io("socket address", path, e.into()))?;
    rustix::net::bind(&fd, &addr).map_err(|e| io("binding", path, e.into()))?;
    let id = SocketFileId::of(path).map_err(|source| io("inspecting", path, source))?;
    let listening = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|source| io("setting mode 0600 on", path, source))
        .and_then(|()| {
            rustix::net::listen(&fd, backlog).map_err(|e| io("listening on", path, e.into()))
        });
    if let Err(error) = listening {
        unlink_if_ours(path, id);
        return Err(error);
    }
    let listener = std::os::unix::net::UnixListener::from(fd);
    let listener = tokio::net::UnixListener::from_std(listener).map_err(|source| {
        unlink_if_ours(path, id);
        io("registering", path, source)
    })?;
    Ok((listener, id))
}

/// Removes `path` only if it is still the socket we bound (another worker may have replaced it).
pub(crate) fn unlink_if_ours(path: &Path, id: SocketFileId) -> bool {
    match SocketFileId::of(path) {
        Ok(current) if current == id => std::fs::remove_file(path).is_ok(),
        Ok(_) => {
            tracing::debug!(?path, "socket path was replaced; leaving it");
            false
        }
        Err(_) => false,
    }
}

fn io(op: &'static str, path: &Path, source: std::io::Error) -> ServeError {
    ServeError::Io {
        op,
        path: PathBuf::from(path),
        source,
    }
}
