//! Per-entity-type options.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use shoal_protocol::{EntityId, ShardGroup};

/// Maps an entity id to its shard group.
#[derive(Clone)]
pub struct GroupSelector(Arc<dyn Fn(&EntityId) -> ShardGroup + Send + Sync>);

impl GroupSelector {
    /// Every id in `group`.
    pub fn fixed(group: ShardGroup) -> Self {
        Self(Arc::new(move |_| group.clone()))
    }

    /// The group chosen by `f` for each id (for example by a tenant prefix).
    pub fn by(f: impl Fn(&EntityId) -> ShardGroup + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// The group of `id`.
    pub fn group_of(&self, id: &EntityId) -> ShardGroup {
        (self.0)(id)
    }
}

impl fmt::Debug for GroupSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GroupSelector(..)")
    }
}

/// Options of one entity type. Unset values fall back to the runner's
/// [`crate::ShardingConfig`].
#[derive(Debug, Clone, Default)]
pub struct EntityOptions {
    /// Mailbox capacity of each instance.
    pub mailbox_capacity: Option<usize>,
    /// Idle time before an instance is passivated.
    pub max_idle_time: Option<Duration>,
    /// How many requests an instance processes at once (default 1: one at a time, in arrival
    /// order). Only dynamic entities may use more than one; typed entities take `&mut self`.
    pub concurrency: Option<usize>,
    /// The shard group of each id (default: every id in `"default"`). Typed entities take it from
    /// [`crate::Entity::shard_group`].
    pub shard_group: Option<GroupSelector>,
}
