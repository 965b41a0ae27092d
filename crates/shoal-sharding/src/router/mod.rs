//! The router: where this process's calls to entities go. A call goes to the local entity when
//! this runner serves the entity's shard, otherwise to the shard's owner through the
//! [`Transport`], and is retried while shards move, until its deadline.
//!
//! - [`dispatch`](self::dispatch): volatile calls (one reply, a notification, a stream).
//! - [`outgoing`](self::outgoing): a request on its way, kept across retries.
//! - [`routes`](self::routes): the owner of every shard, as the lease keeper last computed it.
//!
//! Persisted calls are the router's too (`crate::persist::send`, `crate::persist::stream`): they
//! are saved first, then handed to the owner the same way.

pub(crate) mod dispatch;
pub(crate) mod outgoing;
pub(crate) mod routes;

use std::sync::{Arc, Weak};

use shoal_protocol::{EntityId, RunnerAddress, ShardGroup, ShardId, Snowflake};

use crate::config::ShardingConfig;
use crate::error::{CallError, CallErrorKind};
use crate::hash::shard_index;
use crate::identity::Identity;
use crate::lease::shards::ShardStates;
use crate::lifecycle::Lifecycle;
use crate::local::LocalEntities;
use crate::persist::Persistence;
use crate::transport::Transport;

use outgoing::Outgoing;
use routes::Routes;

/// What the router is made of.
pub(crate) struct RouterParts {
    /// This runner's address (`None` for a client-only process).
    pub(crate) me: Option<RunnerAddress>,
    pub(crate) config: Arc<ShardingConfig>,
    /// Makes request ids.
    pub(crate) identity: Arc<Identity>,
    /// The shards this runner serves (written by the lease keeper).
    pub(crate) shards: Arc<ShardStates>,
    /// The owners of the others (written by the lease keeper).
    pub(crate) routes: Arc<Routes>,
    pub(crate) transport: Arc<dyn Transport>,
    /// The entities hosted here.
    pub(crate) local: Arc<dyn LocalEntities>,
    /// Persisted messages (`None`: refused).
    pub(crate) persistence: Option<Arc<Persistence>>,
    pub(crate) lifecycle: Arc<Lifecycle>,
}

/// Sends requests to entities, wherever they live. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Router {
    parts: Arc<RouterParts>,
}

/// A router that does not keep the runtime alive (held by the entity host, which the router
/// holds).
#[derive(Clone)]
pub(crate) struct WeakRouter(Weak<RouterParts>);

impl std::fmt::Debug for WeakRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WeakRouter")
    }
}

impl WeakRouter {
    pub(crate) fn upgrade(&self) -> Option<Router> {
        self.0.upgrade().map(|parts| Router { parts })
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("runner", &self.parts.me)
            .finish_non_exhaustive()
    }
}

impl Router {
    /// Builds the router. `build` is given a handle to it that does not keep it alive (for the
    /// entity host, whose entities call other entities through the router), and returns the
    /// router's parts with anything else it made (handed back).
    pub(crate) fn new_cyclic<T>(build: impl FnOnce(WeakRouter) -> (RouterParts, T)) -> (Self, T) {
        let mut made = None;
        let parts = Arc::new_cyclic(|weak| {
            let (parts, extra) = build(WeakRouter(weak.clone()));
            made = Some(extra);
            parts
        });
        match made {
            Some(extra) => (Self { parts }, extra),
            None => unreachable!("Arc::new_cyclic runs its closure once before returning"),
        }
    }

    /// A handle that does not keep the router alive.
    pub(crate) fn downgrade(&self) -> WeakRouter {
        WeakRouter(Arc::downgrade(&self.parts))
    }

    /// This runner's address (`None` for a client-only process).
    pub(crate) fn me(&self) -> Option<&RunnerAddress> {
        self.parts.me.as_ref()
    }

    pub(crate) fn config(&self) -> &ShardingConfig {
        &self.parts.config
    }

    pub(crate) fn identity(&self) -> &Arc<Identity> {
        &self.parts.identity
    }

    pub(crate) fn shards(&self) -> &ShardStates {
        &self.parts.shards
    }

    pub(crate) fn routes(&self) -> &Routes {
        &self.parts.routes
    }

    pub(crate) fn transport(&self) -> &dyn Transport {
        &*self.parts.transport
    }

    pub(crate) fn local(&self) -> &dyn LocalEntities {
        &*self.parts.local
    }

    pub(crate) fn persistence(&self) -> Option<&Arc<Persistence>> {
        self.parts.persistence.as_ref()
    }

    /// Whether the runtime is stopping: new calls fail fast.
    pub(crate) fn is_closing(&self) -> bool {
        self.parts.lifecycle.is_closing()
    }

    /// The shard of `id` in `group`.
    pub(crate) fn shard_in(&self, group: &ShardGroup, id: &EntityId) -> ShardId {
        ShardId::new(
            group.clone(),
            shard_index(id.as_str(), self.parts.config.shards_per_group()),
        )
    }

    /// A new request id for `out`.
    pub(crate) fn new_id(&self, out: &Outgoing) -> Result<Snowflake, CallError> {
        self.parts.identity.next_id().map_err(|error| {
            CallError::new(
                CallErrorKind::NoRequestId,
                out.address.clone(),
                error.to_string(),
            )
            .with_source(error)
        })
    }
}
