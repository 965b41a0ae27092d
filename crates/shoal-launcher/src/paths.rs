//! Where a worker's files live: `<hash>.lock`, `<hash>.sock`, `<hash>.meta`, or an explicit socket.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use crate::hash::TupleHash;

/// Longest socket path, in bytes, that fits `sockaddr_un.sun_path` with its terminating NUL on
/// every platform we care about (Linux allows 107, macOS 103).
pub const MAX_SOCKET_PATH_LEN: usize = 103;

/// The files of one worker slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketPaths {
    /// The lock file (`<hash>.lock`, or `<socket>.lock` for an explicit socket).
    pub lock: PathBuf,
    /// The worker's Unix socket (`<hash>.sock`, or the explicit path).
    pub socket: PathBuf,
    /// The launch metadata (`<hash>.meta`); `None` for an explicit socket.
    pub meta: Option<PathBuf>,
}

/// The paths of the slot named `hash` in `state_dir`.
///
/// ```
/// use std::path::Path;
/// use shoal_launcher::socket_paths;
///
/// let paths = socket_paths(Path::new("/tmp/vgi-rpc-0"), &"13ddf92fa852a381".parse()?);
/// assert_eq!(paths.socket, Path::new("/tmp/vgi-rpc-0/13ddf92fa852a381.sock"));
/// assert_eq!(paths.lock, Path::new("/tmp/vgi-rpc-0/13ddf92fa852a381.lock"));
/// assert_eq!(paths.meta.as_deref(), Some(Path::new("/tmp/vgi-rpc-0/13ddf92fa852a381.meta")));
/// # Ok::<(), shoal_launcher::InvalidTupleHash>(())
/// ```
pub fn socket_paths(state_dir: &Path, hash: &TupleHash) -> SocketPaths {
    let file = |ext: &str| state_dir.join(format!("{hash}.{ext}"));
    SocketPaths {
        lock: file("lock"),
        socket: file("sock"),
        meta: Some(file("meta")),
    }
}

/// The paths for an explicit socket: the socket made absolute and lexically normalised (so the
/// worker's `UNIX:` announcement matches it), with a sibling `<socket>.lock` and no `.meta`.
pub fn explicit_socket_paths(socket: &Path) -> std::io::Result<SocketPaths> {
    let socket = absolute_normalized(socket)?;
    let mut lock = OsString::from(socket.as_os_str());
    lock.push(".lock");
    Ok(SocketPaths {
        lock: PathBuf::from(lock),
        socket,
        meta: None,
    })
}

/// `path` made absolute (against the working directory) with `.`, `..` and repeated separators
/// resolved lexically, as Node's `path.resolve` does.
pub fn absolute_normalized(path: &Path) -> std::io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    let mut out = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    Ok(out)
}

/// Whether `socket` fits in `sockaddr_un.sun_path`.
pub(crate) fn check_socket_path_len(socket: &Path) -> Result<(), SocketPathTooLong> {
    let len = socket.as_os_str().len();
    if len > MAX_SOCKET_PATH_LEN {
        return Err(SocketPathTooLong {
            path: socket.to_path_buf(),
            len,
        });
    }
    Ok(())
}

/// A socket path longer than [`MAX_SOCKET_PATH_LEN`] bytes.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "socket path {path:?} is {len} bytes, longer than the {MAX_SOCKET_PATH_LEN} a Unix socket \
     address holds; use a shorter state directory (XDG_RUNTIME_DIR or TMPDIR)"
)]
pub struct SocketPathTooLong {
    /// The path.
    pub path: PathBuf,
    /// Its length in bytes.
    pub len: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_paths_are_normalised_with_sibling_lock() {
        let paths = explicit_socket_paths(Path::new("/a/./b//../w.sock")).unwrap();
        assert_eq!(paths.socket, Path::new("/a/w.sock"));
        assert_eq!(paths.lock, Path::new("/a/w.sock.lock"));
        assert_eq!(paths.meta, None);
    }

    #[test]
    fn relative_explicit_paths_become_absolute() {
        let paths = explicit_socket_paths(Path::new("w.sock")).unwrap();
        assert!(paths.socket.is_absolute());
        assert_eq!(
            paths.socket,
            std::env::current_dir().unwrap().join("w.sock")
        );
    }

    #[test]
    fn long_paths_are_refused() {
        let long = PathBuf::from(format!("/{}", "x".repeat(MAX_SOCKET_PATH_LEN)));
        assert!(check_socket_path_len(&long).is_err());
        assert!(check_socket_path_len(Path::new("/tmp/x.sock")).is_ok());
    }
}
