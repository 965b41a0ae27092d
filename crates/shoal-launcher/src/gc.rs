//! `gc_state_dir`: remove slots whose worker is gone.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::hash::TupleHash;
use crate::lock::try_acquire;
use crate::probe::{DEFAULT_PROBE_TIMEOUT, probe};
use crate::state_dir::StateDir;

/// What the GC may do.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Most slots examined (the excluded one is not counted).
    pub limit: usize,
    /// A slot to leave alone (the one a launch just started).
    pub exclude: Option<TupleHash>,
    /// How long one probe connection may take.
    pub probe_timeout: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            limit: usize::MAX,
            exclude: None,
            probe_timeout: DEFAULT_PROBE_TIMEOUT,
        }
    }
}

/// What the GC did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Slots whose files were removed (their worker did not answer).
    pub cleaned: Vec<TupleHash>,
    /// Slots left alone because a launcher holds their lock.
    pub skipped_in_use: Vec<TupleHash>,
    /// Slots left alone because their worker listens.
    pub alive: Vec<TupleHash>,
}

/// Why the GC could not run.
#[derive(Debug, thiserror::Error)]
#[error("listing state directory {path:?}: {source}")]
pub struct GcError {
    /// The state directory.
    pub path: std::path::PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// Removes the `.sock`, `.meta` and `.lock` of every slot (up to `options.limit`) whose lock is
/// free and whose worker does not answer a probe. A slot whose lock is held — by a Shoal, Python or
/// C++ launcher (`flock`) or a TypeScript one (live PID stamp) — is in use and left alone.
/// Slots are examined concurrently.
pub async fn gc_state_dir(state_dir: &StateDir, options: &GcOptions) -> Result<GcReport, GcError> {
    let slots = state_dir.slots().map_err(|source| GcError {
        path: state_dir.path().to_path_buf(),
        source,
    })?;
    let mut report = GcReport::default();
    let mut locked = Vec::new();
    for hash in slots
        .into_iter()
        .filter(|hash| Some(*hash) != options.exclude)
        .take(options.limit)
    {
        let paths = state_dir.paths(&hash);
        match try_acquire(&paths.lock) {
            Ok(Some(guard)) => locked.push((hash, paths, guard)),
            Ok(None) => report.skipped_in_use.push(hash),
            Err(error) => {
                tracing::debug!(%hash, %error, "GC could not lock slot");
                report.skipped_in_use.push(hash);
            }
        }
    }
    let probes = locked
        .iter()
        .map(|(_, paths, _)| probe(&paths.socket, options.probe_timeout));
    let alive = futures::future::join_all(probes).await;
    for ((hash, paths, guard), alive) in locked.into_iter().zip(alive) {
        if alive {
            report.alive.push(hash);
            continue;
        }
        remove_socket(&paths.socket);
        if let Some(meta) = &paths.meta {
            remove_file(meta);
        }
        // Unlinked while we hold it: anyone waiting on the old file re-opens the new one.
        remove_file(&paths.lock);
        drop(guard);
        tracing::debug!(%hash, "collected dead slot");
        report.cleaned.push(hash);
    }
    metrics::counter!("shoal_launcher_gc_cleaned_total").increment(report.cleaned.len() as u64);
    Ok(report)
}

fn remove_socket(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => remove_file(path),
        Ok(_) => tracing::warn!(?path, "not removing a non-socket at a socket path"),
        Err(_) => {}
    }
}

fn remove_file(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::debug!(?path, %error, "GC could not remove file"),
    }
}
