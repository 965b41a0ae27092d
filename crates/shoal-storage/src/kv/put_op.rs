//! [`PutOp`]: one entity's put as the SQL backends' batch writers take it, and [`PutWriter`],
//! the lazily started writer a backend hands them to.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::error::StorageError;
use crate::messages::Fence;
use crate::sql::group_commit::{BatchResult, GroupCommit};

/// One entity's put: its entries already checked and de-duplicated (last wins), as parallel
/// key and value lists.
#[derive(Debug)]
pub(super) struct PutOp {
    pub(super) entity_type: String,
    pub(super) entity_id: String,
    pub(super) fence: Fence,
    pub(super) keys: Vec<Bytes>,
    pub(super) values: Vec<Bytes>,
}

impl PutOp {
    /// The op for `entries` of `entity` under `fence`.
    pub(super) fn new(
        entity: &shoal_protocol::EntityAddress,
        entries: &[&super::KvEntry],
        fence: &Fence,
    ) -> Self {
        Self {
            entity_type: entity.entity_type.to_string(),
            entity_id: entity.entity_id.to_string(),
            fence: fence.clone(),
            keys: entries.iter().map(|e| e.key.clone()).collect(),
            values: entries.iter().map(|e| e.value.clone()).collect(),
        }
    }
}

/// A backend's put batch writer, started by the first put (on that put's tokio runtime) and
/// shared by the clones of the backend.
#[derive(Debug, Clone, Default)]
pub(super) struct PutWriter(Arc<OnceLock<GroupCommit<PutOp, ()>>>);

impl PutWriter {
    /// The writer, started with `start` if no put has started it yet.
    pub(super) fn get_or_start(
        &self,
        start: impl FnOnce() -> Result<GroupCommit<PutOp, ()>, StorageError>,
    ) -> Result<&GroupCommit<PutOp, ()>, StorageError> {
        if self.0.get().is_none() {
            // Another put may win the race: its writer is used, this one stops unused.
            let _ = self.0.set(start()?);
        }
        self.0.get().ok_or_else(|| StorageError::InvalidArgument {
            operation: "kv_put",
            detail: "the put writer could not be started".to_owned(),
        })
    }
}

/// Starts a put batch writer on the current tokio runtime: batches of at most `max_batch` puts,
/// written one at a time by `write` (so puts commit in the order they were made). `kv` names the
/// backend's type in the error returned outside a runtime.
pub(super) fn spawn_writer<W, Fut>(
    kv: &str,
    max_batch: usize,
    write: W,
) -> Result<GroupCommit<PutOp, ()>, StorageError>
where
    W: Fn(Vec<PutOp>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = BatchResult<()>> + Send + 'static,
{
    let runtime =
        tokio::runtime::Handle::try_current().map_err(|_| StorageError::InvalidArgument {
            operation: "kv_put",
            detail: format!("{kv} writes must run inside a tokio runtime"),
        })?;
    Ok(GroupCommit::spawn(&runtime, "kv_put", max_batch, 1, write))
}
