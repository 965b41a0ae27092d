//! What an instance tells the one that keeps its handle (its entity type's manager).

use shoal_protocol::EntityId;

/// Keeps the handles of instances; told by an instance when it would passivate or has ended.
pub(crate) trait InstanceOwner: Send + Sync {
    /// Called by an idle instance: removes it unless a request arrived meanwhile. `true` when it
    /// was removed (the instance then deactivates).
    fn try_passivate(&self, id: &EntityId, generation: u64) -> bool;

    /// Called by an instance task that ends on its own (its activation failed).
    fn instance_exited(&self, id: &EntityId, generation: u64);

    /// Called when an instance's task has ended, however it ended.
    fn retired(&self, id: &EntityId, generation: u64);
}
