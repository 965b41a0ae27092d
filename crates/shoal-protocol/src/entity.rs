//! Entity addresses.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::name::{EntityId, EntityType};
use crate::shard::ShardId;

/// Where an entity lives: its shard, type and id.
///
/// The shard is derived from the id by the sharding layer's hash; it travels with the address so
/// that a receiver can check ownership without re-hashing.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntityAddress {
    /// The shard the entity id hashes to.
    pub shard: ShardId,
    /// The entity's type.
    pub entity_type: EntityType,
    /// The entity's id within its type.
    pub entity_id: EntityId,
}

impl EntityAddress {
    /// An address from its parts.
    pub fn new(shard: ShardId, entity_type: EntityType, entity_id: EntityId) -> Self {
        Self {
            shard,
            entity_type,
            entity_id,
        }
    }
}

impl fmt::Display for EntityAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.entity_type, self.entity_id, self.shard)
    }
}

impl fmt::Debug for EntityAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntityAddress({self})")
    }
}
