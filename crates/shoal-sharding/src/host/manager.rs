//! The instances of one entity type on this runner.

use std::any::TypeId;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use shoal_protocol::{
    EntityAddress, EntityId, EntityType, ErrorCode, Failure, ShardGroup, ShardId, Snowflake, Tag,
};
use shoal_storage::Epoch;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::instance::{
    CONTROL_CAPACITY, Control, Delivery, Done, InstanceOwner, InstanceSettings, InstanceTask,
    Retirement, spawn_instance,
};
use super::residency::Residency;
use crate::clock::Clock;
use crate::entity::{BehaviorFactory, ContextSource, GroupSelector, InstanceFlags, TagInfo};
use crate::lease::shards::ShardStates;
use crate::reply::not_assigned;

/// How many instances to look at when the resident cap is reached and one must be evicted.
const EVICTION_SAMPLE: usize = 32;

struct Handle {
    tx: mpsc::Sender<Delivery>,
    /// Interrupts. Dropping the handle closes it, which tells the instance to stop.
    control: mpsc::Sender<Control>,
    flags: Arc<InstanceFlags>,
    shard: ShardId,
    /// The lease epoch the instance started under (its storage writes carry it).
    epoch: Epoch,
    generation: u64,
    /// Resolves once the instance's task has ended (deactivated, or aborted).
    done: Done,
    task: JoinHandle<()>,
}

/// Whether a full mailbox has room again.
#[derive(Debug)]
pub(crate) enum Room {
    /// A slot in the mailbox of the instance of this generation, held for the next delivery.
    Reserved(Reserved),
    /// The instance is gone (deliver again: a new one starts).
    Gone,
    /// No instance to wait for: the runner's resident cap refused a new one.
    NoInstance,
    /// The deadline passed first.
    TimedOut,
}

/// A mailbox slot reserved for one delivery. Holding it (rather than giving it back and trying
/// again) matters: a slot given back goes to the next waiter, and waiters passing it on would
/// keep it from ever being used.
#[derive(Debug)]
pub(crate) struct Reserved {
    permit: mpsc::OwnedPermit<Delivery>,
    generation: u64,
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
    /// Instances removed from `instances` whose task has not ended yet (deactivating): a new
    /// instance of the same id waits for the old one before it activates, so it never loads
    /// state the old one has not saved yet. An entry goes when the old task ends.
    retiring: Mutex<HashMap<EntityId, (u64, Done)>>,
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
            retiring: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(1),
            residency: parts.residency,
            clock: parts.clock,
            this: this.clone(),
        })
    }

    /// The Rust type of a typed entity (local calls of that type skip serialization).
    pub(crate) fn rust_type(&self) -> Option<TypeId> {
        self.rust_type
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

    /// Puts `delivery` in the mailbox of the entity at `address`, activating it if needed, and
    /// returns the lease epoch of the instance that will run it. On refusal the delivery comes
    /// back with the failure (boxed: refusals are rare), so the caller can retry it.
    pub(crate) fn deliver(
        &self,
        address: &EntityAddress,
        delivery: Delivery,
        reserved: Option<Reserved>,
        shards: &ShardStates,
        contexts: &ContextSource,
    ) -> Result<Epoch, Box<(Failure, Delivery)>> {
        let mut instances = self.instances.lock();
        // Checked under the lock: a shard release marks the shard first and then takes this lock
        // to stop its instances, so no delivery slips in behind it. A shard whose lease this
        // runner has not confirmed in time (after a freeze) is not served either.
        let epoch = match shards.epoch(&address.shard) {
            Some(epoch) if shards.is_serving(&address.shard) => epoch,
            _ => return Err(Box::new((not_assigned(address), delivery))),
        };
        if let Some(reserved) = reserved
            && let Some(handle) = instances.get(&address.entity_id)
            && handle.generation == reserved.generation
        {
            handle.flags.add_pending();
            reserved.permit.send(delivery);
            return Ok(handle.epoch);
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
                let Some(handle) = self.spawn(address, epoch, contexts) else {
                    self.residency.release(1);
                    return Err(Box::new((
                        Failure::new(ErrorCode::ShuttingDown, "the runtime has stopped")
                            .with_address(address.clone()),
                        delivery,
                    )));
                };
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
                Ok(()) => return Ok(handle.epoch),
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

    /// Waits until the mailbox of the entity `id` has room, at most until `deadline` (for
    /// persisted requests: they are stored, so their delivery can wait instead of failing).
    pub(crate) async fn wait_for_room(
        &self,
        id: &EntityId,
        deadline: tokio::time::Instant,
    ) -> Room {
        let waited = self
            .instances
            .lock()
            .get(id)
            .map(|handle| (handle.tx.clone(), handle.generation));
        let Some((tx, generation)) = waited else {
            return Room::NoInstance;
        };
        match tokio::time::timeout_at(deadline, tx.reserve_owned()).await {
            Ok(Ok(permit)) => Room::Reserved(Reserved { permit, generation }),
            Ok(Err(_)) => Room::Gone,
            Err(_) => Room::TimedOut,
        }
    }

    fn spawn(
        &self,
        address: &EntityAddress,
        epoch: Epoch,
        contexts: &ContextSource,
    ) -> Option<Handle> {
        let (tx, mailbox) = mpsc::channel(self.mailbox_capacity);
        let (control_tx, control) = mpsc::channel(CONTROL_CAPACITY);
        let flags = Arc::new(InstanceFlags::default());
        flags.touch(self.clock.now_ms());
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let ctx = contexts.context(address.clone(), epoch, flags.clone())?;
        let previous = self
            .retiring
            .lock()
            .remove(&address.entity_id)
            .map(|(_, done)| done);
        let owner: Weak<dyn InstanceOwner> = self.this.clone();
        let (retirement, done) =
            Retirement::new(owner.clone(), address.entity_id.clone(), generation);
        let task = spawn_instance(InstanceTask {
            id: address.entity_id.clone(),
            generation,
            ctx,
            factory: self.factory.clone(),
            mailbox,
            control,
            flags: flags.clone(),
            settings: self.settings,
            owner,
            clock: self.clock,
            previous,
            _retirement: retirement,
        });
        Some(Handle {
            tx,
            control: control_tx,
            flags,
            shard: address.shard.clone(),
            epoch,
            generation,
            done,
            task,
        })
    }

    /// Keeps the signal of a removed instance that is still finishing, so that a new instance
    /// of the same id waits for it.
    fn retire(&self, id: &EntityId, handle: &Handle) {
        if !handle.task.is_finished() {
            self.retiring
                .lock()
                .insert(id.clone(), (handle.generation, handle.done.clone()));
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
            // Dropping the handle closes its control channel: the instance deactivates.
            self.retire(&id, &handle);
            tracing::debug!(entity_type = %self.entity_type, entity_id = %id, "passivated to make room under the resident cap");
        }
        // The victim's slot is reused by the caller's new instance.
        true
    }

    /// Interrupts a request (queued or running) of the entity `id`. Dropped when the
    /// instance's control channel is full (it holds [`CONTROL_CAPACITY`] interrupts not yet
    /// read): a flood of interrupts never grows the runner's memory.
    pub(crate) fn interrupt(&self, id: &EntityId, request: Snowflake) {
        if let Some(handle) = self.instances.lock().get(id)
            && handle
                .control
                .try_send(Control::Interrupt(request))
                .is_err()
        {
            tracing::debug!(entity_type = %self.entity_type, entity_id = %id, %request, "interrupt dropped: the instance's control channel is full");
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
                    // Dropping the handle's channels tells the instance to stop.
                    self.retire(&id, &handle);
                }
                stopping.push(Stopping { task: handle.task });
            }
        }
        self.residency.release(stopping.len());
        self.gauge(instances.len());
        stopping
    }
}

impl InstanceOwner for EntityManager {
    fn try_passivate(&self, id: &EntityId, generation: u64) -> bool {
        let mut instances = self.instances.lock();
        let removable = instances
            .get(id)
            .is_some_and(|h| h.generation == generation && h.flags.is_idle());
        if removable {
            if let Some(handle) = instances.remove(id) {
                self.retire(id, &handle);
            }
            self.residency.release(1);
            self.gauge(instances.len());
        }
        removable
    }

    fn instance_exited(&self, id: &EntityId, generation: u64) {
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

    fn retired(&self, id: &EntityId, generation: u64) {
        let mut retiring = self.retiring.lock();
        if retiring.get(id).is_some_and(|(g, _)| *g == generation) {
            retiring.remove(id);
        }
    }
}
