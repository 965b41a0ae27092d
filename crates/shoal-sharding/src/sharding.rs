//! The sharding runtime: its handle, its builder, and the state its parts share.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use shoal_protocol::{
    EntityId, EntityType, Incarnation, MachineId, Runner, RunnerAddress, ShardGroup, ShardId,
};
use shoal_storage::{
    ClusterParameters, EntityKv, MessageStorage, ParameterDifference, RunnerStatus, RunnerStorage,
    ShardLease, StorageError,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::ShardingConfig;
use crate::entity::{Entity, Registration, RegistrationParts};
use crate::error::RegisterError;
use crate::hash::{SHARD_HASH, shard_index};
use crate::health::{NoopHealth, RunnerHealth};
use crate::identity::Identity;
use crate::in_process::InProcessNetwork;
use crate::instance::InstanceSettings;
use crate::manager::{EntityManager, ManagerParts};
use crate::persist::{MessageSettings, Persistence};
use crate::residency::Residency;
use crate::routing::Routes;
use crate::shards::ShardStates;
use crate::singleton::{SingletonContext, SingletonSpec, Singletons};
use crate::transport::Transport;

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The builder was not given runner storage.
    #[error("no runner storage configured (call ShardingBuilder::storage)")]
    MissingStorage,
    /// The builder was not given a transport.
    #[error("no transport configured (call ShardingBuilder::transport or in_process)")]
    MissingTransport,
    /// Neither `runner` nor `client_only` was chosen.
    #[error("choose a mode: ShardingBuilder::runner(address) or ShardingBuilder::client_only()")]
    MissingMode,
    /// An entity registration was refused.
    #[error(transparent)]
    Register(#[from] RegisterError),
    /// Registering the runner in storage failed.
    #[error("could not register the runner in storage: {0}")]
    Storage(#[source] StorageError),
    /// Another live process is registered at this runner's address, and its heartbeat did not
    /// lapse within one lease TTL.
    #[error(
        "could not register runner {address} (waited {waited:?} for the address to free up): {source}"
    )]
    AddressInUse {
        /// The address.
        address: RunnerAddress,
        /// How long the runner waited for the other process's heartbeat to lapse.
        waited: Duration,
        /// What storage said.
        #[source]
        source: StorageError,
    },
    /// This process's settings differ from the cluster's fixed parameters: it would map
    /// entities to other shards than the other processes do.
    #[error(
        "this process's settings differ from the cluster's: {}; use the cluster's values (they \
         cannot change while the cluster's storage is in use)",
        .differences.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    ClusterMismatch {
        /// Each setting that differs.
        differences: Vec<ParameterDifference>,
    },
    /// Reading or storing the cluster's parameters, or leasing a machine id, failed.
    #[error("could not {what} in storage: {source}")]
    Identity {
        /// What was attempted.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: StorageError,
    },
}

/// What the runtime's parts share.
pub(crate) struct Inner {
    pub(crate) config: ShardingConfig,
    /// This runner; `None` in client-only mode.
    pub(crate) me: Option<Runner>,
    /// The incarnation and id generator of this process.
    pub(crate) identity: Arc<Identity>,
    pub(crate) storage: Arc<dyn RunnerStorage>,
    /// Durable messages (`None`: persisted messages are refused).
    pub(crate) persistence: Option<Arc<Persistence>>,
    /// Entity key-value storage (`None`: [`crate::EntityContext::kv`] is unavailable).
    pub(crate) kv: Option<Arc<dyn EntityKv>>,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) health: Arc<dyn RunnerHealth>,
    pub(crate) shards: ShardStates,
    pub(crate) routes: Routes,
    pub(crate) entities: RwLock<HashMap<EntityType, Arc<EntityManager>>>,
    pub(crate) singletons: Singletons,
    pub(crate) residency: Arc<Residency>,
    pub(crate) clock: Clock,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) cancel: CancellationToken,
    pub(crate) tasks: Mutex<Vec<JoinHandle<()>>>,
    pub(crate) network: Option<Arc<InProcessNetwork>>,
    pub(crate) view: Mutex<ClusterView>,
    /// Cancelled when the lease keeper has finished handing shards off.
    pub(crate) stopped: CancellationToken,
}

/// The last view of the cluster read from storage.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// Runners with a live heartbeat.
    pub runners: Vec<RunnerStatus>,
    /// Live shard leases.
    pub leases: Vec<ShardLease>,
}

/// A handle to the sharding runtime of this process. Cheap to clone.
///
/// Build one with [`Sharding::builder`]; register entity types; call entities through
/// [`Sharding::client`]; stop with [`Sharding::shutdown`].
#[derive(Clone)]
pub struct Sharding {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Sharding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sharding")
            .field("runner", &self.inner.me.as_ref().map(|r| &r.address))
            .finish_non_exhaustive()
    }
}

enum Mode {
    Runner(RunnerAddress),
    ClientOnly,
}

/// Configures and starts a [`Sharding`] runtime.
pub struct ShardingBuilder {
    config: ShardingConfig,
    storage: Option<Arc<dyn RunnerStorage>>,
    messages: Option<Arc<dyn MessageStorage>>,
    message_settings: MessageSettings,
    kv: Option<Arc<dyn EntityKv>>,
    transport: Option<Arc<dyn Transport>>,
    health: Option<Arc<dyn RunnerHealth>>,
    network: Option<Arc<InProcessNetwork>>,
    mode: Option<Mode>,
    registrations: Vec<Result<RegistrationParts, RegisterError>>,
    singletons: Vec<SingletonSpec>,
}

impl std::fmt::Debug for ShardingBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardingBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Sharding {
    /// A builder with `config`.
    pub fn builder(config: ShardingConfig) -> ShardingBuilder {
        ShardingBuilder {
            config,
            storage: None,
            messages: None,
            message_settings: MessageSettings::default(),
            kv: None,
            transport: None,
            health: None,
            network: None,
            mode: None,
            registrations: Vec::new(),
            singletons: Vec::new(),
        }
    }
}

impl ShardingBuilder {
    /// Where runners register and lease shards.
    pub fn storage(mut self, storage: Arc<dyn RunnerStorage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Where persisted messages and their replies are kept (without it, sending a persisted
    /// message fails with [`crate::CallError::Persistence`]).
    pub fn message_storage(mut self, storage: Arc<dyn MessageStorage>) -> Self {
        self.messages = Some(storage);
        self
    }

    /// Tunables of persisted messages (default: [`MessageSettings::default`]).
    pub fn message_settings(mut self, settings: MessageSettings) -> Self {
        self.message_settings = settings;
        self
    }

    /// Durable key-value storage for entities ([`crate::EntityContext::kv`]).
    pub fn entity_kv(mut self, kv: Arc<dyn EntityKv>) -> Self {
        self.kv = Some(kv);
        self
    }

    /// How this process reaches other runners.
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Joins an in-process network (several runtimes in one process, for tests and embedded
    /// use): it is the transport, and this runner becomes reachable on it.
    pub fn in_process(mut self, network: &Arc<InProcessNetwork>) -> Self {
        self.transport = Some(network.clone());
        self.network = Some(network.clone());
        self
    }

    /// How other runners' health is judged (default: [`NoopHealth`]).
    pub fn health(mut self, health: Arc<dyn RunnerHealth>) -> Self {
        self.health = Some(health);
        self
    }

    /// Runs as a full runner reachable at `address`: holds shards and hosts entities.
    pub fn runner(mut self, address: RunnerAddress) -> Self {
        self.mode = Some(Mode::Runner(address));
        self
    }

    /// Runs as a client only: routes and sends, holds no shards, hosts no entities.
    pub fn client_only(mut self) -> Self {
        self.mode = Some(Mode::ClientOnly);
        self
    }

    /// Registers an entity type before the runner takes shards (so no message finds its type
    /// missing).
    pub fn entity(mut self, definition: impl Registration) -> Self {
        self.registrations.push(definition.into_parts());
        self
    }

    /// Registers a singleton before the runner takes shards (see
    /// [`Sharding::register_singleton`]): it starts as soon as this runner holds its shard, and
    /// a mistake in it (an unknown group, a name that is not a valid entity id, a name used
    /// twice) fails [`ShardingBuilder::start`].
    pub fn singleton<F, Fut>(mut self, name: &str, group: ShardGroup, run: F) -> Self
    where
        F: Fn(SingletonContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.singletons.push(SingletonSpec::new(name, group, run));
        self
    }

    /// Registers the runner in storage, reads the cluster and starts the background tasks.
    pub async fn start(self) -> Result<Sharding, StartError> {
        let storage = self.storage.ok_or(StartError::MissingStorage)?;
        let transport = self.transport.ok_or(StartError::MissingTransport)?;
        let mode = self.mode.ok_or(StartError::MissingMode)?;
        let config = self.config;
        let me = match mode {
            Mode::Runner(address) => Some(Runner::new(
                address,
                config.assigned_groups().iter().cloned(),
                config.runner_weight(),
            )),
            Mode::ClientOnly => None,
        };
        check_cluster_parameters(&*storage, &config).await?;
        let identity = Identity::start(storage.clone(), config.storage_timeout())
            .await
            .map_err(|source| StartError::Identity {
                what: "lease a machine id",
                source,
            })?;
        if let Some(runner) = &me {
            register(&*storage, runner, identity.incarnation(), &config).await?;
        }
        let clock = Clock::new();
        let inner = Arc::new(Inner {
            shards: ShardStates::new(config.available_groups(), config.shards_per_group(), clock),
            residency: Arc::new(Residency::new(config.max_resident_entities())),
            routes: Routes::default(),
            entities: RwLock::new(HashMap::new()),
            singletons: Singletons::default(),
            clock,
            shutting_down: AtomicBool::new(false),
            cancel: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
            view: Mutex::new(ClusterView::default()),
            stopped: CancellationToken::new(),
            health: self.health.unwrap_or_else(|| Arc::new(NoopHealth)),
            network: self.network,
            config,
            me,
            identity,
            storage,
            persistence: self
                .messages
                .map(|messages| Arc::new(Persistence::new(messages, self.message_settings))),
            kv: self.kv,
            transport,
        });
        let sharding = Sharding { inner };
        let registered = self
            .registrations
            .into_iter()
            .try_for_each(|registration| sharding.register_parts(registration?))
            .and_then(|()| {
                self.singletons
                    .into_iter()
                    .try_for_each(|singleton| sharding.add_singleton(singleton))
            });
        if let Err(error) = registered {
            sharding.give_back().await;
            return Err(error.into());
        }
        if let (Some(network), Some(me)) = (&sharding.inner.network, &sharding.inner.me) {
            network.attach(me.address.clone(), &sharding);
        }
        let identity = &sharding.inner.identity;
        match &sharding.inner.me {
            Some(me) => tracing::info!(
                runner = %me.address,
                incarnation = %identity.incarnation(),
                machine_id = %identity.machine_id(),
                "runner registered"
            ),
            None => tracing::info!(
                incarnation = %identity.incarnation(),
                machine_id = %identity.machine_id(),
                "client-only process started"
            ),
        }
        sharding.spawn_task(tokio::spawn(
            identity.clone().keep(sharding.inner.cancel.clone()),
        ));
        crate::persist::start_tasks(&sharding).await;
        if sharding.inner.me.is_some() {
            let gauges = sharding.clone();
            sharding.spawn_task(tokio::spawn(async move { gauges.report_mailboxes().await }));
        }
        crate::keeper::start(&sharding).await;
        crate::reachability::start(&sharding);
        Ok(sharding)
    }
}

/// The parameters every process of the cluster must share.
fn cluster_parameters(config: &ShardingConfig) -> ClusterParameters {
    ClusterParameters::new()
        .with("shards_per_group", config.shards_per_group().to_string())
        .with("shard_hash", SHARD_HASH)
}

/// Stores this process's cluster parameters if the cluster has none yet, and refuses to start
/// when the stored ones differ.
async fn check_cluster_parameters(
    storage: &dyn RunnerStorage,
    config: &ShardingConfig,
) -> Result<(), StartError> {
    let ours = cluster_parameters(config);
    let mut last = None;
    for attempt in 0..5u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200) * attempt).await;
        }
        let call = storage.cluster_parameters(&ours);
        let error = match tokio::time::timeout(config.storage_timeout(), call).await {
            Ok(Ok(stored)) => {
                let differences = ours.differences(&stored);
                return if differences.is_empty() {
                    Ok(())
                } else {
                    Err(StartError::ClusterMismatch { differences })
                };
            }
            Ok(Err(error)) if !error.is_unavailable() => error,
            Ok(Err(error)) => {
                last = Some(error);
                continue;
            }
            Err(_) => {
                last = Some(StorageError::Timeout {
                    operation: "cluster_parameters",
                    timeout: config.storage_timeout(),
                });
                continue;
            }
        };
        last = Some(error);
        break;
    }
    Err(StartError::Identity {
        what: "read the cluster's parameters",
        source: last.unwrap_or(StorageError::Timeout {
            operation: "cluster_parameters",
            timeout: config.storage_timeout(),
        }),
    })
}

/// Registers the runner, retrying transient storage failures. When another live process is
/// registered at the address, waits up to one lease TTL for its heartbeat to lapse (a process
/// restarted on the same address after a crash), then gives up: two live processes must never
/// serve one address.
async fn register(
    storage: &dyn RunnerStorage,
    runner: &Runner,
    incarnation: Incarnation,
    config: &ShardingConfig,
) -> Result<(), StartError> {
    let started = tokio::time::Instant::now();
    let patience = config.lease_ttl() + config.storage_timeout();
    let mut failures = 0u32;
    let mut waiting = false;
    loop {
        let call = storage.register(runner, incarnation, true, config.lease_ttl());
        let error = match tokio::time::timeout(config.storage_timeout(), call).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(error)) => error,
            Err(_) => StorageError::Timeout {
                operation: "register",
                timeout: config.storage_timeout(),
            },
        };
        match error {
            StorageError::AddressInUse { expires_in, .. } => {
                let waited = started.elapsed();
                if waited >= patience {
                    return Err(StartError::AddressInUse {
                        address: runner.address.clone(),
                        waited,
                        source: error,
                    });
                }
                if !waiting {
                    waiting = true;
                    tracing::warn!(
                        address = %runner.address,
                        %error,
                        "another process is registered at this address; waiting up to one lease \
                         TTL for its heartbeat to lapse"
                    );
                }
                let pause = (expires_in + Duration::from_millis(20))
                    .min(Duration::from_millis(200))
                    .min(patience.saturating_sub(waited) + Duration::from_millis(1));
                tokio::time::sleep(pause).await;
            }
            error if error.is_unavailable() && failures < 4 => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(200) * failures).await;
            }
            error => return Err(StartError::Storage(error)),
        }
    }
}

impl Sharding {
    /// Registers an entity type (typed [`crate::EntityDefinition`] or
    /// [`crate::DynamicDefinition`]).
    pub fn register(&self, definition: impl Registration) -> Result<(), RegisterError> {
        self.register_parts(definition.into_parts()?)
    }

    fn register_parts(&self, parts: RegistrationParts) -> Result<(), RegisterError> {
        if self.is_shutting_down() {
            return Err(RegisterError::ShuttingDown);
        }
        let config = &self.inner.config;
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
            residency: self.inner.residency.clone(),
            clock: self.inner.clock,
        });
        let mut entities = self.inner.entities.write();
        if entities.contains_key(&parts.entity_type) {
            return Err(RegisterError::DuplicateEntityType(
                parts.entity_type.to_string(),
            ));
        }
        tracing::info!(entity_type = %parts.entity_type, "entity type registered");
        entities.insert(parts.entity_type, manager);
        Ok(())
    }

    /// The address of this runner (`None` for a client-only process).
    pub fn runner_address(&self) -> Option<&RunnerAddress> {
        self.inner.me.as_ref().map(|r| &r.address)
    }

    /// The machine id this process leased from storage (runners and client-only processes
    /// alike): the machine bits of the ids it makes now.
    pub fn machine_id(&self) -> Option<MachineId> {
        Some(self.inner.identity.machine_id())
    }

    /// The incarnation of this process: a random value made when it started. A runner is its
    /// address and its incarnation.
    pub fn incarnation(&self) -> Incarnation {
        self.inner.identity.incarnation()
    }

    /// The configuration.
    pub fn config(&self) -> &ShardingConfig {
        &self.inner.config
    }

    /// The shard of an entity of type `E`.
    pub fn shard_of<E: Entity>(&self, id: &EntityId) -> ShardId {
        self.shard_in(&E::shard_group(id), id)
    }

    /// The shard of `id` in `group`.
    pub fn shard_in(&self, group: &ShardGroup, id: &EntityId) -> ShardId {
        ShardId::new(
            group.clone(),
            shard_index(id.as_str(), self.inner.config.shards_per_group()),
        )
    }

    /// The shards this runner holds and serves now.
    pub fn active_shards(&self) -> Vec<ShardId> {
        self.inner.shards.active()
    }

    /// Whether this runner holds and serves `shard` now.
    pub fn holds(&self, shard: &ShardId) -> bool {
        self.inner.shards.is_active(shard)
    }

    /// The epoch of the lease under which this runner holds `shard` (while it serves the shard
    /// or is handing it off; `None` otherwise). Storage writes made for the shard's entities
    /// carry it as their [`Fence`](shoal_storage::Fence).
    pub fn shard_epoch(&self, shard: &ShardId) -> Option<shoal_storage::Epoch> {
        self.inner.shards.epoch(shard)
    }

    /// Live entity instances on this runner, over all types.
    pub fn active_entity_count(&self) -> usize {
        self.inner
            .entities
            .read()
            .values()
            .map(|m| m.active_count())
            .sum()
    }

    /// The last view of the cluster read from storage.
    pub fn cluster_view(&self) -> ClusterView {
        self.inner.view.lock().clone()
    }

    /// Whether [`Sharding::shutdown`] has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }

    pub(crate) fn manager(&self, entity_type: &EntityType) -> Option<Arc<EntityManager>> {
        self.inner.entities.read().get(entity_type).cloned()
    }

    /// Stops gracefully: new calls from this process fail fast, the runner leaves the cluster,
    /// its entities finish their running requests (up to the termination timeout), and its
    /// shards are released at once so other runners take them without waiting for leases to
    /// expire. Bounded: returns within roughly the entity termination timeout plus two storage
    /// deadlines.
    pub async fn shutdown(&self) {
        if self.inner.shutting_down.swap(true, Ordering::AcqRel) {
            // Already stopping (or crashed): wait for the first shutdown to finish.
            self.inner.stopped.cancelled().await;
            return;
        }
        tracing::info!(runner = ?self.runner_address(), "shutting down");
        self.inner.cancel.cancel();
        self.inner.stopped.cancelled().await;
        if let (Some(network), Some(me)) = (&self.inner.network, &self.inner.me) {
            network.detach(&me.address);
        }
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.inner.tasks.lock());
        for task in tasks {
            task.abort();
        }
        self.inner.identity.release().await;
        tracing::info!(runner = ?self.runner_address(), "shut down");
    }

    /// Resolves once the runtime has stopped: after [`Sharding::shutdown`], or on its own when
    /// another process registered at this runner's address while this one was away (frozen, cut
    /// off from storage): it then serves nothing any more, and the process should exit.
    pub async fn stopped(&self) {
        self.inner.stopped.cancelled().await;
    }

    /// Undoes a start that was refused after this process registered: leaves the cluster and
    /// gives its machine id back, so that no other runner assigns shards to a runner that never
    /// ran.
    async fn give_back(&self) {
        if let Some(me) = &self.inner.me {
            let id = shoal_protocol::RunnerId::new(me.address.clone(), self.incarnation());
            let call = self.inner.storage.unregister(&id);
            match tokio::time::timeout(self.inner.config.storage_timeout(), call).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "unregistering the refused runner failed; its heartbeat lapses on its own");
                }
                Err(_) => tracing::warn!(
                    "unregistering the refused runner timed out; its heartbeat lapses on its own"
                ),
            }
        }
        self.inner.identity.release().await;
    }

    /// Stops every task at once without releasing leases or leaving the cluster, as a crash
    /// would. For fault-injection tests: other runners take this runner's shards only after its
    /// leases expire.
    pub fn crash(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
        if let (Some(network), Some(me)) = (&self.inner.network, &self.inner.me) {
            network.detach(&me.address);
        }
        for task in std::mem::take(&mut *self.inner.tasks.lock()) {
            task.abort();
        }
        self.inner.singletons.abort_all();
        for manager in self.inner.entities.read().values() {
            manager.abort_all();
        }
        for shard in self.inner.shards.active() {
            self.inner.shards.clear(&shard);
        }
        self.inner.cancel.cancel();
        self.inner.stopped.cancel();
        tracing::warn!(runner = ?self.runner_address(), "crashed (simulated)");
    }

    /// Every few seconds, publishes the requests queued or running per entity type
    /// (`shoal_mailbox_depth{type}`).
    async fn report_mailboxes(self) {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let managers: Vec<Arc<EntityManager>> =
                self.inner.entities.read().values().cloned().collect();
            for manager in managers {
                metrics::gauge!("shoal_mailbox_depth", "type" => manager.entity_type().to_string())
                    .set(manager.pending_requests() as f64);
            }
        }
    }

    pub(crate) fn spawn_task(&self, task: JoinHandle<()>) {
        self.inner.tasks.lock().push(task);
    }
}
