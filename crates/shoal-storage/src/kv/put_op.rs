//! [`PutOp`]: one entity's put as the SQL backends' batch writers take it.

use bytes::Bytes;

use crate::messages::Fence;

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
