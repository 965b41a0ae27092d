//! Why a launch failed.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::hash::HashInputError;
use crate::lock::LockError;
use crate::paths::SocketPathTooLong;
use crate::state_dir::StateDirError;

/// A launch that did not produce a usable socket. Every variant says what to look at.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The worker argv was empty.
    #[error("worker argv must be non-empty")]
    EmptyArgv,
    /// The state directory is unusable.
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    /// The working directory or the `VGI_RPC_*` environment cannot be hashed.
    #[error(transparent)]
    HashInput(#[from] HashInputError),
    /// The socket path does not fit in a Unix socket address.
    #[error(transparent)]
    SocketPathTooLong(#[from] SocketPathTooLong),
    /// The slot lock could not be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Something that is not a socket sits where the worker's socket belongs; it is never deleted.
    #[error("refusing to replace {path:?}: it exists and is not a socket; move it away")]
    NotASocket {
        /// The socket path.
        path: PathBuf,
    },
    /// A file system operation failed.
    #[error("{op} {path:?}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The worker process could not be started (missing executable, permissions, ...).
    #[error("could not start worker `{program}`: {source}{}", spawn_hint(source))]
    Spawn {
        /// `argv[0]`.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The worker exited before announcing its socket.
    #[error(
        "worker `{program}` exited before announcing its socket ({status}){}",
        tail_suffix(stderr_tail.as_deref())
    )]
    WorkerExited {
        /// `argv[0]`.
        program: String,
        /// How it exited.
        status: ExitStatus,
        /// The end of what it wrote to stderr, when stderr goes to a file.
        stderr_tail: Option<String>,
    },
    /// The worker did not announce its socket in time; it was killed.
    #[error(
        "worker `{program}` did not print `UNIX:<socket path>` within {timeout:?}; it was killed{}",
        tail_suffix(stderr_tail.as_deref())
    )]
    StartupTimeout {
        /// `argv[0]`.
        program: String,
        /// The startup timeout.
        timeout: Duration,
        /// The end of what it wrote to stderr, when stderr goes to a file.
        stderr_tail: Option<String>,
    },
    /// The worker announced a different socket than the one it was given; it was killed.
    #[error("worker `{program}` announced {line:?}, expected {expected:?}; it was killed")]
    UnexpectedAnnouncement {
        /// `argv[0]`.
        program: String,
        /// The line it printed.
        line: String,
        /// The line we expected.
        expected: String,
    },
    /// The worker wrote more than the allowed amount to stdout before its announcement.
    #[error(
        "worker `{program}` wrote over {limit} bytes to stdout without announcing its socket; \
         it was killed (workers must print only `UNIX:<socket path>` on stdout)"
    )]
    TooMuchOutput {
        /// `argv[0]`.
        program: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// Reading the worker's stdout failed.
    #[error("reading the stdout of worker `{program}`: {source}")]
    ReadStdout {
        /// `argv[0]`.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn spawn_hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::NotFound => " (not found: check the path or PATH)",
        std::io::ErrorKind::PermissionDenied => " (is it executable?)",
        _ => "",
    }
}

fn tail_suffix(tail: Option<&str>) -> String {
    match tail {
        Some(tail) if !tail.is_empty() => format!("; its stderr ends with:\n{tail}"),
        Some(_) => "; it wrote nothing to stderr".to_owned(),
        None => "; its stderr was discarded (set a worker stderr file to keep it)".to_owned(),
    }
}
