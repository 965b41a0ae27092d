//! # shoal-launcher
//!
//! Spawn-or-reuse worker processes on Unix sockets, byte-compatible with the vgi-rpc launchers
//! (Python, TypeScript, C++): the same tuple hash, state directory, lock and worker contract, so
//! Shoal and vgi-rpc launchers share workers and never start two for the same tuple.
//!
//! - Launcher side: [`launch`] returns the socket of a live worker for `(argv, cwd, VGI_RPC_* env)`,
//!   starting `argv --unix <socket> --idle-timeout <secs>` when none answers;
//!   [`status_rows`] and [`gc_state_dir`] inspect and clean the [`StateDir`];
//!   [`compute_hash`] and [`socket_paths`] say where a tuple's worker lives.
//! - Worker side: [`serve_unix`] serves a tonic router on the socket it was given, announces
//!   `UNIX:<path>`, and exits after an idle timeout; [`WorkerArgs`] parses the two arguments.
//! - Client side: [`connect_unix`] and [`launch_and_connect`] give a tonic `Channel`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use shoal_launcher::{LaunchConfig, connect_unix, launch};
//!
//! let config = LaunchConfig::new(["/usr/local/bin/my-worker"]).idle_timeout(Duration::from_secs(60));
//! let launched = launch(&config).await?;         // spawns, or reuses a live worker
//! let channel = connect_unix(&launched.socket).await?;
//! # let _ = channel;
//! # Ok(()) }
//! ```
//!
//! The wire format and the worker contract are described in `docs/launcher.md`.

mod client;
mod gc;
mod hash;
mod launch;
mod lock;
mod meta;
mod paths;
mod probe;
mod serve;
mod state_dir;
mod status;

pub use client::{
    BUSY_RETRY_TIMEOUT, LaunchAndConnectError, connect_stream, connect_unix, launch_and_connect,
};
pub use gc::{GcError, GcOptions, GcReport, gc_state_dir};
pub use hash::{
    ENV_PREFIX, HASH_LEN, HashInputError, InvalidTupleHash, TupleHash, canonical_payload,
    compute_hash, hash_for_current_process, hashed_env_of_process,
};
pub use launch::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_GC_LIMIT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_WORKER_STARTUP_TIMEOUT, LaunchConfig, LaunchError, LaunchOutcome, Launched,
    MAX_PRE_ANNOUNCEMENT_OUTPUT, WorkerStderr, idle_timeout_arg, launch,
};
pub use lock::{LockError, LockGuard, acquire, pid_alive, read_stamp_at, try_acquire};
pub use meta::{Meta, MetaFields, StartedAt};
pub use paths::{
    MAX_SOCKET_PATH_LEN, SocketPathTooLong, SocketPaths, absolute_normalized,
    explicit_socket_paths, socket_paths,
};
pub use probe::{DEFAULT_PROBE_TIMEOUT, REFUSED_BACKOFF, probe};
pub use serve::{
    Announce, DEFAULT_BACKLOG, DEFAULT_DRAIN_TIMEOUT, DEFAULT_STARTUP_GRACE,
    DEFAULT_WORKER_IDLE_TIMEOUT, OnBound, ServeError, StopHandle, StopReason, UnixServeOptions,
    UnixServer, WorkerArgs, WorkerArgsError, serve_unix,
};
pub use state_dir::{
    StateDir, StateDirError, default_state_dir, default_state_dir_path, state_dir_path_from,
};
pub use status::{StatusRow, status_rows};
