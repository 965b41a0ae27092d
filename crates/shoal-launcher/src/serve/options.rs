//! How [`serve_unix`](super::serve_unix) serves.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default time before the idle timer starts, so the launcher's caller can connect.
pub const DEFAULT_STARTUP_GRACE: Duration = Duration::from_secs(5);
/// Default time open connections get to finish after a stop.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default listen backlog.
pub const DEFAULT_BACKLOG: i32 = 1024;

/// Where the `UNIX:<path>` announcement goes.
pub enum Announce {
    /// This process's stdout (the worker contract).
    Stdout,
    /// A writer of your choice (tests, embedding).
    Writer(Box<dyn Write + Send>),
    /// Nowhere (a server not started by a launcher).
    Silent,
}

impl fmt::Debug for Announce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Stdout => "Stdout",
            Self::Writer(_) => "Writer(..)",
            Self::Silent => "Silent",
        })
    }
}

/// A hook run with the socket path once the socket listens, before the announcement.
pub type OnBound = Box<dyn FnOnce(&Path) + Send>;

/// Options of [`serve_unix`](super::serve_unix): how a worker serves on the Unix socket its
/// launcher gave it (not to be confused with `shoal_socket::ServeOptions`, how a runner serves
/// its peers).
///
/// ```
/// use std::time::Duration;
/// use shoal_launcher::UnixServeOptions;
///
/// let options = UnixServeOptions::new("/run/user/1000/vgi-rpc/0123456789abcdef.sock")
///     .idle_timeout(Some(Duration::from_secs(300)))
///     .startup_grace(Duration::from_secs(1));
/// assert_eq!(options.path().file_name().unwrap(), "0123456789abcdef.sock");
/// ```
pub struct UnixServeOptions {
    pub(crate) path: PathBuf,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) startup_grace: Duration,
    pub(crate) announce: Announce,
    pub(crate) on_bound: Option<OnBound>,
    pub(crate) reflection: bool,
    pub(crate) health: bool,
    pub(crate) file_descriptor_sets: Vec<&'static [u8]>,
    pub(crate) drain_timeout: Duration,
    pub(crate) stop_on_signals: bool,
    pub(crate) backlog: i32,
}

impl fmt::Debug for UnixServeOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixServeOptions")
            .field("path", &self.path)
            .field("idle_timeout", &self.idle_timeout)
            .field("startup_grace", &self.startup_grace)
            .field("announce", &self.announce)
            .field("on_bound", &self.on_bound.is_some())
            .field("reflection", &self.reflection)
            .field("health", &self.health)
            .field("file_descriptor_sets", &self.file_descriptor_sets.len())
            .field("drain_timeout", &self.drain_timeout)
            .field("stop_on_signals", &self.stop_on_signals)
            .field("backlog", &self.backlog)
            .finish()
    }
}

impl UnixServeOptions {
    /// Serve on `path` (made absolute): no idle timeout, announcement on stdout, reflection and
    /// health on, 5 s startup grace.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            idle_timeout: None,
            startup_grace: DEFAULT_STARTUP_GRACE,
            announce: Announce::Stdout,
            on_bound: None,
            reflection: true,
            health: true,
            file_descriptor_sets: Vec::new(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            stop_on_signals: false,
            backlog: DEFAULT_BACKLOG,
        }
    }

    /// Stop after this long with no open connection (`None`: never).
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout.filter(|t| !t.is_zero());
        self
    }

    /// The idle timer starts only after this long.
    pub fn startup_grace(mut self, grace: Duration) -> Self {
        self.startup_grace = grace;
        self
    }

    /// Where the `UNIX:<path>` line goes.
    pub fn announce(mut self, announce: Announce) -> Self {
        self.announce = announce;
        self
    }

    /// Run `hook` with the socket path once it listens (before the announcement).
    pub fn on_bound(mut self, hook: impl FnOnce(&Path) + Send + 'static) -> Self {
        self.on_bound = Some(Box::new(hook));
        self
    }

    /// Host gRPC server reflection (v1 and v1alpha) — on by default; the analogue of vgi-rpc's
    /// `__describe__`.
    pub fn reflection(mut self, enabled: bool) -> Self {
        self.reflection = enabled;
        self
    }

    /// Host the standard gRPC health service (`grpc.health.v1.Health`) — on by default.
    pub fn health(mut self, enabled: bool) -> Self {
        self.health = enabled;
        self
    }

    /// Describe your services through reflection: an encoded `FileDescriptorSet` (as produced by
    /// `tonic::include_file_descriptor_set!`).
    pub fn file_descriptor_set(mut self, encoded: &'static [u8]) -> Self {
        self.file_descriptor_sets.push(encoded);
        self
    }

    /// How long open connections may take to finish after a stop before they are cut.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Stop (and unlink the socket) on SIGTERM and SIGINT.
    pub fn stop_on_signals(mut self, enabled: bool) -> Self {
        self.stop_on_signals = enabled;
        self
    }

    /// The listen backlog.
    pub fn backlog(mut self, backlog: i32) -> Self {
        self.backlog = backlog;
        self
    }

    /// The socket path as given.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
