//! The instances of one entity type on this runner.

use std::any::TypeId;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use shoal_protocol::{
    EntityAddress, EntityId, EntityType, ErrorCode, Failure, ShardGroup, ShardId, Snowflake, Tag,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::entity::{BehaviorFactory, EntityContext, GroupSelector, InstanceFlags, TagInfo};
use crate::instance::InstanceSettings;
use crate::instance::{Control, Delivery, InstanceTask, spawn_instance};
use crate::residency::Residency;
use crate::sharding::Sharding;
use crate::shards::ShardStates;

/// How many instances to look at when the resident cap is reached and one must be evicted.
const EVICTION_SAMPLE: usize = 32;

struct Handle {
    tx: mpsc::Sender<Delivery>,
    control: mpsc::UnboundedSender<Control>,
    flags: Arc<InstanceFlags>,
    shard: ShardId,
    generation: u64,
    task: JoinHandle<()>,
}

/// A stopped instance whose task may still be finishing.
pub(crate) struct Stopping {
    pub(crate) task: JoinHandle<()>,
}

/// The instances of one entity type, and how to make more.
pub(crate) struct EntityManager {
    entity_type: EntityType,
    factory: Arc<dyn BehaviorFactory>,
    tags: HashMap<Tag, TagInfo>,
    rust_type: Option<TypeId>,
    group: Option<GroupSelector>,
    settings: InstanceSettings,
    mailbox_capacity: usize,
    instances: Mutex<HashMap<EntityId, Handle>>,
    next_generation: AtomicU64,
    residency: Arc<Residency>,
    clock: Clock,
    this: Weak<EntityManager>,
}

impl std::fmt::Debug for EntityManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntityManager")
            .field("entity_type", &self.entity_type)
            .finish_non_exhaustive()
    }
}

/// What [`EntityManager::new`] needs.
pub(crate) struct ManagerParts {
    pub(crate) entity_type: EntityType,
    pub(crate) factory: Arc<dyn BehaviorFactory>,
    pub(crate) tags: HashMap<Tag, TagInfo>,
    pub(crate) rust_type: Option<TypeId>,
    pub(crate) group: Option<GroupSelector>,
    pub(crate) settings: InstanceSettings,
    pub(crate) mailbox_capacity: usize,
    pub(crate) residency: Arc<Residency>,
    pub(crate) clock: Clock,
}

impl EntityManager {
    pub(crate) fn new(parts: ManagerParts) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            entity_type: parts.entity_type,
            factory: parts.factory,
            tags: parts.tags,
            rust_type: parts.rust_type,
            group: parts.group,
            settings: parts.settings,
            mailbox_capacity: parts.mailbox_capacity,
            instances: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(1),
            residency: parts.residency,
            clock: parts.clock,
            this: this.clone(),
        })
    }

    /// Whether local calls of Rust type `t` may skip serialization.
    pub(crate) fn accepts_local(&self, t: TypeId) -> bool {
        self.rust_type == Some(t)
    }

    pub(crate) fn tag_info(&self, tag: &Tag) -> Option<TagInfo> {
        self.tags.get(tag).copied()
    }

    pub(crate) fn group_selector(&self) -> GroupSelector {
        self.group
            .clone()
            .unwrap_or_else(|| GroupSelector::fixed(ShardGroup::default_group()))
    }

    /// Live instances of this type.
    pub(crate) fn active_count(&self) -> usize {
        self.instances.lock().len()
    }

    /// Requests queued or running over this type's instances.
    pub(crate) fn pending_requests(&self) -> u64 {
        self.instances
            .lock()
            .values()
            .map(|h| u64::from(h.flags.pending()))
            .sum()
    }

    /// The type's name.
    pub(crate) fn entity_type(&self) -> &EntityType {
        &self.entity_type
    }

    fn gauge(&self, len: usize) {
        metrics::gauge!("shoal_entities", "type" => self.entity_type.to_string()).set(len as f64);
    }

    /// Puts `delivery` in the mailbox of the entity at `address`, activating it if needed.
    /// On refusal the delivery comes back with the failure (boxed: refusals are rare), so the
    /// caller can retry it.
    pub(crate) fn deliver(
        &self,
        address: &EntityAddress,
        delivery: Delivery,
        shards: &ShardStates,
        sharding: &Sharding,
    ) -> Result<(), Box<(Failure, Delivery)>> {
        let mut instances = self.instances.lock();
        // Checked under the lock: a shard release marks the shard first and then takes this lock
        // to stop its instances, so no delivery slips in behind it.
        if !shards.is_active(&address.shard) {
            return Err(Box::new((not_assigned(address), delivery)));
        }
        let mut delivery = delivery;
        for _ in 0..2 {
            if !instances.contains_key(&address.entity_id) {
                if !self.residency.try_reserve() && !self.evict_idle(&mut instances) {
                    return Err(Box::new((
                        Failure::new(
                            ErrorCode::MailboxFull,
                            "the runner's resident entity cap is reached",
                        )
                        .with_address(address.clone()),
                        delivery,
                    )));
                }
                let handle = self.spawn(address, sharding);
                instances.insert(address.entity_id.clone(), handle);
                self.gauge(instances.len());
            }
            let Some(handle) = instances.get(&address.entity_id) else {
                break;
            };
            // Counted before the send: the instance may finish the request before this thread
            // runs again.
            handle.flags.add_pending();
            match handle.tx.try_send(delivery) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(d)) => {
                    handle.flags.undo_pending();
                    return Err(Box::new((
                        Failure::new(ErrorCode::MailboxFull, "the entity's mailbox is full")
                            .with_address(address.clone()),
                        d,
                    )));
                }
                Err(mpsc::error::TrySendError::Closed(d)) => {
                    handle.flags.undo_pending();
                    // The instance exited on its own (activation failed); replace it.
                    if let Some(old) = instances.remove(&address.entity_id) {
                        self.residency.release(1);
                        old.task.abort();
                    }
                    delivery = d;
                }
            }
        }
        Err(Box::new((
            Failure::new(ErrorCode::Defect, "the entity could not be started")
                .with_address(address.clone()),
            delivery,
        )))
    }

    fn spawn(&self, address: &EntityAddress, sharding: &Sharding) -> Handle {
        let (tx, mailbox) = mpsc::channel(self.mailbox_capacity);
        let (control_tx, control) = mpsc::unbounded_channel();
        let flags = Arc::new(InstanceFlags::default());
        flags.touch(self.clock.now_ms());
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let ctx = EntityContext::new(address.clone(), sharding.clone(), flags.clone());
        let task = spawn_instance(InstanceTask {
            id: address.entity_id.clone(),
            generation,
            ctx,
            factory: self.factory.clone(),
            mailbox,
            control,
            flags: flags.clone(),
            settings: self.settings,
            manager: self.this.clone(),
            clock: self.clock,
        });
        Handle {
            tx,
            control: control_tx,
            flags,
            shard: address.shard.clone(),
            generation,
            task,
        }
    }

    /// Evicts the longest-idle instance among a sample, handing its residency slot over.
    fn evict_idle(&self, instances: &mut HashMap<EntityId, Handle>) -> bool {
        let victim = instances
            .iter()
            .take(EVICTION_SAMPLE)
            .filter(|(_, h)| h.flags.is_idle())
            .min_by_key(|(_, h)| h.flags.last_active())
            .map(|(id, _)| id.clone());
        let Some(id) = victim else {
            return false;
        };
        if let Some(handle) = instances.remove(&id) {
            let _ = handle.control.send(Control::Stop);
            tracing::debug!(entity_type = %self.entity_type, entity_id = %id, "passivated to make room under the resident cap");
        }
        // The victim's slot is reused by the caller's new instance.
        true
    }

    /// Called by an idle instance: removes it unless a request arrived meanwhile.
    pub(crate) fn try_passivate(&self, id: &EntityId, generation: u64) -> bool {
        let mut instances = self.instances.lock();
        let removable = instances
            .get(id)
            .is_some_and(|h| h.generation == generation && h.flags.is_idle());
        if removable {
            instances.remove(id);
            self.residency.release(1);
            self.gauge(instances.len());
        }
        removable
    }

    /// Called by an instance task that ends on its own.
    pub(crate) fn instance_exited(&self, id: &EntityId, generation: u64) {
        let mut instances = self.instances.lock();
        if instances
            .get(id)
            .is_some_and(|h| h.generation == generation)
        {
            instances.remove(id);
            self.residency.release(1);
            self.gauge(instances.len());
        }
    }

    /// Interrupts a request (queued or running) of the entity `id`.
    pub(crate) fn interrupt(&self, id: &EntityId, request: Snowflake) {
        if let Some(handle) = self.instances.lock().get(id) {
            let _ = handle.control.send(Control::Interrupt(request));
        }
    }

    /// Stops the instances of `shards` gracefully: running requests finish, queued ones fail as
    /// "not assigned here". Returns their tasks so the caller can wait (and abort after a
    /// timeout).
    pub(crate) fn stop_shards(&self, shards: &HashSet<ShardId>) -> Vec<Stopping> {
        self.remove_where(|h| shards.contains(&h.shard), false)
    }

    /// Aborts the instances of `shards` at once (their lease may already belong to another
    /// runner).
    pub(crate) fn abort_shards(&self, shards: &HashSet<ShardId>) {
        self.remove_where(|h| shards.contains(&h.shard), true);
    }

    /// Aborts every instance.
    pub(crate) fn abort_all(&self) {
        self.remove_where(|_| true, true);
    }

    fn remove_where(&self, matches: impl Fn(&Handle) -> bool, abort: bool) -> Vec<Stopping> {
        let mut instances = self.instances.lock();
        let ids: Vec<EntityId> = instances
            .iter()
            .filter(|(_, h)| matches(h))
            .map(|(id, _)| id.clone())
            .collect();
        let mut stopping = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(handle) = instances.remove(&id) {
                if abort {
                    handle.task.abort();
                } else {
                    let _ = handle.control.send(Control::Stop);
                }
                stopping.push(Stopping { task: handle.task });
            }
        }
        self.residency.release(stopping.len());
        self.gauge(instances.len());
        stopping
    }
}

pub(crate) fn not_assigned(address: &EntityAddress) -> Failure {
    Failure::new(
        ErrorCode::EntityNotAssigned,
        "this runner does not hold the entity's shard",
    )
    .with_address(address.clone())
}
