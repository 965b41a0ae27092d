//! Typed tasks and events, their local handlers, and the type-erased layer lanes move bytes through.

use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::CallContext;
use crate::error::LanesConfigError;
use crate::id::{IdKind, check_id};

/// A boxed error, as event handlers and untyped task failures return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error type of a task that has no typed error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NoError {}

impl fmt::Display for NoError {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {}
    }
}

impl std::error::Error for NoError {}

/// A task: a typed request (`I`) with a typed answer (`O`) or a typed error (`E`), named by a
/// string id. The definition holds no code; a process registers a handler for the tasks it runs.
///
/// ```
/// use shoal_lanes::TaskDef;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Charge { cents: i64 }
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Receipt { id: String }
/// #[derive(serde::Serialize, serde::Deserialize, Debug)]
/// enum ChargeError { Declined }
///
/// const CHARGE: TaskDef<Charge, Receipt, ChargeError> = TaskDef::new("billing:charge");
/// assert_eq!(CHARGE.id(), "billing:charge");
/// ```
pub struct TaskDef<I, O, E = NoError> {
    id: &'static str,
    _types: PhantomData<fn(I) -> (O, E)>,
}

impl<I, O, E> TaskDef<I, O, E> {
    /// A task named `id` (checked when lanes start).
    pub const fn new(id: &'static str) -> Self {
        TaskDef {
            id,
            _types: PhantomData,
        }
    }

    /// The task's id.
    pub const fn id(&self) -> &'static str {
        self.id
    }
}

impl<I, O, E> Clone for TaskDef<I, O, E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<I, O, E> Copy for TaskDef<I, O, E> {}

impl<I, O, E> fmt::Debug for TaskDef<I, O, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TaskDef").field(&self.id).finish()
    }
}

/// An event: a typed payload (`P`) named by a string id. Any number of handlers may listen.
///
/// ```
/// use shoal_lanes::EventDef;
///
/// #[derive(Clone, serde::Serialize, serde::Deserialize)]
/// struct OrderCreated { order: u64 }
///
/// const CREATED: EventDef<OrderCreated> = EventDef::new("orders:created");
/// assert_eq!(CREATED.id(), "orders:created");
/// ```
pub struct EventDef<P> {
    id: &'static str,
    _types: PhantomData<fn(P)>,
}

impl<P> EventDef<P> {
    /// An event named `id` (checked when lanes start).
    pub const fn new(id: &'static str) -> Self {
        EventDef {
            id,
            _types: PhantomData,
        }
    }

    /// The event's id.
    pub const fn id(&self) -> &'static str {
        self.id
    }
}

impl<P> Clone for EventDef<P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P> Copy for EventDef<P> {}

impl<P> fmt::Debug for EventDef<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("EventDef").field(&self.id).finish()
    }
}

/// Anything that names a task or an event (a definition or its id), for `apply_to` lists.
pub trait Target {
    /// The target's id.
    fn target_id(&self) -> &str;
}

impl<I, O, E> Target for TaskDef<I, O, E> {
    fn target_id(&self) -> &str {
        self.id
    }
}

impl<P> Target for EventDef<P> {
    fn target_id(&self) -> &str {
        self.id
    }
}

impl Target for &str {
    fn target_id(&self) -> &str {
        self
    }
}

impl Target for String {
    fn target_id(&self) -> &str {
        self
    }
}

/// How a task failed, as its handler reports it.
#[derive(Debug)]
pub enum TaskFailure<E> {
    /// The task's own typed error: it reaches the caller as that value, even across a lane.
    Typed(E),
    /// Anything else. A remote caller only learns that the task failed; the details stay in the
    /// serving process's logs.
    Internal(BoxError),
}

impl<E> TaskFailure<E> {
    /// An untyped failure.
    pub fn internal(error: impl Into<BoxError>) -> Self {
        TaskFailure::Internal(error.into())
    }
}

impl<E> From<E> for TaskFailure<E> {
    fn from(error: E) -> Self {
        TaskFailure::Typed(error)
    }
}

/// Where a call or an emission comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Code in this process.
    Local,
    /// Another process, through this process's RPC lane exposure.
    Remote {
        /// The RPC lane the call came through.
        lane: String,
    },
    /// A lane delivered it to this process (a consumed queue message, or a local-simulated relay).
    /// Emitting with a relay source never routes through a lane again: that is the loop guard.
    Relay {
        /// The profile that consumed it.
        profile: String,
        /// The lane it came through.
        lane: String,
        /// Delivered by the local-simulated mode rather than a real queue.
        simulated: bool,
    },
}

impl Source {
    /// Whether a lane delivered this (see [`Source::Relay`]).
    pub fn is_relay(&self) -> bool {
        matches!(self, Source::Relay { .. })
    }

    /// A printable id: `local`, `remote:<lane>` or `lanes-relay:<profile>:<lane>[:local-simulated]`.
    pub fn id(&self) -> String {
        match self {
            Source::Local => "local".to_owned(),
            Source::Remote { lane } => format!("remote:{lane}"),
            Source::Relay {
                profile,
                lane,
                simulated,
            } => {
                let suffix = if *simulated { ":local-simulated" } else { "" };
                format!("lanes-relay:{profile}:{lane}{suffix}")
            }
        }
    }
}

/// What a task handler knows about its call.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub(crate) context: CallContext,
    pub(crate) source: Source,
}

impl TaskContext {
    /// The call context (only the keys the lane forwards, when the call crossed a lane).
    pub fn context(&self) -> &CallContext {
        &self.context
    }

    /// Where the call comes from.
    pub fn source(&self) -> &Source {
        &self.source
    }
}

/// What an event handler knows about its delivery.
#[derive(Debug, Clone)]
pub struct EventContext {
    pub(crate) context: CallContext,
    pub(crate) source: Source,
    pub(crate) attempt: u32,
}

impl EventContext {
    /// The context that came with the event (only the keys the lane forwards, after a lane).
    pub fn context(&self) -> &CallContext {
        &self.context
    }

    /// Where the event comes from. Pass it on with [`crate::EmitOptions::source`] when a handler
    /// re-emits, so a relayed event never goes back on its lane.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The delivery attempt, from 1 (always 1 outside queue-backed lanes).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// A failure of the type-erased layer, before it is mapped to a caller-facing error.
#[derive(Debug)]
pub(crate) enum DynFailure {
    /// The task's typed error, encoded.
    Typed(Bytes),
    /// The input did not decode as the task's input type.
    InvalidInput(String),
    /// Anything else.
    Internal(BoxError),
}

type TaskFn<I, O, E> =
    Arc<dyn Fn(I, TaskContext) -> BoxFuture<'static, Result<O, TaskFailure<E>>> + Send + Sync>;
type EventFn<P> =
    Arc<dyn Fn(P, EventContext) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// A task handler seen through bytes (JSON), plus a way back to its typed form.
pub(crate) trait ErasedTask: Send + Sync {
    fn call_bytes(
        &self,
        input: &[u8],
        cx: TaskContext,
    ) -> BoxFuture<'static, Result<Bytes, DynFailure>>;
    fn as_any(&self) -> &(dyn Any + Send + Sync);
}

pub(crate) struct TypedTask<I, O, E> {
    f: TaskFn<I, O, E>,
}

impl<I, O, E> TypedTask<I, O, E> {
    pub(crate) fn call(
        &self,
        input: I,
        cx: TaskContext,
    ) -> BoxFuture<'static, Result<O, TaskFailure<E>>> {
        (self.f)(input, cx)
    }
}

impl<I, O, E> ErasedTask for TypedTask<I, O, E>
where
    I: DeserializeOwned + Send + 'static,
    O: Serialize + Send + 'static,
    E: Serialize + Send + 'static,
{
    fn call_bytes(
        &self,
        input: &[u8],
        cx: TaskContext,
    ) -> BoxFuture<'static, Result<Bytes, DynFailure>> {
        // Parsed from text: serde_json does not check the bytes of strings it skips, so an
        // ignored field could otherwise carry invalid UTF-8 into an accepted call.
        let parsed = std::str::from_utf8(input)
            .map_err(|err| format!("input is not UTF-8: {err}"))
            .and_then(|text| serde_json::from_str::<I>(text).map_err(|err| err.to_string()));
        let input: I = match parsed {
            Ok(input) => input,
            Err(message) => {
                return async move { Err(DynFailure::InvalidInput(message)) }.boxed();
            }
        };
        let fut = (self.f)(input, cx);
        async move {
            match fut.await {
                Ok(output) => serde_json::to_vec(&output)
                    .map(Bytes::from)
                    .map_err(|err| DynFailure::Internal(Box::new(err))),
                Err(TaskFailure::Typed(error)) => match serde_json::to_vec(&error) {
                    Ok(data) => Err(DynFailure::Typed(Bytes::from(data))),
                    Err(err) => Err(DynFailure::Internal(Box::new(err))),
                },
                Err(TaskFailure::Internal(err)) => Err(DynFailure::Internal(err)),
            }
        }
        .boxed()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }
}

/// An event handler seen through bytes (JSON), plus a way back to its typed form.
pub(crate) trait ErasedEventHandler: Send + Sync {
    fn call_bytes(
        &self,
        payload: &[u8],
        cx: EventContext,
    ) -> Result<BoxFuture<'static, Result<(), BoxError>>, serde_json::Error>;
    fn as_any(&self) -> &(dyn Any + Send + Sync);
}

pub(crate) struct TypedEventHandler<P> {
    f: EventFn<P>,
}

impl<P> TypedEventHandler<P> {
    pub(crate) fn call(
        &self,
        payload: P,
        cx: EventContext,
    ) -> BoxFuture<'static, Result<(), BoxError>> {
        (self.f)(payload, cx)
    }
}

impl<P> ErasedEventHandler for TypedEventHandler<P>
where
    P: DeserializeOwned + Send + 'static,
{
    fn call_bytes(
        &self,
        payload: &[u8],
        cx: EventContext,
    ) -> Result<BoxFuture<'static, Result<(), BoxError>>, serde_json::Error> {
        let payload: P = serde_json::from_slice(payload)?;
        Ok((self.f)(payload, cx))
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }
}

pub(crate) struct TaskEntry {
    pub(crate) types: TypeId,
    pub(crate) handler: Option<Arc<dyn ErasedTask>>,
}

pub(crate) struct EventEntry {
    pub(crate) types: TypeId,
    pub(crate) handlers: Vec<(String, Arc<dyn ErasedEventHandler>)>,
}

/// The tasks and events this process knows, with the handlers it runs locally.
///
/// Every process of a split deployment declares the same definitions; each registers handlers for
/// the ones it runs. Mistakes (an id used twice with different types, two handlers for one task)
/// are reported by [`crate::Lanes::builder`]'s `start`, with every other guard rail.
///
/// ```
/// use shoal_lanes::{EventDef, Registry, TaskDef, TaskFailure};
///
/// const ADD: TaskDef<(i64, i64), i64> = TaskDef::new("math:add");
/// const ADDED: EventDef<i64> = EventDef::new("math:added");
///
/// let mut registry = Registry::new();
/// registry
///     .task(ADD, |(a, b), _cx| async move { Ok::<_, TaskFailure<_>>(a + b) })
///     .on(ADDED, "log", |sum, _cx| async move {
///         tracing::info!(sum, "added");
///         Ok(())
///     });
/// ```
#[derive(Default)]
pub struct Registry {
    pub(crate) tasks: BTreeMap<String, TaskEntry>,
    pub(crate) events: BTreeMap<String, EventEntry>,
    pub(crate) problems: Vec<LanesConfigError>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("tasks", &self.tasks.keys().collect::<Vec<_>>())
            .field("events", &self.events.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares a task this process may call but does not run.
    pub fn declare_task<I, O, E>(&mut self, def: TaskDef<I, O, E>) -> &mut Self
    where
        I: 'static,
        O: 'static,
        E: 'static,
    {
        self.declare_task_entry::<I, O, E>(def.id());
        self
    }

    fn declare_task_entry<I: 'static, O: 'static, E: 'static>(
        &mut self,
        id: &str,
    ) -> Option<&mut TaskEntry> {
        if let Err(reason) = check_id(id) {
            self.problems.push(LanesConfigError::InvalidId {
                kind: IdKind::Task,
                id: id.to_owned(),
                reason,
            });
            return None;
        }
        if self.events.contains_key(id) {
            self.problems.push(LanesConfigError::DuplicateDefinition {
                id: id.to_owned(),
                reason: "it names both a task and an event",
            });
            return None;
        }
        let types = TypeId::of::<(I, O, E)>();
        let entry = self.tasks.entry(id.to_owned()).or_insert(TaskEntry {
            types,
            handler: None,
        });
        if entry.types != types {
            self.problems.push(LanesConfigError::DuplicateDefinition {
                id: id.to_owned(),
                reason: "it is declared twice with different types",
            });
            return None;
        }
        Some(entry)
    }

    /// Registers the handler that runs `def` in this process.
    pub fn task<I, O, E, F, Fut>(&mut self, def: TaskDef<I, O, E>, handler: F) -> &mut Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        E: Serialize + Send + 'static,
        F: Fn(I, TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, TaskFailure<E>>> + Send + 'static,
    {
        let id = def.id();
        let Some(entry) = self.declare_task_entry::<I, O, E>(id) else {
            return self;
        };
        if entry.handler.is_some() {
            self.problems.push(LanesConfigError::DuplicateHandler {
                target: id.to_owned(),
                handler: "task handler".to_owned(),
            });
            return self;
        }
        let f: TaskFn<I, O, E> = Arc::new(move |input, cx| handler(input, cx).boxed());
        entry.handler = Some(Arc::new(TypedTask { f }));
        self
    }

    /// Declares an event this process may emit, with no handler here.
    pub fn declare_event<P: 'static>(&mut self, def: EventDef<P>) -> &mut Self {
        self.declare_event_entry::<P>(def.id());
        self
    }

    fn declare_event_entry<P: 'static>(&mut self, id: &str) -> Option<&mut EventEntry> {
        if let Err(reason) = check_id(id) {
            self.problems.push(LanesConfigError::InvalidId {
                kind: IdKind::Event,
                id: id.to_owned(),
                reason,
            });
            return None;
        }
        if self.tasks.contains_key(id) {
            self.problems.push(LanesConfigError::DuplicateDefinition {
                id: id.to_owned(),
                reason: "it names both a task and an event",
            });
            return None;
        }
        let types = TypeId::of::<P>();
        let entry = self.events.entry(id.to_owned()).or_insert(EventEntry {
            types,
            handlers: Vec::new(),
        });
        if entry.types != types {
            self.problems.push(LanesConfigError::DuplicateDefinition {
                id: id.to_owned(),
                reason: "it is declared twice with different types",
            });
            return None;
        }
        Some(entry)
    }

    /// Registers a handler for `def`, named `handler_id` (names let a profile restrict which
    /// handlers run for events it consumes from a lane).
    pub fn on<P, F, Fut>(&mut self, def: EventDef<P>, handler_id: &str, handler: F) -> &mut Self
    where
        P: DeserializeOwned + Send + 'static,
        F: Fn(P, EventContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        let id = def.id();
        if let Err(reason) = check_id(handler_id) {
            self.problems.push(LanesConfigError::InvalidId {
                kind: IdKind::Handler,
                id: handler_id.to_owned(),
                reason,
            });
            return self;
        }
        let Some(entry) = self.declare_event_entry::<P>(id) else {
            return self;
        };
        if entry.handlers.iter().any(|(h, _)| h == handler_id) {
            self.problems.push(LanesConfigError::DuplicateHandler {
                target: id.to_owned(),
                handler: handler_id.to_owned(),
            });
            return self;
        }
        let f: EventFn<P> = Arc::new(move |payload, cx| handler(payload, cx).boxed());
        entry
            .handlers
            .push((handler_id.to_owned(), Arc::new(TypedEventHandler { f })));
        self
    }

    pub(crate) fn kind_of(&self, id: &str) -> Option<crate::auth::TargetKind> {
        if self.tasks.contains_key(id) {
            Some(crate::auth::TargetKind::Task)
        } else if self.events.contains_key(id) {
            Some(crate::auth::TargetKind::Event)
        } else {
            None
        }
    }
}
