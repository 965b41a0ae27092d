//! Starting a runtime: the builder, and how it wires the parts together.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use shoal_protocol::{Incarnation, Runner, RunnerAddress, RunnerId, ShardGroup};
use shoal_storage::{
    ClusterParameters, EntityKv, MessageStorage, ParameterDifference, RunnerStorage, StorageError,
};

use crate::clock::Clock;
use crate::config::ShardingConfig;
use crate::entity::{ContextSource, Registration, RegistrationParts};
use crate::error::RegisterError;
use crate::hash::SHARD_HASH;
use crate::health::{NoopHealth, RunnerHealth};
use crate::host::EntityHost;
use crate::identity::Identity;
use crate::in_process::InProcessNetwork;
use crate::inbound::Inbound;
use crate::lease::keeper::KeeperParts;
use crate::lease::reachability::ProberParts;
use crate::lease::shards::ShardStates;
use crate::lease::view::ClusterView;
use crate::lifecycle::Lifecycle;
use crate::local::LocalEntities;
use crate::network::{Network, NetworkError};
use crate::persist::{MessageSettings, Persistence, PersistenceParts};
use crate::router::routes::Routes;
use crate::router::{Router, RouterParts};
use crate::sharding::{Sharding, ShardingParts};
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
    /// The network could not start serving requests from other runners.
    #[error("could not serve requests from other runners: {0}")]
    Serve(#[source] NetworkError),
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
    network: Option<Box<dyn Network>>,
    in_process: Option<Arc<InProcessNetwork>>,
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
        ShardingBuilder::new(config)
    }
}

impl ShardingBuilder {
    fn new(config: ShardingConfig) -> Self {
        Self {
            config,
            storage: None,
            messages: None,
            message_settings: MessageSettings::default(),
            kv: None,
            transport: None,
            health: None,
            network: None,
            in_process: None,
            mode: None,
            registrations: Vec::new(),
            singletons: Vec::new(),
        }
    }

    /// Where runners register and lease shards.
    pub fn storage(mut self, storage: Arc<dyn RunnerStorage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Where persisted messages and their replies are kept (without it, sending a persisted
    /// message fails with [`crate::CallErrorKind::Persistence`]).
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

    /// Joins the other runners through `network`: it gives the transport, this runner's
    /// address (a network without one makes a client-only process), how other runners' health
    /// is judged, and serves their requests once the runtime has started. Stopping the runtime
    /// stops the server. See [`Network`] for the networks there are.
    pub fn network(mut self, network: impl Network) -> Self {
        self.transport = Some(network.transport());
        self.mode = Some(match network.address() {
            Some(address) => Mode::Runner(address),
            None => Mode::ClientOnly,
        });
        self.network = Some(Box::new(network));
        self
    }

    /// How this process reaches other runners, without serving their requests (a client-only
    /// process, or a runner whose server is started separately: see [`crate::InboundHandler`]).
    /// [`ShardingBuilder::network`] gives the transport and the server together.
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Joins an in-process network (several runtimes in one process, for tests and embedded
    /// use), as the runner at the address given to [`ShardingBuilder::runner`] or as a client
    /// only: the same as [`ShardingBuilder::network`] with an [`InProcessNetwork::endpoint`].
    pub fn in_process(mut self, network: &Arc<InProcessNetwork>) -> Self {
        self.transport = Some(network.clone());
        self.in_process = Some(network.clone());
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
        let config = Arc::new(self.config);
        let network: Option<Box<dyn Network>> = match (self.network, &mode) {
            (Some(network), _) => Some(network),
            (None, Mode::Runner(address)) => self
                .in_process
                .map(|net| Box::new(net.endpoint(address.clone())) as Box<dyn Network>),
            (None, Mode::ClientOnly) => None,
        };
        let health = self
            .health
            .or_else(|| network.as_ref().and_then(|n| n.health(&config)))
            .unwrap_or_else(|| Arc::new(NoopHealth));
        let runner = match mode {
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
        if let Some(runner) = &runner {
            register(&*storage, runner, identity.incarnation(), &config).await?;
        }
        let clock = Clock::new();
        let lifecycle = Arc::new(Lifecycle::default());
        let shards = Arc::new(ShardStates::new(
            config.available_groups(),
            config.shards_per_group(),
            clock,
        ));
        let (kv, messages, message_settings) = (self.kv, self.messages, self.message_settings);
        let (router, host) = Router::new_cyclic(|router| {
            let host = Arc::new(EntityHost::new(
                config.clone(),
                shards.clone(),
                clock,
                ContextSource::new(router, kv),
            ));
            let local: Arc<dyn LocalEntities> = host.clone();
            let persistence = messages.map(|storage| {
                Arc::new(Persistence::new(PersistenceParts {
                    storage,
                    settings: message_settings,
                    config: config.clone(),
                    identity: identity.clone(),
                    shards: shards.clone(),
                    local: local.clone(),
                }))
            });
            let parts = RouterParts {
                me: runner.as_ref().map(|r| r.address.clone()),
                config: config.clone(),
                identity: identity.clone(),
                shards: shards.clone(),
                routes: Arc::new(Routes::default()),
                transport,
                local,
                persistence,
                lifecycle: lifecycle.clone(),
            };
            (parts, host)
        });
        let sharding = Sharding::from_parts(ShardingParts {
            inbound: Inbound::new(router.clone()),
            router: router.clone(),
            host: host.clone(),
            singletons: Arc::new(Singletons::default()),
            lifecycle: lifecycle.clone(),
            view: Arc::new(Mutex::new(ClusterView::default())),
            storage: storage.clone(),
            serving: Mutex::new(None),
        });
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
        if let Some(network) = network.filter(|_| router.me().is_some()) {
            match network.serve(sharding.clone()) {
                Ok(serving) => sharding.serving_started(serving),
                Err(source) => {
                    sharding.give_back().await;
                    return Err(StartError::Serve(source));
                }
            }
        }
        match router.me() {
            Some(me) => tracing::info!(
                runner = %me,
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
        lifecycle.spawn(tokio::spawn(
            identity.clone().keep(lifecycle.cancel().clone()),
        ));
        if let (Some(persistence), Some(me)) = (router.persistence(), router.me()) {
            crate::persist::start_tasks(persistence, me, &lifecycle).await;
        }
        if router.me().is_some() {
            lifecycle.spawn(tokio::spawn(host.clone().report_mailboxes()));
        }
        crate::lease::keeper::start(KeeperParts {
            router: router.clone(),
            runner: runner.clone(),
            storage: storage.clone(),
            host,
            singletons: sharding.singletons().clone(),
            lifecycle: lifecycle.clone(),
            view: sharding.view().clone(),
        })
        .await;
        if let Some(me) = router.me() {
            crate::lease::reachability::start(ProberParts {
                me: RunnerId::new(me.clone(), identity.incarnation()),
                config,
                health,
                storage,
                view: sharding.view().clone(),
                lifecycle,
            });
        }
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
