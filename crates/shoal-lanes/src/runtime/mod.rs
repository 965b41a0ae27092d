//! The running lanes of one process: routing of emits and task calls, consumers, exposure.

mod consumer;

use std::any::TypeId;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_protocol::proto::lanes::v1::lane_service_server::LaneServiceServer;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{AuthError, ReplayGuard, ReplayRefusal, Subject, TargetKind};
use crate::communicator::{RemoteCall, RemoteError};
use crate::context::CallContext;
use crate::diagnostics as diag;
use crate::envelope::NewEnvelope;
use crate::error::{LanesCallError, LanesStartError, RunError};
use crate::exposure::{ExposureConfig, ExposureService};
use crate::mode::Mode;
use crate::plan::{self, Plan};
use crate::registry::{
    DynFailure, EventContext, EventDef, Registry, Source, TaskContext, TaskDef, TaskFailure,
    TypedEventHandler, TypedTask,
};
use crate::topology::Topology;

/// Options of one emission.
#[derive(Debug, Clone)]
pub struct EmitOptions {
    context: CallContext,
    source: Source,
}

impl Default for EmitOptions {
    fn default() -> Self {
        EmitOptions {
            context: CallContext::new(),
            source: Source::Local,
        }
    }
}

impl EmitOptions {
    /// Default options: no context, local source.
    pub fn new() -> Self {
        Self::default()
    }

    /// The context to forward (filtered by the lane's allowed keys).
    pub fn context(mut self, context: CallContext) -> Self {
        self.context = context;
        self
    }

    /// The emission's source. A relay source (from [`EventContext::source`]) makes the emission
    /// local: a relayed event is never put back on a lane.
    pub fn source(mut self, source: Source) -> Self {
        self.source = source;
        self
    }
}

/// Starts [`Lanes`]: validates the registry and topology for one profile and mode.
#[derive(Debug)]
pub struct LanesBuilder {
    registry: Registry,
    topology: Topology,
    profile: String,
    mode: Mode,
    exposure: Option<ExposureConfig>,
    shutdown_timeout: Duration,
}

impl LanesBuilder {
    /// The mode (default [`Mode::Network`]).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Serve the active profile's RPC lanes over gRPC (network mode only).
    pub fn exposure(mut self, exposure: ExposureConfig) -> Self {
        self.exposure = Some(exposure);
        self
    }

    /// How long [`Lanes::shutdown`] waits for in-flight messages (default 10 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Checks every guard rail, initializes the consumed queues, starts the consumers and the
    /// exposure server.
    pub async fn start(self) -> Result<Lanes, LanesStartError> {
        crate::auth::install_crypto_provider();
        let plan = plan::build(
            &self.registry,
            &self.topology,
            &self.profile,
            self.mode,
            self.exposure.is_some(),
        )
        .map_err(LanesStartError::Config)?;

        if self.mode == Mode::Network {
            let mut queues: Vec<&Arc<dyn crate::queue::EventQueue>> = Vec::new();
            for binding in plan.event_bindings.values() {
                if !queues.iter().any(|q| Arc::ptr_eq(q, &binding.queue)) {
                    queues.push(&binding.queue);
                }
            }
            for queue in queues {
                queue
                    .init()
                    .await
                    .map_err(|source| LanesStartError::Queue {
                        queue: queue.name().to_owned(),
                        source,
                    })?;
            }
        }

        let replay = self
            .exposure
            .as_ref()
            .filter(|e| e.replay_protection)
            .map(|e| ReplayGuard::with_capacity(e.replay_capacity));
        let inner = Arc::new_cyclic(|me| Inner {
            registry: self.registry,
            plan,
            profile: self.profile,
            mode: self.mode,
            stopping: CancellationToken::new(),
            replay,
            background: TaskTracker::new(),
            me: me.clone(),
        });

        let mut tasks = JoinSet::new();
        for consumer in inner.plan.consumers.clone() {
            tasks.spawn(consumer::run(
                Arc::clone(&inner),
                consumer,
                self.shutdown_timeout,
            ));
        }

        let mut exposure_addr = None;
        if let Some(config) = self.exposure {
            let exposed = inner.plan.exposed(&inner.registry);
            if exposed.is_empty() {
                tracing::warn!(
                    target: diag::TARGET,
                    diag = diag::EXPOSURE_SKIPPED,
                    profile = %inner.profile,
                    mode = %inner.mode,
                    reason = "no-served-task-or-event",
                    "RPC lane exposure not started"
                );
            } else {
                let listener = tokio::net::TcpListener::bind(config.listen)
                    .await
                    .map_err(LanesStartError::Listen)?;
                let addr = listener.local_addr().map_err(LanesStartError::Listen)?;
                let service =
                    LaneServiceServer::new(ExposureService::new(Arc::clone(&inner), &config.edge))
                        .max_decoding_message_size(config.max_request_bytes);
                let stop = inner.stopping.clone();
                tracing::info!(target: "shoal_lanes", %addr, profile = %inner.profile, targets = exposed.len(), "RPC lane exposure listening");
                tasks.spawn(async move {
                    let incoming = tonic::transport::server::TcpIncoming::from(listener)
                        .with_nodelay(Some(true));
                    if let Err(err) = tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                        .await
                    {
                        tracing::error!(target: "shoal_lanes", %err, "RPC lane exposure failed");
                    }
                });
                exposure_addr = Some(addr);
            }
        }

        Ok(Lanes {
            inner,
            tasks,
            exposure_addr,
            shutdown_timeout: self.shutdown_timeout,
        })
    }
}

/// The lanes of one running process.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use shoal_lanes::*;
///
/// const SIGNED_UP: EventDef<String> = EventDef::new("users:signed-up");
///
/// let queue = Arc::new(MemoryQueue::new("main"));
/// let mut registry = Registry::new();
/// registry.on(SIGNED_UP, "welcome", |user, _cx| async move {
///     tracing::info!(%user, "sending welcome mail");
///     Ok(())
/// });
/// let topology = Topology::new()
///     .event_lane(EventLane::new("emails").apply_to([SIGNED_UP]))
///     .profile("all", Profile::new().consume("emails"))
///     .bind_event(EventBinding::new("emails", queue.clone()).max_attempts(3));
///
/// let lanes = Lanes::builder(registry, topology, "all").start().await?;
/// lanes.emit(SIGNED_UP, "ada".to_owned()).await?;
/// lanes.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Lanes {
    inner: Arc<Inner>,
    tasks: JoinSet<()>,
    exposure_addr: Option<SocketAddr>,
    shutdown_timeout: Duration,
}

impl Drop for Lanes {
    fn drop(&mut self) {
        // Dropping without `shutdown` stops everything at once (the JoinSet aborts its tasks):
        // messages in flight stay claimed and come back after their visibility timeout.
        self.inner.stopping.cancel();
    }
}

impl Lanes {
    /// Lanes for `profile` of `topology`, with the definitions and handlers of `registry`.
    pub fn builder(
        registry: Registry,
        topology: Topology,
        profile: impl Into<String>,
    ) -> LanesBuilder {
        LanesBuilder {
            registry,
            topology,
            profile: profile.into(),
            mode: Mode::Network,
            exposure: None,
            shutdown_timeout: Duration::from_secs(10),
        }
    }

    /// The active profile.
    pub fn profile(&self) -> &str {
        &self.inner.profile
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.inner.mode
    }

    /// The exposure server's address, when it runs.
    pub fn exposure_addr(&self) -> Option<SocketAddr> {
        self.exposure_addr
    }

    /// The ids this process exposes to other processes, with their lanes.
    pub fn exposed(&self) -> BTreeMap<String, String> {
        self.inner
            .plan
            .exposed(&self.inner.registry)
            .into_iter()
            .map(|(id, (lane, _))| (id, lane))
            .collect()
    }

    /// Emits an event (see [`Lanes::emit_with`]).
    pub async fn emit<P>(&self, event: EventDef<P>, payload: P) -> Result<(), LanesCallError>
    where
        P: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    {
        self.emit_with(event, payload, EmitOptions::default()).await
    }

    /// Emits an event. Not on a lane (or transparent mode, or a relay source): the local handlers
    /// run before this returns. On an event lane (network mode): the event is signed and
    /// enqueued, and the consumers of the lane run their handlers later. On an RPC lane this
    /// profile does not serve: it is sent to a serving process. Local-simulated: serialized,
    /// signed, verified, and delivered to the local handlers asynchronously.
    pub async fn emit_with<P>(
        &self,
        event: EventDef<P>,
        payload: P,
        options: EmitOptions,
    ) -> Result<(), LanesCallError>
    where
        P: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    {
        self.inner.emit(event, payload, options).await
    }

    /// Runs a task (see [`Lanes::run_task_with`]).
    pub async fn run_task<I, O, E>(
        &self,
        task: TaskDef<I, O, E>,
        input: I,
    ) -> Result<O, RunError<E>>
    where
        I: Serialize + DeserializeOwned + Send + 'static,
        O: Serialize + DeserializeOwned + Send + 'static,
        E: Serialize + DeserializeOwned + Send + 'static,
    {
        self.run_task_with(task, input, CallContext::new()).await
    }

    /// Runs a task: locally when it is on no RPC lane or its lane is served by this profile (or
    /// in transparent mode), otherwise through the lane's communicator. A typed error comes back
    /// as [`RunError::Task`].
    pub async fn run_task_with<I, O, E>(
        &self,
        task: TaskDef<I, O, E>,
        input: I,
        context: CallContext,
    ) -> Result<O, RunError<E>>
    where
        I: Serialize + DeserializeOwned + Send + 'static,
        O: Serialize + DeserializeOwned + Send + 'static,
        E: Serialize + DeserializeOwned + Send + 'static,
    {
        self.inner.run_task(task, input, context).await
    }

    /// Waits until the asynchronous local-simulated deliveries started so far have finished.
    pub async fn settle_simulated(&self) {
        self.inner.background.close();
        self.inner.background.wait().await;
        self.inner.background.reopen();
    }

    /// Stops taking new work, lets in-flight messages finish (up to the shutdown timeout),
    /// stops the consumers and the exposure server. Nothing is run locally instead: emits made
    /// during shutdown fail with [`LanesCallError::ShuttingDown`].
    pub async fn shutdown(mut self) {
        self.inner.stopping.cancel();
        let tasks = &mut self.tasks;
        let drained = tokio::time::timeout(self.shutdown_timeout * 2, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(target: "shoal_lanes", "lane tasks did not stop in time; aborting them");
            self.tasks.abort_all();
        }
        self.inner.background.close();
        let _ = tokio::time::timeout(self.shutdown_timeout, self.inner.background.wait()).await;
    }
}

/// Why serving a remote call failed (mapped to gRPC by the exposure).
#[derive(Debug)]
pub(crate) enum ServeFailure {
    NotExposed,
    Unauthorized,
    ReplayGuardFull,
    Unavailable,
    Typed(Bytes),
    InvalidInput,
    Internal,
}

/// Why dispatching an event to local handlers failed.
#[derive(Debug)]
pub(crate) enum DispatchFailure {
    Decode(serde_json::Error),
    Handler(String, crate::BoxError),
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) registry: Registry,
    pub(crate) plan: Plan,
    pub(crate) profile: String,
    pub(crate) mode: Mode,
    pub(crate) stopping: CancellationToken,
    replay: Option<ReplayGuard>,
    background: TaskTracker,
    me: std::sync::Weak<Inner>,
}

fn codec(target: &str, what: &'static str, err: &serde_json::Error) -> LanesCallError {
    LanesCallError::Codec {
        target: target.to_owned(),
        what,
        message: err.to_string(),
    }
}

fn auth_failure(lane: &str, kind: TargetKind, target: &str, err: &AuthError) {
    tracing::warn!(
        target: diag::TARGET,
        diag = diag::AUTH_FAILURE,
        lane,
        %kind,
        target_id = target,
        error_id = err.id(),
        reason = %err,
        "lane token refused"
    );
    metrics::counter!("shoal_lanes_auth_failures_total", "lane" => lane.to_owned()).increment(1);
}

impl Inner {
    fn relay_source(&self, lane: &str, simulated: bool) -> Source {
        Source::Relay {
            profile: self.profile.clone(),
            lane: lane.to_owned(),
            simulated,
        }
    }

    fn check_event_types<P: 'static>(&self, id: &str) -> Result<(), LanesCallError> {
        let entry = self
            .registry
            .events
            .get(id)
            .ok_or_else(|| LanesCallError::NotRegistered(id.to_owned()))?;
        if entry.types != TypeId::of::<P>() {
            return Err(LanesCallError::TypeMismatch(id.to_owned()));
        }
        Ok(())
    }

    /// Runs the local handlers of an event with a typed payload.
    async fn dispatch_typed<P>(
        &self,
        id: &str,
        payload: P,
        cx: EventContext,
    ) -> Result<(), LanesCallError>
    where
        P: Clone + Send + 'static,
    {
        let Some(entry) = self.registry.events.get(id) else {
            return Err(LanesCallError::NotRegistered(id.to_owned()));
        };
        for (handler_id, handler) in &entry.handlers {
            let typed = handler
                .as_any()
                .downcast_ref::<TypedEventHandler<P>>()
                .ok_or_else(|| LanesCallError::TypeMismatch(id.to_owned()))?;
            typed
                .call(payload.clone(), cx.clone())
                .await
                .map_err(|source| LanesCallError::EventHandler {
                    event: id.to_owned(),
                    handler: handler_id.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Runs the local handlers of an event from its serialized payload (only the allowed ones
    /// when `only` is set).
    pub(crate) async fn dispatch_bytes(
        &self,
        id: &str,
        payload: &[u8],
        cx: EventContext,
        only: Option<&[String]>,
    ) -> Result<(), DispatchFailure> {
        let Some(entry) = self.registry.events.get(id) else {
            return Ok(());
        };
        for (handler_id, handler) in &entry.handlers {
            if only.is_some_and(|allowed| !allowed.contains(handler_id)) {
                continue;
            }
            let fut = handler
                .call_bytes(payload, cx.clone())
                .map_err(DispatchFailure::Decode)?;
            fut.await
                .map_err(|e| DispatchFailure::Handler(handler_id.clone(), e))?;
        }
        Ok(())
    }

    async fn emit<P>(
        &self,
        event: EventDef<P>,
        payload: P,
        options: EmitOptions,
    ) -> Result<(), LanesCallError>
    where
        P: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let id = event.id();
        self.check_event_types::<P>(id)?;
        let local_cx = EventContext {
            context: options.context.clone(),
            source: options.source.clone(),
            attempt: 1,
        };
        if self.mode == Mode::Transparent || options.source.is_relay() {
            return self.dispatch_typed(id, payload, local_cx).await;
        }
        if let Some(lane) = self.plan.event_routes.get(id) {
            if self.stopping.is_cancelled() {
                return Err(LanesCallError::ShuttingDown);
            }
            return match self.mode {
                Mode::LocalSimulated => self.simulate_event_lane(id, lane, &payload, &options),
                _ => self.enqueue(id, lane, &payload, &options).await,
            };
        }
        if let Some(lane) = self.plan.rpc_routes.get(id) {
            return match self.mode {
                Mode::LocalSimulated => self.simulate_rpc_event(id, lane, &payload, &options).await,
                _ if self.plan.served.contains(lane) => {
                    self.dispatch_typed(id, payload, local_cx).await
                }
                _ => self.remote_event(id, lane, &payload, &options).await,
            };
        }
        self.dispatch_typed(id, payload, local_cx).await
    }

    async fn enqueue<P: Serialize>(
        &self,
        id: &str,
        lane: &str,
        payload: &P,
        options: &EmitOptions,
    ) -> Result<(), LanesCallError> {
        let binding = self
            .plan
            .event_bindings
            .get(lane)
            .ok_or_else(|| LanesCallError::NotRegistered(lane.to_owned()))?;
        let bytes = Bytes::from(serde_json::to_vec(payload).map_err(|e| codec(id, "payload", &e))?);
        let context = options.context.only(&binding.allowed_context);
        let token = binding.auth.sign(&Subject {
            lane,
            kind: TargetKind::Event,
            target: id,
            payload: &bytes,
            context: &context,
        })?;
        let source = match &options.source {
            Source::Local => format!("profile:{}", self.profile),
            other => other.id(),
        };
        let message_id = binding
            .queue
            .enqueue(NewEnvelope {
                lane: lane.to_owned(),
                event: id.to_owned(),
                payload: bytes,
                source: source.clone(),
                context,
                auth_token: token,
            })
            .await
            .map_err(|source| LanesCallError::Queue {
                lane: lane.to_owned(),
                source,
            })?;
        tracing::debug!(
            target: diag::TARGET,
            diag = diag::ENQUEUE,
            event = id,
            lane,
            profile = %self.profile,
            mode = %self.mode,
            source = %source,
            message_id = %message_id,
            "event enqueued"
        );
        metrics::counter!("shoal_lanes_enqueued_total", "lane" => lane.to_owned()).increment(1);
        Ok(())
    }

    fn simulate_event_lane<P: Serialize>(
        &self,
        id: &str,
        lane: &str,
        payload: &P,
        options: &EmitOptions,
    ) -> Result<(), LanesCallError> {
        let binding = self.plan.event_bindings.get(lane);
        let allowed = binding.map(|b| b.allowed_context.as_slice()).unwrap_or(&[]);
        let auth = binding.map(|b| b.auth.clone()).unwrap_or_default();
        let (max_attempts, retry_delay) =
            binding.map_or((1, Duration::ZERO), |b| (b.max_attempts, b.retry_delay));
        let bytes = Bytes::from(serde_json::to_vec(payload).map_err(|e| codec(id, "payload", &e))?);
        let context = options.context.only(allowed);
        let subject = Subject {
            lane,
            kind: TargetKind::Event,
            target: id,
            payload: &bytes,
            context: &context,
        };
        let token = auth.sign(&subject)?;
        let now = crate::auth::now_ms();
        if let Err(err) = auth.verify_queued(token.as_deref(), &subject, now, now) {
            auth_failure(lane, TargetKind::Event, id, &err);
            return Err(err.into());
        }
        // Deliver asynchronously, as a queue would: emit returns before any handler runs.
        let inner = self.self_arc();
        let (id, lane) = (id.to_owned(), lane.to_owned());
        self.background.spawn(async move {
            let Some(inner) = inner else { return };
            let only = inner.plan.consumed.get(&lane).cloned().flatten();
            for attempt in 1..=max_attempts {
                let cx = EventContext {
                    context: context.clone(),
                    source: inner.relay_source(&lane, true),
                    attempt,
                };
                tracing::debug!(target: diag::TARGET, diag = diag::RELAY, event = %id, lane = %lane, profile = %inner.profile, relay_source = %cx.source.id(), "simulated relay");
                match inner.dispatch_bytes(&id, &bytes, cx, only.as_deref()).await {
                    Ok(()) => return,
                    Err(DispatchFailure::Decode(err)) => {
                        tracing::error!(target: diag::TARGET, diag = diag::DEAD_LETTER, event = %id, lane = %lane, %err, "simulated event payload does not decode");
                        return;
                    }
                    Err(DispatchFailure::Handler(handler, err)) if attempt < max_attempts => {
                        tracing::warn!(target: diag::TARGET, diag = diag::RETRY, event = %id, lane = %lane, handler, %err, attempt, max_attempts, "simulated event failed; retrying");
                        tokio::time::sleep(retry_delay).await;
                    }
                    Err(DispatchFailure::Handler(handler, err)) => {
                        tracing::error!(target: diag::TARGET, diag = diag::DEAD_LETTER, event = %id, lane = %lane, handler, %err, attempt, "simulated event failed; giving up");
                    }
                }
            }
        });
        Ok(())
    }

    /// A strong reference to this `Inner`, for tasks spawned from `&self`.
    fn self_arc(&self) -> Option<Arc<Inner>> {
        self.me.upgrade()
    }

    async fn simulate_rpc_event<P: Serialize>(
        &self,
        id: &str,
        lane: &str,
        payload: &P,
        options: &EmitOptions,
    ) -> Result<(), LanesCallError> {
        let binding = self.plan.rpc_bindings.get(lane);
        let allowed = binding.map(|b| b.allowed_context.as_slice()).unwrap_or(&[]);
        let auth = binding.map(|b| b.auth.clone()).unwrap_or_default();
        let bytes = serde_json::to_vec(payload).map_err(|e| codec(id, "payload", &e))?;
        let context = options.context.only(allowed);
        let subject = Subject {
            lane,
            kind: TargetKind::Event,
            target: id,
            payload: &bytes,
            context: &context,
        };
        let token = auth.sign(&subject)?;
        if let Err(err) = auth.verify_call(token.as_deref(), &subject) {
            auth_failure(lane, TargetKind::Event, id, &err);
            return Err(err.into());
        }
        let cx = EventContext {
            context,
            source: self.relay_source(lane, true),
            attempt: 1,
        };
        self.dispatch_bytes(id, &bytes, cx, None)
            .await
            .map_err(|failure| match failure {
                DispatchFailure::Decode(err) => codec(id, "payload", &err),
                DispatchFailure::Handler(handler, source) => LanesCallError::EventHandler {
                    event: id.to_owned(),
                    handler,
                    source,
                },
            })
    }

    async fn remote_event<P: Serialize>(
        &self,
        id: &str,
        lane: &str,
        payload: &P,
        options: &EmitOptions,
    ) -> Result<(), LanesCallError> {
        let (call, communicator) =
            self.remote_call(TargetKind::Event, id, lane, payload, &options.context)?;
        communicator
            .emit_event(call)
            .await
            .map_err(LanesCallError::Remote)
    }

    fn remote_call<T: Serialize>(
        &self,
        kind: TargetKind,
        id: &str,
        lane: &str,
        value: &T,
        context: &CallContext,
    ) -> Result<(RemoteCall, Arc<dyn crate::communicator::Communicator>), LanesCallError> {
        let binding = self
            .plan
            .rpc_bindings
            .get(lane)
            .ok_or_else(|| LanesCallError::NotRegistered(lane.to_owned()))?;
        let communicator = binding
            .communicator
            .clone()
            .ok_or_else(|| LanesCallError::NotRegistered(lane.to_owned()))?;
        let what = if kind == TargetKind::Task {
            "input"
        } else {
            "payload"
        };
        let bytes = Bytes::from(serde_json::to_vec(value).map_err(|e| codec(id, what, &e))?);
        let context = context.only(&binding.allowed_context);
        let token = binding.auth.sign(&Subject {
            lane,
            kind,
            target: id,
            payload: &bytes,
            context: &context,
        })?;
        tracing::debug!(target: diag::TARGET, diag = diag::REMOTE_CALL, %kind, target_id = id, lane, profile = %self.profile, "calling through RPC lane");
        Ok((
            RemoteCall {
                target: id.to_owned(),
                payload: bytes,
                token,
                context,
            },
            communicator,
        ))
    }

    async fn run_task<I, O, E>(
        &self,
        task: TaskDef<I, O, E>,
        input: I,
        context: CallContext,
    ) -> Result<O, RunError<E>>
    where
        I: Serialize + DeserializeOwned + Send + 'static,
        O: Serialize + DeserializeOwned + Send + 'static,
        E: Serialize + DeserializeOwned + Send + 'static,
    {
        let id = task.id();
        let entry = self
            .registry
            .tasks
            .get(id)
            .ok_or_else(|| LanesCallError::NotRegistered(id.to_owned()))?;
        if entry.types != TypeId::of::<(I, O, E)>() {
            return Err(LanesCallError::TypeMismatch(id.to_owned()).into());
        }
        let lane = match self.mode {
            Mode::Transparent => None,
            _ => self.plan.rpc_routes.get(id),
        };
        let Some(lane) = lane else {
            return self.run_local(id, input, context).await;
        };
        if self.mode == Mode::LocalSimulated {
            return self.simulate_task(id, lane, &input, context).await;
        }
        if self.plan.served.contains(lane) {
            return self.run_local(id, input, context).await;
        }
        let (call, communicator) =
            self.remote_call(TargetKind::Task, id, lane, &input, &context)?;
        match communicator.run_task(call).await {
            Ok(output) => {
                serde_json::from_slice(&output).map_err(|e| codec(id, "output", &e).into())
            }
            Err(RemoteError::Typed(data)) => Err(decode_typed(id, &data)),
            Err(RemoteError::Internal) => Err(LanesCallError::Internal(id.to_owned()).into()),
            Err(err) => Err(LanesCallError::Remote(err).into()),
        }
    }

    async fn run_local<I, O, E>(
        &self,
        id: &str,
        input: I,
        context: CallContext,
    ) -> Result<O, RunError<E>>
    where
        I: 'static,
        O: 'static,
        E: 'static,
    {
        let handler = self
            .registry
            .tasks
            .get(id)
            .and_then(|t| t.handler.clone())
            .ok_or_else(|| LanesCallError::HandlerMissing(id.to_owned()))?;
        let typed = handler
            .as_any()
            .downcast_ref::<TypedTask<I, O, E>>()
            .ok_or_else(|| LanesCallError::TypeMismatch(id.to_owned()))?;
        let cx = TaskContext {
            context,
            source: Source::Local,
        };
        match typed.call(input, cx).await {
            Ok(output) => Ok(output),
            Err(TaskFailure::Typed(error)) => Err(RunError::Task(error)),
            Err(TaskFailure::Internal(source)) => Err(LanesCallError::Handler {
                task: id.to_owned(),
                source,
            }
            .into()),
        }
    }

    async fn simulate_task<I, O, E>(
        &self,
        id: &str,
        lane: &str,
        input: &I,
        context: CallContext,
    ) -> Result<O, RunError<E>>
    where
        I: Serialize,
        O: DeserializeOwned,
        E: DeserializeOwned,
    {
        let binding = self.plan.rpc_bindings.get(lane);
        let allowed = binding.map(|b| b.allowed_context.as_slice()).unwrap_or(&[]);
        let auth = binding.map(|b| b.auth.clone()).unwrap_or_default();
        let bytes = serde_json::to_vec(input).map_err(|e| codec(id, "input", &e))?;
        let context = context.only(allowed);
        let subject = Subject {
            lane,
            kind: TargetKind::Task,
            target: id,
            payload: &bytes,
            context: &context,
        };
        let token = auth.sign(&subject).map_err(LanesCallError::Auth)?;
        if let Err(err) = auth.verify_call(token.as_deref(), &subject) {
            auth_failure(lane, TargetKind::Task, id, &err);
            return Err(LanesCallError::Auth(err).into());
        }
        let handler = self
            .registry
            .tasks
            .get(id)
            .and_then(|t| t.handler.clone())
            .ok_or_else(|| LanesCallError::HandlerMissing(id.to_owned()))?;
        let cx = TaskContext {
            context,
            source: self.relay_source(lane, true),
        };
        match handler.call_bytes(&bytes, cx).await {
            Ok(output) => {
                serde_json::from_slice(&output).map_err(|e| codec(id, "output", &e).into())
            }
            Err(DynFailure::Typed(data)) => Err(decode_typed(id, &data)),
            Err(DynFailure::InvalidInput(message)) => Err(LanesCallError::Codec {
                target: id.to_owned(),
                what: "input",
                message,
            }
            .into()),
            Err(DynFailure::Internal(err)) => {
                tracing::error!(target: "shoal_lanes", task = id, %err, "task failed (simulated remote call)");
                Err(LanesCallError::Internal(id.to_owned()).into())
            }
        }
    }

    /// Serves a call that arrived through the exposure.
    pub(crate) async fn serve(
        &self,
        kind: TargetKind,
        id: &str,
        payload: Bytes,
        token: Option<String>,
        context: CallContext,
    ) -> Result<Bytes, ServeFailure> {
        if self.stopping.is_cancelled() {
            return Err(ServeFailure::Unavailable);
        }
        let Some(lane) = self
            .plan
            .rpc_routes
            .get(id)
            .filter(|l| self.plan.served.contains(*l))
        else {
            return Err(ServeFailure::NotExposed);
        };
        if self.registry.kind_of(id) != Some(kind) {
            return Err(ServeFailure::NotExposed);
        }
        let Some(binding) = self.plan.rpc_bindings.get(lane) else {
            return Err(ServeFailure::NotExposed);
        };
        let subject = Subject {
            lane,
            kind,
            target: id,
            payload: &payload,
            context: &context,
        };
        let verified = binding.auth.verify_call(token.as_deref(), &subject);
        let claims = match verified {
            Ok(claims) => claims,
            Err(err) => {
                auth_failure(lane, kind, id, &err);
                return Err(ServeFailure::Unauthorized);
            }
        };
        if let (Some(replay), Some(claims)) = (&self.replay, &claims) {
            let now = crate::auth::now_ms() / 1000;
            // Remembered until the token can no longer be accepted: `exp` plus the clock skew.
            let until = claims.exp.saturating_add(binding.auth.skew_secs());
            match replay.check(&claims.jti, until, now) {
                Ok(()) => {}
                Err(ReplayRefusal::Replayed) => {
                    let err = AuthError::Unauthorized {
                        lane: lane.clone(),
                        reason: crate::auth::Unauthorized::Replayed,
                    };
                    auth_failure(lane, kind, id, &err);
                    return Err(ServeFailure::Unauthorized);
                }
                Err(ReplayRefusal::Full { capacity }) => {
                    let err = AuthError::ReplayGuardFull {
                        lane: lane.clone(),
                        capacity,
                    };
                    tracing::warn!(
                        target: diag::TARGET,
                        diag = diag::REPLAY_GUARD_FULL,
                        lane = %lane,
                        %kind,
                        target_id = id,
                        error_id = err.id(),
                        reason = %err,
                        "call refused: replay guard full"
                    );
                    metrics::counter!("shoal_lanes_replay_guard_full_total", "lane" => lane.clone())
                        .increment(1);
                    return Err(ServeFailure::ReplayGuardFull);
                }
            }
        }
        let context = context.only(&binding.allowed_context);
        let source = Source::Remote { lane: lane.clone() };
        match kind {
            TargetKind::Task => {
                let Some(handler) = self.registry.tasks.get(id).and_then(|t| t.handler.clone())
                else {
                    return Err(ServeFailure::NotExposed);
                };
                handler
                    .call_bytes(&payload, TaskContext { context, source })
                    .await
                    .map_err(|failure| match failure {
                        DynFailure::Typed(data) => ServeFailure::Typed(data),
                        DynFailure::InvalidInput(message) => {
                            tracing::info!(target: "shoal_lanes", task = id, %message, "remote input does not decode");
                            ServeFailure::InvalidInput
                        }
                        DynFailure::Internal(err) => {
                            tracing::error!(target: "shoal_lanes", task = id, lane = %lane, %err, "served task failed");
                            ServeFailure::Internal
                        }
                    })
            }
            TargetKind::Event => {
                let cx = EventContext {
                    context,
                    source,
                    attempt: 1,
                };
                match self.dispatch_bytes(id, &payload, cx, None).await {
                    Ok(()) => Ok(Bytes::new()),
                    Err(DispatchFailure::Decode(_)) => Err(ServeFailure::InvalidInput),
                    Err(DispatchFailure::Handler(handler, err)) => {
                        tracing::error!(target: "shoal_lanes", event = id, lane = %lane, handler, %err, "served event handler failed");
                        Err(ServeFailure::Internal)
                    }
                }
            }
        }
    }
}

fn decode_typed<E: DeserializeOwned>(id: &str, data: &[u8]) -> RunError<E> {
    match serde_json::from_slice(data) {
        Ok(error) => RunError::Task(error),
        Err(e) => codec(id, "typed error", &e).into(),
    }
}
