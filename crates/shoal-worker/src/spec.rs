//! What worker to host and how.

use std::path::PathBuf;
use std::time::Duration;

use shoal_launcher::{LaunchConfig, WorkerStderr};

/// Where the worker process comes from.
#[derive(Debug, Clone)]
pub enum WorkerSource {
    /// A command the launcher starts (or reuses when one is already running for the same
    /// command, directory and `VGI_RPC_*` environment), and starts again when it dies.
    Launch(LaunchConfig),
    /// A worker someone else runs, listening on this socket. When the session breaks the host
    /// reconnects to the same socket (with backoff); it cannot restart the process.
    Socket(PathBuf),
}

/// How the host talks to its worker.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerOptions {
    /// How long a call may wait for the worker's reply (default 30 s), including the wait for a
    /// restarting worker. Then the call fails and the worker is told to cancel it.
    pub request_timeout: Duration,
    /// Concurrency of an entity instance when the worker declares none (default 1).
    pub default_concurrency: usize,
    /// Calls the worker process may run at once over all its entities (`None`: no limit). Calls
    /// past it wait (within their timeout) for a free slot.
    pub max_in_flight: Option<usize>,
    /// Deadline of connecting to the worker and of its `Describe` answer (default 10 s).
    pub connect_timeout: Duration,
    /// How often the host sends a heartbeat on the session (default 5 s).
    pub heartbeat_interval: Duration,
    /// A heartbeat unanswered for this long closes the session as dead (default 15 s); a
    /// launched worker is then killed and started again.
    pub heartbeat_timeout: Duration,
    /// First delay before restarting a dead worker (default 100 ms); it doubles on every failed
    /// attempt up to [`WorkerOptions::restart_backoff_max`], with jitter.
    pub restart_backoff_min: Duration,
    /// Longest delay between restart attempts (default 10 s).
    pub restart_backoff_max: Duration,
    /// A session that stayed up this long resets the backoff (default 30 s).
    pub restart_backoff_reset: Duration,
    /// Largest gRPC message on the session, both ways (default 64 MiB; KV lists and large
    /// payloads need more than gRPC's default 4 MiB).
    pub max_message_size: usize,
    /// KV requests of one session the runner holds at once (default
    /// [`DEFAULT_MAX_KV_IN_FLIGHT`](crate::DEFAULT_MAX_KV_IN_FLIGHT)): queued behind the earlier
    /// requests of their entity, running, or answered and not yet handed to the transport. When
    /// the worker has this many outstanding, the runner stops reading the session until one is
    /// answered (backpressure through HTTP/2 flow control; calls' replies and heartbeats behind
    /// the request wait too). A worker that keeps the session blocked past
    /// [`WorkerOptions::heartbeat_timeout`] is closed as hung. The Rust SDK (`shoal-worker-sdk`) never
    /// sends more than its own limit (its `Worker::max_kv_in_flight`), the same by default.
    pub max_kv_in_flight: usize,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            default_concurrency: 1,
            max_in_flight: None,
            connect_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(15),
            restart_backoff_min: Duration::from_millis(100),
            restart_backoff_max: Duration::from_secs(10),
            restart_backoff_reset: Duration::from_secs(30),
            max_message_size: 64 * 1024 * 1024,
            max_kv_in_flight: crate::DEFAULT_MAX_KV_IN_FLIGHT,
        }
    }
}

impl WorkerOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`WorkerOptions::request_timeout`].
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets [`WorkerOptions::default_concurrency`] (at least 1).
    pub fn default_concurrency(mut self, concurrency: usize) -> Self {
        self.default_concurrency = concurrency.max(1);
        self
    }

    /// Sets [`WorkerOptions::max_in_flight`] (`Some(0)` counts as 1).
    pub fn max_in_flight(mut self, max: Option<usize>) -> Self {
        self.max_in_flight = max.map(|m| m.max(1));
        self
    }

    /// Sets [`WorkerOptions::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`WorkerOptions::heartbeat_interval`] and [`WorkerOptions::heartbeat_timeout`].
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.heartbeat_interval = interval.max(Duration::from_millis(1));
        self.heartbeat_timeout = timeout.max(self.heartbeat_interval);
        self
    }

    /// Sets the restart backoff bounds.
    pub fn restart_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.restart_backoff_min = min;
        self.restart_backoff_max = max.max(min);
        self
    }

    /// Sets [`WorkerOptions::max_kv_in_flight`] (at least 1).
    pub fn max_kv_in_flight(mut self, max: usize) -> Self {
        self.max_kv_in_flight = max.max(1);
        self
    }

    /// Sets [`WorkerOptions::max_message_size`].
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }
}

/// A worker to host: where it comes from, and the options of the host.
///
/// ```
/// use std::time::Duration;
/// use shoal_worker::{WorkerOptions, WorkerSpec};
///
/// let spec = WorkerSpec::command(["python3", "counter_worker.py"])
///     .idle_timeout(Duration::from_secs(60))
///     .stderr_file("/var/log/shoal/counter-worker.log")
///     .options(WorkerOptions::new().request_timeout(Duration::from_secs(5)));
/// assert_eq!(spec.name(), "python3 counter_worker.py");
///
/// let external = WorkerSpec::socket("/run/counter.sock");
/// assert_eq!(external.name(), "/run/counter.sock");
/// ```
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// Where the worker comes from.
    pub source: WorkerSource,
    /// How the host talks to it.
    pub options: WorkerOptions,
}

impl WorkerSpec {
    /// A worker the launcher starts from `argv` (program first), with the launcher's defaults
    /// (idle timeout 300 s, startup timeout 60 s, stderr discarded).
    pub fn command<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::launch(LaunchConfig::new(argv))
    }

    /// A worker started with a launch configuration of your own (state directory, working
    /// directory, timeouts, ...).
    pub fn launch(config: LaunchConfig) -> Self {
        Self {
            source: WorkerSource::Launch(config),
            options: WorkerOptions::default(),
        }
    }

    /// A worker already listening on `path`.
    pub fn socket(path: impl Into<PathBuf>) -> Self {
        Self {
            source: WorkerSource::Socket(path.into()),
            options: WorkerOptions::default(),
        }
    }

    /// Replaces the options.
    pub fn options(mut self, options: WorkerOptions) -> Self {
        self.options = options;
        self
    }

    /// The worker's `--idle-timeout` (launched workers only).
    pub fn idle_timeout(self, timeout: Duration) -> Self {
        self.map_launch(|c| c.idle_timeout(timeout))
    }

    /// Appends the worker's stderr to `path` (launched workers only). Startup failures then quote
    /// the end of it.
    pub fn stderr_file(self, path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        self.map_launch(move |c| c.worker_stderr(WorkerStderr::Append(path)))
    }

    /// How long a started worker has to announce its socket (launched workers only).
    pub fn startup_timeout(self, timeout: Duration) -> Self {
        self.map_launch(|c| c.worker_startup_timeout(timeout))
    }

    /// Changes the launch configuration (launched workers only).
    pub fn map_launch(mut self, f: impl FnOnce(LaunchConfig) -> LaunchConfig) -> Self {
        if let WorkerSource::Launch(config) = self.source {
            self.source = WorkerSource::Launch(f(config));
        }
        self
    }

    /// The worker's name in logs, metrics and errors: its command line, or its socket path.
    pub fn name(&self) -> String {
        match &self.source {
            WorkerSource::Launch(config) => config.worker_argv().join(" "),
            WorkerSource::Socket(path) => path.display().to_string(),
        }
    }
}
