//! The handle of a runtime: what an application holds to register entity types, call entities
//! and stop. It wires the parts and owns none of their state (see `docs/architecture.md`).

use std::future::Future;
use std::sync::Arc;

use futures::stream::BoxStream;
use parking_lot::Mutex;
use shoal_protocol::{
    EntityId, Failure, Incarnation, MachineId, Notification, ReplyFrame, Request, RunnerAddress,
    RunnerId, ShardGroup, ShardId,
};
use shoal_storage::RunnerStorage;

use crate::config::ShardingConfig;
use crate::entity::{Entity, Registration, RegistrationParts};
use crate::error::RegisterError;
use crate::host::EntityHost;
use crate::inbound::{Inbound, InboundHandler};
use crate::lease::view::ClusterView;
use crate::lifecycle::Lifecycle;
use crate::router::Router;
use crate::serving::Serving;
use crate::singleton::{SingletonContext, SingletonSpec, Singletons};

/// What a runtime is made of (wired by [`crate::ShardingBuilder::start`]).
pub(crate) struct ShardingParts {
    /// Where calls go.
    pub(crate) router: Router,
    /// Where requests from other runners come in.
    pub(crate) inbound: Inbound,
    /// The entities of this runner.
    pub(crate) host: Arc<EntityHost>,
    pub(crate) singletons: Arc<Singletons>,
    pub(crate) lifecycle: Arc<Lifecycle>,
    /// The cluster as the lease keeper last read it.
    pub(crate) view: Arc<Mutex<ClusterView>>,
    /// Runner storage (to leave the cluster when a start is refused).
    pub(crate) storage: Arc<dyn RunnerStorage>,
    /// The server its network started (stopped with the runtime).
    pub(crate) serving: Mutex<Option<Box<dyn Serving>>>,
}

/// A handle to the sharding runtime of this process. Cheap to clone.
///
/// Build one with [`Sharding::builder`]; register entity types; call entities through
/// [`Sharding::client`]; stop with [`Sharding::shutdown`].
#[derive(Clone)]
pub struct Sharding {
    parts: Arc<ShardingParts>,
}

impl std::fmt::Debug for Sharding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sharding")
            .field("runner", &self.runner_address())
            .finish_non_exhaustive()
    }
}

impl Sharding {
    pub(crate) fn from_parts(parts: ShardingParts) -> Self {
        Self {
            parts: Arc::new(parts),
        }
    }

    pub(crate) fn serving_started(&self, serving: Box<dyn Serving>) {
        *self.parts.serving.lock() = Some(serving);
    }

    pub(crate) fn router(&self) -> &Router {
        &self.parts.router
    }

    pub(crate) fn singletons(&self) -> &Arc<Singletons> {
        &self.parts.singletons
    }

    pub(crate) fn view(&self) -> &Arc<Mutex<ClusterView>> {
        &self.parts.view
    }

    /// Registers an entity type (typed [`crate::EntityDefinition`] or
    /// [`crate::DynamicDefinition`]).
    pub fn register(&self, definition: impl Registration) -> Result<(), RegisterError> {
        self.register_parts(definition.into_parts()?)
    }

    pub(crate) fn register_parts(&self, parts: RegistrationParts) -> Result<(), RegisterError> {
        if self.is_shutting_down() {
            return Err(RegisterError::ShuttingDown);
        }
        self.parts.host.register(parts)
    }

    /// Registers a singleton: `run` runs on exactly one runner (the holder of the shard `name`
    /// hashes to in `group`), is stopped (see [`SingletonContext::cancelled`]) when that shard
    /// moves, and starts on the new holder. If `run` returns, it is not restarted until the shard
    /// moves. (To have it in place before the runner takes any shard, register it on the
    /// builder: [`crate::ShardingBuilder::singleton`].)
    pub fn register_singleton<F, Fut>(
        &self,
        name: &str,
        group: ShardGroup,
        run: F,
    ) -> Result<(), RegisterError>
    where
        F: Fn(SingletonContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.add_singleton(SingletonSpec::new(name, group, run))
    }

    pub(crate) fn add_singleton(&self, spec: SingletonSpec) -> Result<(), RegisterError> {
        if !self.config().available_groups().contains(spec.group()) {
            return Err(RegisterError::UnknownGroup {
                entity_type: format!("singleton {}", spec.name()),
                group: spec.group().to_string(),
            });
        }
        let id = EntityId::new(spec.name())?;
        let shard = self.shard_in(spec.group(), &id);
        self.parts.singletons.register(spec, shard)?;
        self.parts.singletons.sync(&self.parts.router);
        Ok(())
    }

    /// The address of this runner (`None` for a client-only process).
    pub fn runner_address(&self) -> Option<&RunnerAddress> {
        self.parts.router.me()
    }

    /// The machine id this process leased from storage (runners and client-only processes
    /// alike): the machine bits of the ids it makes now.
    pub fn machine_id(&self) -> Option<MachineId> {
        Some(self.parts.router.identity().machine_id())
    }

    /// The incarnation of this process: a random value made when it started. A runner is its
    /// address and its incarnation.
    pub fn incarnation(&self) -> Incarnation {
        self.parts.router.identity().incarnation()
    }

    /// The configuration.
    pub fn config(&self) -> &ShardingConfig {
        self.parts.router.config()
    }

    /// The shard of an entity of type `E`.
    pub fn shard_of<E: Entity>(&self, id: &EntityId) -> ShardId {
        self.shard_in(&E::shard_group(id), id)
    }

    /// The shard of `id` in `group`.
    pub fn shard_in(&self, group: &ShardGroup, id: &EntityId) -> ShardId {
        self.parts.router.shard_in(group, id)
    }

    /// The shards this runner holds and serves now.
    pub fn active_shards(&self) -> Vec<ShardId> {
        self.parts.router.shards().active()
    }

    /// Whether this runner holds and serves `shard` now.
    pub fn holds(&self, shard: &ShardId) -> bool {
        self.parts.router.shards().is_active(shard)
    }

    /// The epoch of the lease under which this runner holds `shard` (while it serves the shard
    /// or is handing it off; `None` otherwise). Storage writes made for the shard's entities
    /// carry it as their [`Fence`](shoal_storage::Fence).
    pub fn shard_epoch(&self, shard: &ShardId) -> Option<shoal_storage::Epoch> {
        self.parts.router.shards().epoch(shard)
    }

    /// Live entity instances on this runner, over all types.
    pub fn active_entity_count(&self) -> usize {
        self.parts.host.active_count()
    }

    /// The last view of the cluster read from storage.
    pub fn cluster_view(&self) -> ClusterView {
        self.parts.view.lock().clone()
    }

    /// Whether [`Sharding::shutdown`] has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.parts.lifecycle.is_closing()
    }

    /// Stops gracefully: new calls from this process fail fast, the runner leaves the cluster,
    /// its entities finish their running requests (up to the termination timeout), and its
    /// shards are released at once so other runners take them without waiting for leases to
    /// expire. Bounded: returns within roughly the entity termination timeout plus two storage
    /// deadlines.
    pub async fn shutdown(&self) {
        let lifecycle = &self.parts.lifecycle;
        if !lifecycle.close() {
            // Already stopping (or crashed): wait for the first shutdown to finish.
            lifecycle.stopped().cancelled().await;
            return;
        }
        tracing::info!(runner = ?self.runner_address(), "shutting down");
        lifecycle.cancel().cancel();
        lifecycle.stopped().cancelled().await;
        let serving = self.parts.serving.lock().take();
        if let Some(serving) = serving {
            serving.shutdown().await;
        }
        lifecycle.abort_tasks();
        self.parts.router.transport().close();
        self.parts.router.identity().release().await;
        tracing::info!(runner = ?self.runner_address(), "shut down");
    }

    /// Resolves once the runtime has stopped: after [`Sharding::shutdown`], or on its own when
    /// another process registered at this runner's address while this one was away (frozen, cut
    /// off from storage): it then serves nothing any more, and the process should exit.
    pub async fn stopped(&self) {
        self.parts.lifecycle.stopped().cancelled().await;
    }

    /// Undoes a start that was refused after this process registered: leaves the cluster and
    /// gives its machine id back, so that no other runner assigns shards to a runner that never
    /// ran.
    pub(crate) async fn give_back(&self) {
        if let Some(me) = self.runner_address() {
            let id = RunnerId::new(me.clone(), self.incarnation());
            let call = self.parts.storage.unregister(&id);
            match tokio::time::timeout(self.config().storage_timeout(), call).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "unregistering the refused runner failed; its heartbeat lapses on its own");
                }
                Err(_) => tracing::warn!(
                    "unregistering the refused runner timed out; its heartbeat lapses on its own"
                ),
            }
        }
        self.parts.router.identity().release().await;
    }

    /// Stops every task at once without releasing leases or leaving the cluster, as a crash
    /// would. For fault-injection tests: other runners take this runner's shards only after its
    /// leases expire.
    pub fn crash(&self) {
        let lifecycle = &self.parts.lifecycle;
        lifecycle.close();
        if let Some(serving) = self.parts.serving.lock().take() {
            serving.abort();
        }
        lifecycle.abort_tasks();
        self.parts.router.transport().close();
        self.parts.singletons.abort_all();
        self.parts.host.abort_all();
        let shards = self.parts.router.shards();
        for shard in shards.active() {
            shards.clear(&shard);
        }
        lifecycle.cancel().cancel();
        lifecycle.stopped().cancel();
        tracing::warn!(runner = ?self.runner_address(), "crashed (simulated)");
    }
}

/// A runtime serves the requests its transport receives from other runners.
impl InboundHandler for Sharding {
    fn address(&self) -> Option<&RunnerAddress> {
        self.runner_address()
    }

    fn handle_request(&self, request: Request) -> impl Future<Output = ReplyFrame> + Send {
        self.parts.inbound.handle_request(request)
    }

    fn handle_stream(&self, request: Request) -> BoxStream<'static, ReplyFrame> {
        self.parts.inbound.handle_stream(request)
    }

    fn handle_notification(
        &self,
        notification: Notification,
    ) -> impl Future<Output = Result<(), Failure>> + Send {
        self.parts.inbound.handle_notification(notification)
    }
}
