//! The entity host: the entity types registered on this runner, their live instances, the cap
//! on resident instances, and passivation. It is the only part that runs entities; the router,
//! the inbound side and persisted processing reach it through [`LocalEntities`].
//!
//! - [`manager`](self::manager): the instances of one entity type.
//! - [`instance`](self::instance): one instance: its mailbox and its task.
//! - [`residency`](self::residency): the runner-wide cap on resident instances.

pub(crate) mod instance;
pub(crate) mod manager;
pub(crate) mod residency;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::RwLock;
use shoal_protocol::{EntityAddress, EntityType, ErrorCode, Failure, ShardId, Snowflake, Tag};
use shoal_storage::Epoch;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::config::ShardingConfig;
use crate::entity::{
    Call, ChunkSender, ContextSource, GroupSelector, Payload, RegistrationParts, TagInfo,
    resumed_chunk_channel,
};
use crate::error::RegisterError;
use crate::lease::shards::ShardStates;
use crate::local::LocalEntities;
use crate::reply::{Delivered, ReplyTo};
use crate::router::outgoing::Outgoing;
use instance::{Delivery, InstanceSettings};
use manager::{EntityManager, ManagerParts, Reserved, Room, Stopping};
use residency::Residency;

/// The entities of this runner.
pub(crate) struct EntityHost {
    config: Arc<ShardingConfig>,
    /// Which shards this runner serves (written by the lease keeper): checked on every delivery.
    shards: Arc<ShardStates>,
    residency: Arc<Residency>,
    clock: Clock,
    contexts: ContextSource,
    managers: RwLock<HashMap<EntityType, Arc<EntityManager>>>,
}

impl std::fmt::Debug for EntityHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntityHost")
            .field("types", &self.managers.read().len())
            .finish_non_exhaustive()
    }
}

impl EntityHost {
    pub(crate) fn new(
        config: Arc<ShardingConfig>,
        shards: Arc<ShardStates>,
        clock: Clock,
        contexts: ContextSource,
    ) -> Self {
        Self {
            residency: Arc::new(Residency::new(config.max_resident_entities())),
            config,
            shards,
            clock,
            contexts,
            managers: RwLock::new(HashMap::new()),
        }
    }

    /// Registers an entity type.
    pub(crate) fn register(&self, parts: RegistrationParts) -> Result<(), RegisterError> {
        let config = &self.config;
        let options = parts.options;
        let manager = EntityManager::new(ManagerParts {
            settings: InstanceSettings {
                max_idle: options
                    .max_idle_time
                    .unwrap_or(config.entity_max_idle_time()),
                concurrency: options.concurrency.unwrap_or(1),
                defect_max_retries: config.defect_max_retries(),
                defect_backoff: config.defect_backoff(),
            },
            mailbox_capacity: options
                .mailbox_capacity
                .unwrap_or(config.entity_mailbox_capacity())
                .max(1),
            group: options.shard_group,
            entity_type: parts.entity_type.clone(),
            factory: parts.factory,
            tags: parts.tags,
            rust_type: parts.rust_type,
            residency: self.residency.clone(),
            clock: self.clock,
        });
        let mut managers = self.managers.write();
        if managers.contains_key(&parts.entity_type) {
            return Err(RegisterError::DuplicateEntityType(
                parts.entity_type.to_string(),
            ));
        }
        tracing::info!(entity_type = %parts.entity_type, "entity type registered");
        managers.insert(parts.entity_type, manager);
        Ok(())
    }

    fn manager(&self, entity_type: &EntityType) -> Option<Arc<EntityManager>> {
        self.managers.read().get(entity_type).cloned()
    }

    fn managers(&self) -> Vec<Arc<EntityManager>> {
        self.managers.read().values().cloned().collect()
    }

    /// Live instances, over all types.
    pub(crate) fn active_count(&self) -> usize {
        self.managers
            .read()
            .values()
            .map(|m| m.active_count())
            .sum()
    }

    /// Stops the instances of `shards` gracefully (see [`EntityManager::stop_shards`]).
    pub(crate) fn stop_shards(&self, shards: &HashSet<ShardId>) -> Vec<Stopping> {
        self.managers()
            .iter()
            .flat_map(|m| m.stop_shards(shards))
            .collect()
    }

    /// Aborts the instances of `shards` at once.
    pub(crate) fn abort_shards(&self, shards: &HashSet<ShardId>) {
        for manager in self.managers() {
            manager.abort_shards(shards);
        }
    }

    /// Aborts every instance (a simulated crash).
    pub(crate) fn abort_all(&self) {
        for manager in self.managers() {
            manager.abort_all();
        }
    }

    /// Every few seconds, publishes the requests queued or running per entity type
    /// (`shoal_mailbox_depth{type}`).
    pub(crate) async fn report_mailboxes(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for manager in self.managers() {
                metrics::gauge!("shoal_mailbox_depth", "type" => manager.entity_type().to_string())
                    .set(manager.pending_requests() as f64);
            }
        }
    }

    /// [`LocalEntities::deliver`] into a mailbox slot reserved beforehand (a stored request that
    /// waited for room), if the instance it was reserved in is still the entity's.
    #[expect(
        clippy::result_large_err,
        reason = "a refusal is the wire `Failure` answered to the caller"
    )]
    fn deliver_reserved(
        &self,
        out: &mut Outgoing,
        id: Snowflake,
        chunks: Option<ChunkSender>,
        reply: ReplyTo,
        reserved: Option<Reserved>,
    ) -> Result<Epoch, Failure> {
        let Some(manager) = self.manager(&out.address.entity_type) else {
            return Err(Failure::new(
                ErrorCode::UnknownEntityType,
                format!(
                    "entity type {:?} is not registered on this runner",
                    out.address.entity_type.as_str()
                ),
            )
            .with_address(out.address.clone()));
        };
        let (tag, payload) = out
            .payload_for(
                manager.rust_type(),
                self.config.simulate_remote_serialization(),
            )
            .map_err(|e| Failure::new(ErrorCode::MalformedMessage, e))?;
        if let Some(tag) = &tag {
            match manager.tag_info(tag) {
                None => {
                    return Err(Failure::new(ErrorCode::UnknownTag, tag.to_string())
                        .with_address(out.address.clone()));
                }
                Some(info) if info.streaming != chunks.is_some() => {
                    return Err(Failure::new(
                        ErrorCode::MalformedMessage,
                        if info.streaming {
                            format!("message {tag:?} streams its replies; call it as a stream")
                        } else {
                            format!("message {tag:?} has a single reply; it cannot be streamed")
                        },
                    )
                    .with_address(out.address.clone()));
                }
                Some(_) => {}
            }
        }
        let encode_reply = !matches!(payload, Payload::Local(_));
        let call = Call {
            id,
            tag,
            payload,
            headers: out.headers.clone(),
            chunks,
            encode_reply,
        };
        match manager.deliver(
            &out.address,
            Delivery { call, reply },
            reserved,
            &self.shards,
            &self.contexts,
        ) {
            Ok(epoch) => Ok(epoch),
            Err(refused) => {
                let (failure, delivery) = *refused;
                out.restore(delivery.call.payload);
                Err(failure)
            }
        }
    }

    async fn deliver_stored(
        &self,
        out: &mut Outgoing,
        id: Snowflake,
        resume: Option<u64>,
        deadline: Instant,
    ) -> Result<Delivered, Failure> {
        // Waiting for the resident cap to make room: 10 ms, doubling up to 500 ms.
        let mut pauses =
            shoal_protocol::Backoff::new(Duration::from_millis(10), Duration::from_millis(500))
                .attempts();
        let mut reserved = None;
        loop {
            let (chunk_tx, chunk_rx) = match resume {
                Some(resume) => {
                    let (tx, rx) = resumed_chunk_channel(resume);
                    (Some(tx), Some(rx))
                }
                None => (None, None),
            };
            let (tx, rx) = oneshot::channel();
            let delivered =
                self.deliver_reserved(out, id, chunk_tx, ReplyTo::Caller(tx), reserved.take());
            let failure = match delivered {
                Ok(epoch) => {
                    return Ok(Delivered {
                        epoch,
                        outcome: rx,
                        chunks: chunk_rx,
                    });
                }
                Err(failure) => failure,
            };
            if failure.code != ErrorCode::MailboxFull || Instant::now() >= deadline {
                return Err(failure);
            }
            let Some(manager) = self.manager(&out.address.entity_type) else {
                return Err(failure);
            };
            match manager
                .wait_for_room(&out.address.entity_id, deadline)
                .await
            {
                Room::Reserved(slot) => reserved = Some(slot),
                Room::Gone => {}
                Room::TimedOut => return Err(failure),
                // The runner's resident cap: wait for an instance to be passivated.
                Room::NoInstance => {
                    let pause = pauses.next_delay();
                    tokio::time::sleep_until(deadline.min(Instant::now() + pause)).await;
                }
            }
        }
    }
}

impl LocalEntities for EntityHost {
    fn deliver(
        &self,
        out: &mut Outgoing,
        id: Snowflake,
        chunks: Option<ChunkSender>,
        reply: ReplyTo,
    ) -> Result<Epoch, Failure> {
        self.deliver_reserved(out, id, chunks, reply, None)
    }

    fn deliver_stored<'a>(
        &'a self,
        out: &'a mut Outgoing,
        id: Snowflake,
        resume: Option<u64>,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Delivered, Failure>> {
        EntityHost::deliver_stored(self, out, id, resume, deadline).boxed()
    }

    fn interrupt(&self, address: &EntityAddress, request: Snowflake) {
        if let Some(manager) = self.manager(&address.entity_type) {
            manager.interrupt(&address.entity_id, request);
        }
    }

    fn tag_info(&self, entity_type: &EntityType, tag: &Tag) -> Option<TagInfo> {
        self.manager(entity_type)?.tag_info(tag)
    }

    fn group_selector(&self, entity_type: &EntityType) -> Option<GroupSelector> {
        self.manager(entity_type).map(|m| m.group_selector())
    }
}
