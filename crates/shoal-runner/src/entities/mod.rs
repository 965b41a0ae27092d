//! Entity types the runner hosts, and the routes the gateway knows for them.
//!
//! Every runner of a cluster runs the same binary and configuration, so the types registered in
//! this process are the types of the cluster: the gateway routes calls for them and answers 404
//! for any other type (see [`EntityRoutes`]).

pub mod counter;
pub mod workers;

use std::collections::BTreeMap;

use shoal_protocol::EntityType;
use shoal_sharding::{Entity, GroupSelector, RegisterError, ShardingBuilder};

pub use workers::{WorkerEntities, WorkerEntityError};

/// The entity types the gateway routes, with how each maps ids to shard groups (which must match
/// the hosts' mapping).
#[derive(Debug, Clone, Default)]
pub struct EntityRoutes {
    routes: BTreeMap<EntityType, GroupSelector>,
}

impl EntityRoutes {
    /// No routes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes the typed entity `E`.
    pub fn typed<E: Entity>(mut self) -> Result<Self, RegisterError> {
        let entity_type = EntityType::from_static(E::TYPE)?;
        self.routes
            .insert(entity_type, GroupSelector::by(E::shard_group));
        Ok(self)
    }

    /// Routes `entity_type` with `group`.
    pub fn insert(&mut self, entity_type: EntityType, group: GroupSelector) {
        self.routes.insert(entity_type, group);
    }

    /// The routed types and their group selectors.
    pub fn iter(&self) -> impl Iterator<Item = (&EntityType, &GroupSelector)> {
        self.routes.iter()
    }

    /// Whether nothing is routed.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// The entity types of the built-in demo entities.
pub const BUILTIN_TYPES: &[&str] = &[counter::Counter::TYPE];

/// The built-in demo entities: registrations (for a runner) and routes (for the gateway).
#[derive(Debug, Clone, Copy)]
pub struct Builtin;

impl Builtin {
    /// Registers the built-in entity types on `builder`.
    pub fn register(builder: ShardingBuilder) -> ShardingBuilder {
        builder.entity(counter::definition())
    }

    /// Adds the built-in entity types to `routes`.
    pub fn routes(routes: EntityRoutes) -> Result<EntityRoutes, RegisterError> {
        routes.typed::<counter::Counter>()
    }
}
