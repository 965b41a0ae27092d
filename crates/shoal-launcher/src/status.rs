//! `status_rows`: what the state directory holds, read-only.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::hash::TupleHash;
use crate::meta::MetaFields;
use crate::probe::probe;
use crate::state_dir::StateDir;

/// One slot of the state directory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusRow {
    /// The tuple hash.
    #[serde(rename = "hash_id")]
    pub hash: TupleHash,
    /// The worker argv from `.meta` (empty when missing or unreadable).
    pub cmd: Vec<String>,
    /// The launcher's working directory from `.meta` (empty when unknown).
    pub cwd: String,
    /// The slot's socket path.
    pub socket: PathBuf,
    /// When the worker was launched, in Unix seconds, if known.
    pub started_at: Option<f64>,
    /// The process that launched it, if known.
    pub launcher_pid: Option<u32>,
    /// Whether a worker listens on the socket.
    pub alive: bool,
}

/// Lists every slot of `state_dir` (sorted by hash) with its metadata and whether its worker
/// listens. Read-only: takes no lock, removes nothing; slots are probed concurrently.
pub async fn status_rows(
    state_dir: &StateDir,
    probe_timeout: Duration,
) -> std::io::Result<Vec<StatusRow>> {
    let rows = state_dir.slots()?.into_iter().map(|hash| async move {
        let paths = state_dir.paths(&hash);
        let fields = paths
            .meta
            .as_deref()
            .map(MetaFields::read)
            .unwrap_or_default();
        let alive = probe(&paths.socket, probe_timeout).await;
        StatusRow {
            hash,
            cmd: fields.cmd,
            cwd: fields.cwd,
            socket: paths.socket,
            started_at: fields.started_at,
            launcher_pid: fields.launcher_pid,
            alive,
        }
    });
    Ok(futures::future::join_all(rows).await)
}
