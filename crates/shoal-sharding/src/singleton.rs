//! Singletons: named tasks that run on exactly one runner of the cluster — the holder of the
//! shard their name hashes to — and move when that runner goes away.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use shoal_protocol::{ShardGroup, ShardId};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::RegisterError;
use crate::host::manager::Stopping;
use crate::router::Router;

type SingletonFn = Arc<dyn Fn(SingletonContext) -> BoxFuture<'static, ()> + Send + Sync>;

/// A singleton as registered, before its shard is known (on the builder, before `start`).
pub(crate) struct SingletonSpec {
    name: String,
    group: ShardGroup,
    run: SingletonFn,
}

impl SingletonSpec {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn group(&self) -> &ShardGroup {
        &self.group
    }

    pub(crate) fn new<F, Fut>(name: &str, group: ShardGroup, run: F) -> Self
    where
        F: Fn(SingletonContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self {
            name: name.to_owned(),
            group,
            run: Arc::new(move |ctx| Box::pin(run(ctx))),
        }
    }
}

/// What a singleton task is given.
#[derive(Clone)]
pub struct SingletonContext {
    name: Arc<str>,
    router: Router,
    cancel: CancellationToken,
}

impl fmt::Debug for SingletonContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SingletonContext")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl SingletonContext {
    /// The singleton's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The router its clients call through ([`SingletonContext::client`]).
    pub(crate) fn router(&self) -> &Router {
        &self.router
    }

    /// Completes when the singleton must stop (its shard is moving, or the runner is stopping).
    /// The task then has the entity termination timeout to return before it is aborted.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// Whether the singleton must stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

struct Definition {
    name: Arc<str>,
    shard: ShardId,
    run: SingletonFn,
}

struct Running {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// The singletons registered in this process and those running here.
#[derive(Default)]
pub(crate) struct Singletons {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    definitions: Vec<Arc<Definition>>,
    running: HashMap<Arc<str>, Running>,
    stopped: bool,
}

impl fmt::Debug for Singletons {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("Singletons")
            .field("registered", &state.definitions.len())
            .field("running", &state.running.len())
            .finish()
    }
}

impl Singletons {
    /// Starts the singletons whose shard is active here and stops those whose shard is not.
    /// Returns the stopping tasks (they were told to stop; abort them after a timeout), or
    /// aborts them at once when `abort` is set.
    pub(crate) fn sync_with(&self, router: &Router, abort: bool) -> Vec<Stopping> {
        let mut state = self.state.lock();
        let mut stopping = Vec::new();
        let running_names: Vec<Arc<str>> = state.running.keys().cloned().collect();
        for name in running_names {
            let still_here = !state.stopped
                && state
                    .definitions
                    .iter()
                    .any(|d| d.name == name && router.shards().is_active(&d.shard));
            if !still_here && let Some(running) = state.running.remove(&name) {
                tracing::info!(singleton = %name, "stopping singleton");
                running.cancel.cancel();
                if abort {
                    running.task.abort();
                }
                stopping.push(Stopping { task: running.task });
            }
        }
        if !state.stopped {
            let to_start: Vec<Arc<Definition>> = state
                .definitions
                .iter()
                .filter(|d| {
                    router.shards().is_active(&d.shard) && !state.running.contains_key(&d.name)
                })
                .cloned()
                .collect();
            for definition in to_start {
                let cancel = CancellationToken::new();
                let ctx = SingletonContext {
                    name: definition.name.clone(),
                    router: router.clone(),
                    cancel: cancel.clone(),
                };
                let span = tracing::info_span!("singleton", name = %definition.name);
                tracing::info!(singleton = %definition.name, shard = %definition.shard, "starting singleton");
                let task = tokio::spawn((definition.run)(ctx).instrument(span));
                state
                    .running
                    .insert(definition.name.clone(), Running { cancel, task });
            }
        }
        metrics::gauge!("shoal_singletons").set(state.running.len() as f64);
        stopping
    }

    /// Like [`Singletons::sync_with`], letting stopped singletons finish on their own.
    pub(crate) fn sync(&self, router: &Router) {
        let termination = router.config().entity_termination_timeout();
        for s in self.sync_with(router, false) {
            reap(s, termination);
        }
    }

    /// Starts no more singletons (shutdown). The next [`Singletons::sync_with`] stops the running
    /// ones, so that the shard release waits for them.
    pub(crate) fn close(&self) {
        self.state.lock().stopped = true;
    }

    /// Aborts every singleton (crash).
    pub(crate) fn abort_all(&self) {
        let mut state = self.state.lock();
        state.stopped = true;
        for (_, running) in state.running.drain() {
            running.cancel.cancel();
            running.task.abort();
        }
    }

    /// Registers the singleton `spec`, which runs with `shard`.
    pub(crate) fn register(
        &self,
        spec: SingletonSpec,
        shard: ShardId,
    ) -> Result<(), RegisterError> {
        let definition = Definition {
            name: Arc::from(spec.name),
            shard,
            run: spec.run,
        };
        let mut state = self.state.lock();
        if state.definitions.iter().any(|d| d.name == definition.name) {
            return Err(RegisterError::DuplicateSingleton(
                definition.name.to_string(),
            ));
        }
        state.definitions.push(Arc::new(definition));
        Ok(())
    }
}

fn reap(mut stopping: Stopping, grace: Duration) {
    tokio::spawn(async move {
        if tokio::time::timeout(grace, &mut stopping.task)
            .await
            .is_err()
        {
            stopping.task.abort();
        }
    });
}
