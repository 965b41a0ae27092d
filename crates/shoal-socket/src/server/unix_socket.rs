//! Binding a Unix socket that is private from the first moment: the socket file never exists at
//! its path with a mode other than 0600, and accepts no connection before it has that mode.
//!
//! The socket is bound in a fresh 0700 directory next to the path (where no other user can reach
//! it), set to 0600 between `bind` and `listen` (as `shoal-launcher` does, so it is not
//! connectable while the mode is still the umask's), and only then hard-linked into place. The
//! link fails if the path was taken meanwhile, so a live socket is never replaced. When the
//! temporary path would be too long for a socket address, the socket is bound in place instead:
//! it still accepts nothing before it is 0600, but its file shows the umask's mode for a moment.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

/// Pending connections the kernel queues before the server accepts them.
const BACKLOG: i32 = 1024;

/// Binds and listens on `path` (which must be free) with mode 0600.
pub(super) fn bind_private(path: &Path) -> io::Result<tokio::net::UnixListener> {
    let fd = match PrivateDir::next_to(path)? {
        Some(dir) => {
            let fd = bind_listen(&dir.socket)?;
            std::fs::hard_link(&dir.socket, path)?;
            fd
        }
        None => bind_listen(path)?,
    };
    tokio::net::UnixListener::from_std(std::os::unix::net::UnixListener::from(fd)).inspect_err(
        |_| {
            let _ = std::fs::remove_file(path);
        },
    )
}

/// A socket bound at `path`, made 0600, then listening.
fn bind_listen(path: &Path) -> io::Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    let address = SocketAddrUnix::new(path)?;
    rustix::net::bind(&fd, &address)?;
    // From here the file at `path` is ours: removed again if the socket cannot be made ready.
    let ready = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| rustix::net::listen(&fd, BACKLOG).map_err(io::Error::from));
    if let Err(error) = ready {
        let _ = std::fs::remove_file(path);
        return Err(error);
    }
    Ok(fd)
}

/// A 0700 directory next to the socket path, removed with its contents on drop.
struct PrivateDir {
    dir: PathBuf,
    /// Where the socket is bound inside it.
    socket: PathBuf,
}

impl PrivateDir {
    /// Creates the directory, or returns `None` when a socket in it would have a path too long
    /// for a socket address.
    fn next_to(path: &Path) -> io::Result<Option<Self>> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        for _ in 0..16 {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = parent.join(format!(".shoal-{}-{n}", std::process::id()));
            let socket = dir.join("s");
            if SocketAddrUnix::new(socket.as_path()).is_err() {
                return Ok(None);
            }
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(Some(Self { dir, socket })),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "could not create a private directory next to the socket path",
        ))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove a temporary socket directory");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    #[tokio::test]
    async fn the_socket_is_linked_into_place_and_the_private_directory_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runner.sock");
        let listener = bind_private(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        let entries: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries, ["runner.sock"]);
        // Connections through the path reach the listener.
        let (_client, accepted) =
            tokio::join!(tokio::net::UnixStream::connect(&path), listener.accept());
        accepted.unwrap();
    }

    #[tokio::test]
    async fn a_taken_path_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runner.sock");
        std::fs::write(&path, b"someone else's").unwrap();
        let error = bind_private(&path).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists, "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), b"someone else's");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn a_path_too_long_for_the_private_directory_is_bound_in_place() {
        let dir = tempfile::tempdir().unwrap();
        // A socket path of 100 bytes: fits a socket address (at most 107), its private
        // directory's socket would not.
        let base = dir.path().as_os_str().len();
        let sub = dir.path().join("d".repeat(100 - base - 3));
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("s");
        assert_eq!(path.as_os_str().len(), 100);
        let listener = bind_private(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read_dir(&sub).unwrap().count(), 1);
        let (_client, accepted) =
            tokio::join!(tokio::net::UnixStream::connect(&path), listener.accept());
        accepted.unwrap();
    }
}
