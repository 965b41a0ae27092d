//! `launch`: return the socket of a live worker for a tuple, spawning one when needed.

mod config;
mod error;
mod spawn;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use tracing::Instrument;

pub use config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_GC_LIMIT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_WORKER_STARTUP_TIMEOUT, LaunchConfig, WorkerStderr, idle_timeout_arg,
};
pub use error::LaunchError;
pub use spawn::MAX_PRE_ANNOUNCEMENT_OUTPUT;

use crate::gc::{GcOptions, gc_state_dir};
use crate::hash::{TupleHash, compute_hash, cwd_text, hashed_env_of_process};
use crate::lock;
use crate::meta::{Meta, StartedAt};
use crate::paths::{SocketPaths, check_socket_path_len, explicit_socket_paths};
use crate::probe::probe;
use crate::state_dir::{StateDir, default_state_dir_path};

/// A live worker's socket, and whether this call started the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launched {
    /// The absolute socket path to connect to.
    pub socket: PathBuf,
    /// The tuple hash (`None` for an explicit socket path).
    pub hash: Option<TupleHash>,
    /// Reused or spawned.
    pub outcome: LaunchOutcome,
}

/// How [`launch`] obtained the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchOutcome {
    /// A worker was already listening.
    Reused,
    /// This call spawned the worker.
    Spawned {
        /// The worker's process id.
        pid: u32,
    },
}

/// Where a launch puts its files.
struct Slot {
    paths: SocketPaths,
    /// Hashed mode: the state directory and the hash (for `.meta` and the GC).
    hashed: Option<(StateDir, TupleHash)>,
}

/// Returns the socket of a live worker for `config`'s tuple, spawning the worker when none answers.
///
/// Steps: take the slot lock (waiting up to the connect timeout while another launcher — Shoal,
/// Python, C++ or TypeScript — starts the same worker); probe the socket and return it when a
/// worker listens; otherwise remove a stale socket (never anything that is not a socket), write
/// `.meta`, spawn `argv --unix <socket> --idle-timeout <secs>` detached and wait for its
/// `UNIX:<socket>` line; release the lock; after a spawn, collect up to 16 dead slots.
///
/// ```no_run
/// # async fn demo() -> Result<(), shoal_launcher::LaunchError> {
/// use shoal_launcher::{LaunchConfig, launch};
///
/// let launched = launch(&LaunchConfig::new(["my-worker"])).await?;
/// println!("connect to {}", launched.socket.display());
/// # Ok(()) }
/// ```
pub async fn launch(config: &LaunchConfig) -> Result<Launched, LaunchError> {
    if config.worker_argv.is_empty() {
        return Err(LaunchError::EmptyArgv);
    }
    let cwd = match &config.cwd {
        // The physical path, as getcwd() reports it to a launcher started in that directory.
        Some(cwd) => std::fs::canonicalize(cwd),
        None => std::env::current_dir(),
    }
    .map_err(|source| LaunchError::Io {
        op: "resolving the working directory",
        path: config.cwd.clone().unwrap_or_default(),
        source,
    })?;
    let slot = slot_for(config, &cwd)?;
    check_socket_path_len(&slot.paths.socket)?;

    let span = tracing::info_span!(
        "launch",
        socket = %slot.paths.socket.display(),
        program = %config.worker_argv[0],
    );
    let result = launch_in_slot(config, &cwd, &slot).instrument(span).await;
    let outcome = match &result {
        Ok(Launched {
            outcome: LaunchOutcome::Reused,
            ..
        }) => "reused",
        Ok(_) => "spawned",
        Err(_) => "failed",
    };
    metrics::counter!("shoal_launcher_launches_total", "outcome" => outcome).increment(1);
    result
}

fn slot_for(config: &LaunchConfig, cwd: &Path) -> Result<Slot, LaunchError> {
    if let Some(socket) = &config.socket_path {
        let paths = explicit_socket_paths(socket).map_err(|source| LaunchError::Io {
            op: "resolving the socket path",
            path: socket.clone(),
            source,
        })?;
        return Ok(Slot {
            paths,
            hashed: None,
        });
    }
    let state_dir = match &config.state_dir {
        Some(dir) => StateDir::open(dir)?,
        None => StateDir::open(default_state_dir_path())?,
    };
    let hash = compute_hash(
        &config.worker_argv,
        cwd_text(cwd)?,
        hashed_env_of_process()?,
    );
    Ok(Slot {
        paths: state_dir.paths(&hash),
        hashed: Some((state_dir, hash)),
    })
}

async fn launch_in_slot(
    config: &LaunchConfig,
    cwd: &Path,
    slot: &Slot,
) -> Result<Launched, LaunchError> {
    let guard = lock::acquire(&slot.paths.lock, config.connect_timeout).await?;
    let result = reuse_or_spawn(config, cwd, slot).await;
    if let Err(error) = guard.release() {
        tracing::warn!(%error, "releasing the slot lock");
    }
    let outcome = result?;
    if let (LaunchOutcome::Spawned { .. }, Some((state_dir, hash))) = (outcome, &slot.hashed)
        && config.gc_limit > 0
    {
        let options = GcOptions {
            limit: config.gc_limit,
            exclude: Some(*hash),
            probe_timeout: config.probe_timeout,
        };
        match gc_state_dir(state_dir, &options).await {
            Ok(report) if !report.cleaned.is_empty() => {
                tracing::debug!(cleaned = report.cleaned.len(), "collected dead slots");
            }
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, "state directory GC failed"),
        }
    }
    Ok(Launched {
        socket: slot.paths.socket.clone(),
        hash: slot.hashed.as_ref().map(|(_, hash)| *hash),
        outcome,
    })
}

/// Inside the lock: reuse a listening worker, or clean up and spawn one.
async fn reuse_or_spawn(
    config: &LaunchConfig,
    cwd: &Path,
    slot: &Slot,
) -> Result<LaunchOutcome, LaunchError> {
    let socket = &slot.paths.socket;
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => {
            if probe(socket, config.probe_timeout).await {
                tracing::debug!("reusing live worker");
                return Ok(LaunchOutcome::Reused);
            }
            tracing::debug!("removing stale socket");
            match std::fs::remove_file(socket) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(LaunchError::Io {
                        op: "removing stale socket",
                        path: socket.clone(),
                        source,
                    });
                }
            }
        }
        Ok(_) => {
            return Err(LaunchError::NotASocket {
                path: socket.clone(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(LaunchError::Io {
                op: "inspecting socket path",
                path: socket.clone(),
                source,
            });
        }
    }

    if let Some(meta_path) = &slot.paths.meta {
        let meta = Meta {
            cmd: config.worker_argv.clone(),
            cwd: cwd.to_string_lossy().into_owned(),
            socket: socket.to_string_lossy().into_owned(),
            started_at: StartedAt::now(),
            launcher_pid: std::process::id(),
        };
        if let Err(error) = meta.write(meta_path) {
            tracing::warn!(path = ?meta_path, %error, "writing launch metadata");
        }
    }

    let spawned = spawn::spawn_worker(spawn::SpawnRequest {
        argv: &config.worker_argv,
        socket,
        cwd,
        idle_timeout: config.idle_timeout,
        startup_timeout: config.worker_startup_timeout,
        stderr: &config.worker_stderr,
    })
    .await;
    match spawned {
        Ok(pid) => {
            tracing::info!(pid, "worker announced its socket");
            Ok(LaunchOutcome::Spawned { pid })
        }
        Err(error) => {
            // Leave nothing half-done: no metadata for a worker that never came up.
            if let Some(meta_path) = &slot.paths.meta {
                let _ = std::fs::remove_file(meta_path);
            }
            tracing::debug!(%error, "worker failed to start");
            Err(error)
        }
    }
}
