//! What a handler knows about where it runs.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use shoal_protocol::{EntityAddress, Incarnation, RunnerAddress};
use shoal_storage::kv::EntityKv;

use crate::router::{Router, WeakRouter};

/// What the contexts of one runtime's instances are made from: the router (to call other
/// entities) and the entity storage. Holds the router weakly: the host that keeps it is itself
/// kept by the router.
pub(crate) struct ContextSource {
    router: WeakRouter,
    kv: Option<Arc<dyn EntityKv>>,
}

impl ContextSource {
    pub(crate) fn new(router: WeakRouter, kv: Option<Arc<dyn EntityKv>>) -> Self {
        Self { router, kv }
    }

    /// The context of a new instance (`None` once the runtime is gone).
    pub(crate) fn context(
        &self,
        address: EntityAddress,
        epoch: shoal_storage::Epoch,
        flags: Arc<InstanceFlags>,
    ) -> Option<EntityContext> {
        Some(EntityContext {
            inner: Arc::new(ContextInner {
                address,
                epoch,
                router: self.router.upgrade()?,
                kv: self.kv.clone(),
                flags,
            }),
        })
    }
}

/// State an instance shares with its manager (read without locking on the hot path).
#[derive(Debug, Default)]
pub(crate) struct InstanceFlags {
    /// Set by the entity to stay resident while idle.
    keep_alive: AtomicBool,
    /// Requests queued or running.
    pending: AtomicU32,
    /// Milliseconds since the runtime's start at the last activity.
    last_active: AtomicU64,
    /// The request a one-at-a-time instance is handling (raw Snowflake; 0: none).
    current_request: AtomicU64,
}

impl InstanceFlags {
    pub(crate) fn keep_alive(&self) -> bool {
        self.keep_alive.load(Ordering::Relaxed)
    }

    pub(crate) fn pending(&self) -> u32 {
        self.pending.load(Ordering::Acquire)
    }

    pub(crate) fn add_pending(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
    }

    /// Takes back an [`InstanceFlags::add_pending`] whose request was not queued.
    pub(crate) fn undo_pending(&self) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn done_pending(&self, at_millis: u64) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
        self.last_active.store(at_millis, Ordering::Relaxed);
    }

    pub(crate) fn touch(&self, at_millis: u64) {
        self.last_active.store(at_millis, Ordering::Relaxed);
    }

    pub(crate) fn set_current_request(&self, id: shoal_protocol::Snowflake) {
        self.current_request.store(id.raw(), Ordering::Relaxed);
    }

    pub(crate) fn last_active(&self) -> u64 {
        self.last_active.load(Ordering::Relaxed)
    }

    /// Idle: nothing queued or running and no keep-alive.
    pub(crate) fn is_idle(&self) -> bool {
        self.pending() == 0 && !self.keep_alive()
    }
}

/// What an entity instance may use: its address and lease epoch, its storage, clients to call
/// other entities, and what it knows of the runner it runs on. Cheap to clone.
#[derive(Clone)]
pub struct EntityContext {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    address: EntityAddress,
    /// The lease epoch the instance started under, fixed for its whole life.
    epoch: shoal_storage::Epoch,
    router: Router,
    kv: Option<Arc<dyn EntityKv>>,
    flags: Arc<InstanceFlags>,
}

impl EntityContext {
    /// The entity's address.
    pub fn address(&self) -> &EntityAddress {
        &self.inner.address
    }

    /// The address of the runner hosting the entity (`None` only for client-only processes,
    /// which host no entities).
    pub fn runner_address(&self) -> Option<&RunnerAddress> {
        self.inner.router.me()
    }

    /// The incarnation of the process hosting the entity (a random value made when it started).
    pub fn incarnation(&self) -> Incarnation {
        self.inner.router.identity().incarnation()
    }

    /// The router, through which the entity's clients call ([`EntityContext::client`]).
    pub(crate) fn router(&self) -> &Router {
        &self.inner.router
    }

    /// The epoch of the shard lease this instance started under: the fencing token of every
    /// storage write it makes, for its whole life (also from tasks it spawned, after the shard
    /// moved or was taken again). Storage refuses the writes once the shard has a newer epoch.
    pub fn epoch(&self) -> shoal_storage::Epoch {
        self.inner.epoch
    }

    /// The epoch of the lease under which this runner holds the entity's shard now (`None` once
    /// the shard is no longer held here). Writes carry [`EntityContext::epoch`], not this.
    pub fn shard_epoch(&self) -> Option<shoal_storage::Epoch> {
        self.inner.router.shards().epoch(&self.inner.address.shard)
    }

    /// The id of the request being handled (for entities that handle one message at a time, as
    /// typed entities do; dynamic entities get it in [`crate::DynamicRequest::id`]). A persisted
    /// request keeps its id across redeliveries, so handlers can use it to make their effects
    /// idempotent. `None` outside a handler.
    pub fn request_id(&self) -> Option<shoal_protocol::Snowflake> {
        match self.inner.flags.current_request.load(Ordering::Relaxed) {
            0 => None,
            raw => Some(shoal_protocol::Snowflake::from_raw(raw)),
        }
    }

    /// This entity's durable key-value storage, when the runtime has one
    /// ([`crate::ShardingBuilder::entity_kv`]). Writes are fenced by the shard's lease epoch.
    pub fn kv(&self) -> Option<crate::EntityKvHandle> {
        let kv = self.inner.kv.clone()?;
        Some(crate::EntityKvHandle::new(kv, self.clone()))
    }

    /// Keeps the instance resident while idle (`true`) or lets it be passivated again (`false`).
    pub fn keep_alive(&self, enabled: bool) {
        self.inner
            .flags
            .keep_alive
            .store(enabled, Ordering::Relaxed);
    }
}

impl fmt::Debug for EntityContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntityContext")
            .field("address", &self.inner.address)
            .finish_non_exhaustive()
    }
}
