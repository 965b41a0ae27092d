//! The per-user state directory that holds every worker slot.
//!
//! `$XDG_RUNTIME_DIR/vgi-rpc` when `XDG_RUNTIME_DIR` is set and non-empty, otherwise
//! `$TMPDIR/vgi-rpc-<euid>` (`/tmp` when `TMPDIR` is unset or empty) — the same directory the
//! vgi-rpc launchers (Python, TypeScript, C++) use, so they all find each other's workers.
//!
//! The directory itself is never followed through a symbolic link: it is opened with
//! `O_NOFOLLOW | O_DIRECTORY` and its owner and mode are checked (and tightened) on that handle,
//! so a link planted at the path — in a shared `/tmp`, say — cannot redirect the launcher's
//! sockets and locks into a directory someone else controls, nor pass the checks with another
//! directory's owner and mode. The parent directories are trusted as they are.

use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::hash::TupleHash;
use crate::paths::{SocketPaths, absolute_normalized, socket_paths};

/// A state directory that exists, is a directory (not a symbolic link to one), belongs to the
/// effective user and is not writable by group or others (mode 0700 when we created it or could
/// tighten it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Opens `path` as a state directory, creating it (mode 0700) when missing.
    ///
    /// Refuses a symbolic link at `path` (even to a suitable directory: see the module doc), a
    /// directory owned by another user or writable by group or others (someone else could plant
    /// sockets or lock files there). An owned directory with other permission bits is tightened
    /// to 0700.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StateDirError> {
        let path = absolute_normalized(path.as_ref()).map_err(|source| StateDirError::Io {
            path: path.as_ref().to_path_buf(),
            source,
        })?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .or_else(|source| match std::fs::symlink_metadata(&path) {
                // Something else already sits there (a file, a link): say what, below.
                Ok(_) => Ok(()),
                Err(_) => Err(StateDirError::Io {
                    path: path.clone(),
                    source,
                }),
            })?;
        Self::check(path)
    }

    /// Opens an existing state directory with the same checks as [`StateDir::open`]; `Ok(None)`
    /// when it does not exist (nothing was ever launched there).
    pub fn existing(path: impl AsRef<Path>) -> Result<Option<Self>, StateDirError> {
        let path = absolute_normalized(path.as_ref()).map_err(|source| StateDirError::Io {
            path: path.as_ref().to_path_buf(),
            source,
        })?;
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            _ => Self::check(path).map(Some),
        }
    }

    fn check(path: PathBuf) -> Result<Self, StateDirError> {
        // The final component is not followed; owner and mode are those of what we opened.
        let dir = rustix::fs::open(
            &path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| Self::not_openable(&path, errno))?;
        // `fstat` and `fchmod` on the handle, never the path again.
        let dir = std::fs::File::from(dir);
        let io = |path: &PathBuf, source: std::io::Error| StateDirError::Io {
            path: path.clone(),
            source,
        };
        let meta = dir.metadata().map_err(|source| io(&path, source))?;
        let euid = rustix::process::geteuid().as_raw();
        if meta.uid() != euid {
            return Err(StateDirError::NotOwned {
                path,
                owner: meta.uid(),
                euid,
            });
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(StateDirError::Writable { path, mode });
        }
        if mode & 0o077 != 0 {
            dir.set_permissions(std::fs::Permissions::from_mode(0o700))
                .map_err(|source| io(&path, source))?;
        }
        Ok(Self { path })
    }

    /// Why `path` could not be opened as a directory without following a link.
    fn not_openable(path: &Path, errno: rustix::io::Errno) -> StateDirError {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => StateDirError::Symlink {
                path: path.to_path_buf(),
                target: std::fs::read_link(path).ok(),
            },
            Ok(meta) if !meta.is_dir() => StateDirError::NotADirectory {
                path: path.to_path_buf(),
            },
            _ => StateDirError::Io {
                path: path.to_path_buf(),
                source: errno.into(),
            },
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The slot files of `hash` in this directory.
    pub fn paths(&self, hash: &TupleHash) -> SocketPaths {
        socket_paths(&self.path, hash)
    }

    /// Every slot in the directory, sorted: the hashes named by a `<hash>.lock` or a `<hash>.meta`
    /// (the TypeScript launcher leaves only `.lock`, Python's filelock only `.meta`). Files whose
    /// stem is not a tuple hash — explicit sockets and their `<socket>.lock` — are not slots.
    pub fn slots(&self) -> std::io::Result<Vec<TupleHash>> {
        let mut slots = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(&self.path)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            let stem = name
                .strip_suffix(".lock")
                .or_else(|| name.strip_suffix(".meta"));
            if let Some(hash) = stem.and_then(|stem| stem.parse::<TupleHash>().ok()) {
                slots.insert(hash);
            }
        }
        Ok(slots.into_iter().collect())
    }
}

impl AsRef<Path> for StateDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

/// The default state directory, created and checked (see [`StateDir::open`]).
pub fn default_state_dir() -> Result<StateDir, StateDirError> {
    StateDir::open(default_state_dir_path())
}

/// The default state directory's path for this process's environment and effective uid, without
/// touching the file system.
pub fn default_state_dir_path() -> PathBuf {
    state_dir_path_from(
        std::env::var_os("XDG_RUNTIME_DIR"),
        std::env::var_os("TMPDIR"),
        rustix::process::geteuid().as_raw(),
    )
}

/// The state directory path for the given `XDG_RUNTIME_DIR`, `TMPDIR` and effective uid.
pub fn state_dir_path_from(xdg: Option<OsString>, tmpdir: Option<OsString>, euid: u32) -> PathBuf {
    let non_empty = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    let path = match non_empty(xdg) {
        Some(xdg) => xdg.join("vgi-rpc"),
        None => non_empty(tmpdir)
            .unwrap_or_else(|| PathBuf::from("/tmp"))
            .join(format!("vgi-rpc-{euid}")),
    };
    absolute_normalized(&path).unwrap_or(path)
}

/// A state directory that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// Creating or inspecting the directory failed.
    #[error("state directory {path:?}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Something other than a directory sits at the path.
    #[error("state directory {path:?} exists but is not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// A symbolic link sits at the path. It is not followed, even to a directory that would pass
    /// the checks: whoever can replace the link could redirect the launcher's sockets and locks.
    #[error(
        "state directory {path:?} is a symbolic link{}; refusing to follow it: \
         remove the link (or replace it with a real directory of mode 0700), or point \
         XDG_RUNTIME_DIR/TMPDIR or the configured state directory at a real directory",
        target.as_ref().map(|t| format!(" (to {t:?})")).unwrap_or_default()
    )]
    Symlink {
        /// The link.
        path: PathBuf,
        /// What it points to, when readable.
        target: Option<PathBuf>,
    },
    /// The directory belongs to another user.
    #[error(
        "state directory {path:?} is owned by uid {owner}, not by the current user (uid {euid}); \
         remove it or point XDG_RUNTIME_DIR/TMPDIR elsewhere"
    )]
    NotOwned {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our effective uid.
        euid: u32,
    },
    /// The directory is writable by group or others.
    #[error(
        "state directory {path:?} has mode {mode:04o}: writable by group or others; \
         run `chmod 700` on it after checking its contents"
    )]
    Writable {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_rules() {
        let some = |s: &str| Some(OsString::from(s));
        assert_eq!(
            state_dir_path_from(some("/run/user/7"), some("/x"), 7),
            Path::new("/run/user/7/vgi-rpc")
        );
        assert_eq!(
            state_dir_path_from(some(""), some("/var/tmp/"), 7),
            Path::new("/var/tmp/vgi-rpc-7")
        );
        assert_eq!(
            state_dir_path_from(None, some(""), 0),
            Path::new("/tmp/vgi-rpc-0")
        );
        assert_eq!(
            state_dir_path_from(None, some("/a//b/"), 3),
            Path::new("/a/b/vgi-rpc-3")
        );
    }
}
