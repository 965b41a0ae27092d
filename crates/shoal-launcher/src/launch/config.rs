//! What to launch and how long to wait for it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::probe::DEFAULT_PROBE_TIMEOUT;

/// Default idle timeout handed to workers (`--idle-timeout 300`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default time to wait for the slot lock.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a new worker has to announce its socket.
pub const DEFAULT_WORKER_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Default number of state directory entries examined by the GC after a spawn.
pub const DEFAULT_GC_LIMIT: usize = 16;

/// Where a spawned worker's stderr goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum WorkerStderr {
    /// `/dev/null` (the default, as in the reference launchers).
    #[default]
    Discard,
    /// Appended to this file (created with mode 0600). The file is opened by the launcher and
    /// handed to the worker, so the worker keeps logging after the launcher exits. Startup
    /// failures quote the tail of what the worker wrote there.
    Append(PathBuf),
}

/// A launch request: the worker's argv plus timeouts and placement.
///
/// ```
/// use std::time::Duration;
/// use shoal_launcher::LaunchConfig;
///
/// let config = LaunchConfig::new(["my-worker", "--verbose"])
///     .idle_timeout(Duration::from_secs(60))
///     .worker_startup_timeout(Duration::from_secs(10));
/// assert_eq!(config.worker_argv(), ["my-worker", "--verbose"]);
/// ```
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    pub(crate) worker_argv: Vec<String>,
    pub(crate) idle_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) worker_startup_timeout: Duration,
    pub(crate) worker_stderr: WorkerStderr,
    pub(crate) state_dir: Option<PathBuf>,
    pub(crate) socket_path: Option<PathBuf>,
    pub(crate) cwd: Option<PathBuf>,
    pub(crate) gc_limit: usize,
    pub(crate) probe_timeout: Duration,
}

impl LaunchConfig {
    /// Launch `worker_argv` (program first) with the default timeouts, in the default state dir.
    pub fn new<I, S>(worker_argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            worker_argv: worker_argv.into_iter().map(Into::into).collect(),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            worker_startup_timeout: DEFAULT_WORKER_STARTUP_TIMEOUT,
            worker_stderr: WorkerStderr::Discard,
            state_dir: None,
            socket_path: None,
            cwd: None,
            gc_limit: DEFAULT_GC_LIMIT,
            probe_timeout: DEFAULT_PROBE_TIMEOUT,
        }
    }

    /// How long the worker stays up without connections (`--idle-timeout`; zero: forever).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// How long to wait for the slot lock while another launcher starts the same worker.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a new worker has to print its `UNIX:` line before it is killed.
    pub fn worker_startup_timeout(mut self, timeout: Duration) -> Self {
        self.worker_startup_timeout = timeout;
        self
    }

    /// Where the worker's stderr goes.
    pub fn worker_stderr(mut self, stderr: WorkerStderr) -> Self {
        self.worker_stderr = stderr;
        self
    }

    /// Use this state directory instead of the default one (created when missing).
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// Use this exact socket path (lock at `<path>.lock`, no `.meta`, no GC) instead of a slot in
    /// the state directory.
    pub fn socket_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.socket_path = Some(path.into());
        self
    }

    /// Run (and hash) the worker from this directory (resolved to its physical path, as `getcwd`
    /// reports it) instead of the launcher's working directory.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// How many state directory entries the GC after a spawn may examine (0 disables it).
    pub fn gc_limit(mut self, limit: usize) -> Self {
        self.gc_limit = limit;
        self
    }

    /// How long one probe connection may take.
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.probe_timeout = timeout;
        self
    }

    /// The worker's argv, as hashed (without `--unix`/`--idle-timeout`).
    pub fn worker_argv(&self) -> &[String] {
        &self.worker_argv
    }

    /// The explicit socket path, if set.
    pub fn explicit_socket_path(&self) -> Option<&Path> {
        self.socket_path.as_deref()
    }
}

/// The `--idle-timeout` argument for `timeout`: plain decimal seconds, at most three decimals, no
/// trailing zeros, no exponent (`300`, `2.5`, `0`).
///
/// ```
/// use std::time::Duration;
/// use shoal_launcher::idle_timeout_arg;
///
/// assert_eq!(idle_timeout_arg(Duration::from_secs(300)), "300");
/// assert_eq!(idle_timeout_arg(Duration::from_millis(2500)), "2.5");
/// assert_eq!(idle_timeout_arg(Duration::ZERO), "0");
/// ```
pub fn idle_timeout_arg(timeout: Duration) -> String {
    // A non-zero timeout must never round to "0", which means "no idle timeout".
    let millis = match timeout.as_millis() {
        0 if !timeout.is_zero() => 1,
        millis => millis,
    };
    let (secs, frac) = (millis / 1000, millis % 1000);
    if frac == 0 {
        return secs.to_string();
    }
    let frac = format!("{frac:03}");
    format!("{secs}.{}", frac.trim_end_matches('0'))
}
