//! The runner side: host the entity types of one worker process.

mod entity;
pub(crate) mod kv;
mod link;
mod session;
mod supervisor;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use shoal_protocol::{EntityAddress, EntityType};
use shoal_sharding::{
    DynamicDefinition, DynamicEntity, EntityContext, EntityOptions, HandlerError,
};
use shoal_storage::kv::EntityKv;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::describe::WorkerEntityType;
use crate::error::WorkerError;
use crate::spec::{WorkerOptions, WorkerSpec};

use entity::WorkerEntity;
pub use entity::is_worker_unavailable;
use session::{CloseReason, Session};

/// An entity instance the runtime activated, as the session's parts see it.
#[derive(Debug)]
pub(crate) struct Activation {
    pub(crate) address: EntityAddress,
    pub(crate) ctx: EntityContext,
}

/// What the host's parts (calls, sessions, KV queues) share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The worker's command line or socket, for logs, metrics and errors.
    pub(crate) name: Arc<str>,
    pub(crate) kv: Arc<dyn EntityKv>,
    pub(crate) options: WorkerOptions,
    activations: Mutex<HashMap<u64, Arc<Activation>>>,
    next_activation: AtomicU64,
    /// Times a session's reader waited for a KV slot.
    kv_pauses: AtomicU64,
}

impl Shared {
    pub(crate) fn activation(&self, id: u64) -> Option<Arc<Activation>> {
        self.activations.lock().get(&id).cloned()
    }

    fn add_activation(&self, activation: Activation) -> u64 {
        let id = self.next_activation.fetch_add(1, Ordering::Relaxed);
        self.activations.lock().insert(id, Arc::new(activation));
        id
    }

    fn remove_activation(&self, id: u64) {
        self.activations.lock().remove(&id);
    }

    /// A session's reader waits for a KV slot.
    pub(crate) fn kv_paused(&self) {
        self.kv_pauses.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("shoal_worker_kv_backpressure_total", "worker" => self.name.to_string())
            .increment(1);
    }
}

/// Whether calls can reach the worker.
#[derive(Debug, Clone)]
pub(crate) enum HostState {
    /// Starting or restarting the worker; calls wait (within their timeout).
    Connecting,
    /// A live session.
    Up(Arc<Session>),
    /// The host was shut down; calls fail.
    Stopped,
}

#[derive(Debug)]
pub(crate) struct HostInner {
    pub(crate) shared: Arc<Shared>,
    spec: WorkerSpec,
    types: Vec<WorkerEntityType>,
    pub(crate) state: watch::Sender<HostState>,
    pub(crate) in_flight: Option<Arc<Semaphore>>,
    stop: CancellationToken,
    restarts: AtomicU64,
    sessions: AtomicU64,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

/// Hosts the entity types of one worker process: launches (or connects to) the worker, asks it
/// what it implements, and serves its entity types as [`DynamicDefinition`]s whose instances
/// forward calls over one multiplexed session. A worker that dies is started again with backoff;
/// calls that were in flight fail (see [`is_worker_unavailable`]), later calls reach the new
/// process, and entity state kept in KV survives.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use shoal_sharding::{InProcessNetwork, Sharding, ShardingConfig};
/// use shoal_storage::{MemoryEntityKv, MemoryRunnerStorage};
/// use shoal_worker::{WorkerHost, WorkerSpec};
///
/// let runners = Arc::new(MemoryRunnerStorage::new());
/// let kv = Arc::new(MemoryEntityKv::new(runners.clone()));
/// let (host, definitions) =
///     WorkerHost::start(WorkerSpec::command(["python3", "counter_worker.py"]), kv).await?;
/// let mut builder = Sharding::builder(ShardingConfig::default())
///     .storage(runners)
///     .in_process(&InProcessNetwork::new())
///     .runner("127.0.0.1:34431".parse()?);
/// for definition in definitions {
///     builder = builder.entity(definition);
/// }
/// let sharding = builder.start().await?;
/// // ... sharding.dynamic_client_for(&"counter".parse()?) ...
/// sharding.shutdown().await;
/// host.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct WorkerHost {
    inner: Arc<HostInner>,
}

impl WorkerHost {
    /// Starts hosting the worker `spec` names, with entity KV in `kv`: launches it (or connects to
    /// its socket), checks its `Describe` answer and opens the session. Returns the host and one
    /// [`DynamicDefinition`] per entity type, to register with the sharding runtime.
    ///
    /// Fails with a typed [`WorkerError`] when the worker cannot be started (it exits at once,
    /// stays silent, the executable is missing), cannot be reached, or describes something the
    /// runner cannot host. Later failures are handled by restarting the worker.
    pub async fn start(
        spec: WorkerSpec,
        kv: Arc<dyn EntityKv>,
    ) -> Result<(Self, Vec<DynamicDefinition>), WorkerError> {
        let name: Arc<str> = Arc::from(spec.name());
        let shared = Arc::new(Shared {
            name: name.clone(),
            kv,
            options: spec.options.clone(),
            activations: Mutex::new(HashMap::new()),
            next_activation: AtomicU64::new(1),
            kv_pauses: AtomicU64::new(0),
        });
        let link = link::link(&shared, &spec, 1)
            .instrument(tracing::info_span!("worker_start", worker = %name))
            .await?;
        tracing::info!(
            worker = %name,
            pid = link.session.pid,
            types = link.types.len(),
            "worker session open"
        );
        let inner = Arc::new(HostInner {
            in_flight: shared
                .options
                .max_in_flight
                .map(|n| Arc::new(Semaphore::new(n))),
            shared,
            spec,
            types: link.types,
            state: watch::Sender::new(HostState::Up(link.session.clone())),
            stop: CancellationToken::new(),
            restarts: AtomicU64::new(0),
            sessions: AtomicU64::new(1),
            supervisor: Mutex::new(None),
        });
        let task = tokio::spawn(supervisor::supervise(inner.clone(), link.session));
        *inner.supervisor.lock() = Some(task);
        let host = Self { inner };
        let definitions = host.definitions();
        Ok((host, definitions))
    }

    /// One definition per entity type of the worker.
    fn definitions(&self) -> Vec<DynamicDefinition> {
        self.inner
            .types
            .iter()
            .map(|ty| self.definition_of(ty))
            .collect()
    }

    /// The definition of `entity_type`, to register with the sharding runtime (`None` when the
    /// worker does not implement it). Each call makes a new definition over this host; register
    /// a type once.
    pub fn definition(&self, entity_type: &EntityType) -> Option<DynamicDefinition> {
        self.inner
            .types
            .iter()
            .find(|ty| &ty.name == entity_type)
            .map(|ty| self.definition_of(ty))
    }

    fn definition_of(&self, ty: &WorkerEntityType) -> DynamicDefinition {
        let host = self.inner.clone();
        let factory = move |ctx: EntityContext| {
            let host = host.clone();
            async move {
                let entity: Arc<dyn DynamicEntity> = WorkerEntity::activate(&host, ctx);
                Ok::<_, HandlerError>(entity)
            }
        };
        let concurrency = ty
            .concurrency
            .unwrap_or(self.inner.shared.options.default_concurrency)
            .max(1);
        let mut definition =
            DynamicDefinition::new(ty.name.to_string(), factory).options(EntityOptions {
                concurrency: Some(concurrency),
                ..EntityOptions::default()
            });
        for tag in &ty.tags {
            definition = if tag.persisted {
                definition.persisted_tag(tag.name.to_string(), tag.kind)
            } else {
                definition.tag(tag.name.to_string(), tag.kind)
            };
        }
        definition
    }

    /// The entity types the worker implements.
    pub fn entity_types(&self) -> &[WorkerEntityType] {
        &self.inner.types
    }

    /// The worker's name: its command line or socket path.
    pub fn name(&self) -> &str {
        &self.inner.shared.name
    }

    /// The process id the current worker reported (`None` while restarting, or when it reports
    /// none).
    pub fn worker_pid(&self) -> Option<u32> {
        match &*self.inner.state.borrow() {
            HostState::Up(session) if !session.is_closed() => session.pid,
            _ => None,
        }
    }

    /// How many times the worker was restarted (or reconnected to) after its session ended.
    pub fn restarts(&self) -> u64 {
        self.inner.restarts.load(Ordering::Relaxed)
    }

    /// KV requests of the current session the runner holds: queued, running, or answered and not
    /// yet handed to the transport. Never more than [`WorkerOptions::max_kv_in_flight`]
    /// (0 while no session is up).
    pub fn kv_in_flight(&self) -> usize {
        match &*self.inner.state.borrow() {
            HostState::Up(session) => session.kv_in_flight(),
            _ => 0,
        }
    }

    /// How many times a session's reader stopped reading because the worker had
    /// [`WorkerOptions::max_kv_in_flight`] KV requests outstanding (over every session of this
    /// host; also the counter `shoal_worker_kv_backpressure_total`). A worker on the Rust SDK
    /// (`shoal-worker-sdk`) with the default limits never causes one.
    pub fn kv_backpressure_pauses(&self) -> u64 {
        self.inner.shared.kv_pauses.load(Ordering::Relaxed)
    }

    /// Whether a live session to the worker is open.
    pub fn is_connected(&self) -> bool {
        matches!(&*self.inner.state.borrow(), HostState::Up(s) if !s.is_closed())
    }

    /// Waits until a session opened after `restarts` restarts is live (for example, the new
    /// worker after a crash). Returns `false` when the host stopped first.
    pub async fn wait_connected(&self, restarts: u64) -> bool {
        let mut state = self.inner.state.subscribe();
        loop {
            match &*state.borrow_and_update() {
                HostState::Up(session) if !session.is_closed() && self.restarts() >= restarts => {
                    return true;
                }
                HostState::Stopped => return false,
                _ => {}
            }
            if state.changed().await.is_err() {
                return false;
            }
        }
    }

    /// Stops hosting: closes the session (calls in flight fail), stops restarting the worker. A
    /// launched worker is not killed — other runners may share it; it exits after its idle
    /// timeout. Entity instances still registered fail their calls afterwards.
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        let task = self.inner.supervisor.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
        if let HostState::Up(session) = &*self.inner.state.borrow() {
            session.close(CloseReason {
                message: "the runner stopped hosting it".to_owned(),
                hung: false,
            });
        }
        self.inner.state.send_replace(HostState::Stopped);
    }
}
