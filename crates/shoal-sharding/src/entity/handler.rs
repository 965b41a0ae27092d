//! The typed entity traits.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use super::context::EntityContext;
use super::message::Message;
use super::stream::ChunkSink;

/// A stateful entity type. One instance exists per entity id while it is active; it handles one
/// message at a time, in arrival order. Its message handlers are the methods of its
/// [`#[handlers]`](crate::handlers) block, and
/// [`EntityDefinition::declared`](crate::EntityDefinition::declared) registers them all.
///
/// ```
/// use std::sync::Arc;
/// use serde::{Deserialize, Serialize};
/// use shoal_sharding::{Entity, EntityContext, EntityDefinition, HandlerError, Message, handlers};
///
/// #[derive(Default)]
/// struct Counter {
///     value: i64,
/// }
///
/// impl Entity for Counter {
///     const TYPE: &'static str = "counter";
///     type State = ();
///
///     async fn activate(_ctx: &EntityContext, _state: &Arc<()>) -> Result<Self, HandlerError> {
///         Ok(Counter::default())
///     }
/// }
///
/// #[derive(Clone, Serialize, Deserialize)]
/// struct Increment {
///     by: i64,
/// }
///
/// impl Message for Increment {
///     const TAG: &'static str = "increment";
///     type Reply = i64;
/// }
///
/// #[handlers]
/// impl Counter {
///     #[handle]
///     async fn increment(&mut self, msg: Increment, _ctx: &EntityContext) -> Result<i64, HandlerError> {
///         self.value += msg.by;
///         Ok(self.value)
///     }
/// }
///
/// let definition = EntityDefinition::<Counter>::declared();
/// # let _ = definition;
/// ```
pub trait Entity: Send + Sized + 'static {
    /// The entity type's name. Stable: it is on the wire and in storage.
    const TYPE: &'static str;

    /// What every instance of the type is given when it activates: shared application state
    /// (a database pool, a client of another service, a ledger), handed over once at
    /// registration with [`EntityDefinition::with_state`](crate::EntityDefinition::with_state).
    /// `()` for entities that need none ([`EntityDefinition::new`](crate::EntityDefinition::new)
    /// is only available then, so a definition cannot forget its state). Instances keep the
    /// `Arc` they are given to reach it from their handlers.
    type State: Send + Sync + 'static;

    /// The shard group of entity `id` (default: `"default"`). Callers and hosts must agree, so it
    /// is part of the type.
    fn shard_group(id: &shoal_protocol::EntityId) -> shoal_protocol::ShardGroup {
        let _ = id;
        shoal_protocol::ShardGroup::default_group()
    }

    /// Creates the instance for `ctx.address()` when its first message arrives (or it is
    /// re-activated after passivation, a shard move or a defect), with the type's shared
    /// `state`. Load the entity's own state here.
    fn activate(
        ctx: &EntityContext,
        state: &Arc<Self::State>,
    ) -> impl Future<Output = Result<Self, HandlerError>> + Send;

    /// Runs before the instance stops gracefully (passivation, shard release, shutdown). Not run
    /// when the instance is aborted (lease lost, termination timeout).
    fn deactivate(&mut self, ctx: &EntityContext) -> impl Future<Output = ()> + Send {
        let _ = ctx;
        async {}
    }
}

/// Handles message `M`. Usually implemented by [`#[handlers]`](crate::handlers) for a method
/// marked `#[handle]`; an impl written by hand is registered with
/// [`EntityDefinition::handle`](crate::EntityDefinition::handle).
pub trait Handler<M: Message>: Entity {
    /// Handles one message and returns its reply.
    fn handle(
        &mut self,
        msg: M,
        ctx: &EntityContext,
    ) -> impl Future<Output = Result<M::Reply, HandlerError>> + Send;
}

/// Handles message `M` with a stream of replies. Usually implemented by
/// [`#[handlers]`](crate::handlers) for a method marked `#[stream]`; an impl written by hand is
/// registered with [`EntityDefinition::stream`](crate::EntityDefinition::stream).
pub trait StreamHandler<M: Message>: Entity {
    /// Handles one message, sending each reply item to `out`; returning ends the stream.
    fn handle_stream(
        &mut self,
        msg: M,
        ctx: &EntityContext,
        out: &mut ChunkSink<M::Reply>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// What kind of failure a [`HandlerError`] is: it decides what the runtime does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HandlerErrorKind {
    /// This request failed; the entity carries on. The caller gets
    /// [`crate::CallErrorKind::Handler`].
    Failed,
    /// Something the handler depends on (its storage, typically) is unavailable for now: the
    /// request did not take effect and may be retried. A persisted request is not answered: it
    /// stays unprocessed and runs again (here after the next poll, or on the shard's next
    /// owner). A volatile caller gets [`crate::CallErrorKind::Persistence`].
    Unavailable,
    /// A defect: the instance's state can no longer be trusted. The instance is dropped and
    /// re-activated, and the request replayed (up to
    /// [`crate::ShardingConfig::defect_max_retries`] times, then it fails with
    /// [`crate::CallErrorKind::Defect`]). A panic in a handler is treated the same way.
    Fatal,
}

/// A handler failure: its [kind](HandlerErrorKind) and a description. Any `std::error::Error`
/// converts into a [`HandlerErrorKind::Failed`] one with `?`.
pub struct HandlerError {
    kind: HandlerErrorKind,
    message: String,
}

impl HandlerError {
    /// A failure of kind `kind`.
    pub fn new(kind: HandlerErrorKind, message: impl fmt::Display) -> Self {
        Self {
            kind,
            message: message.to_string(),
        }
    }

    /// A failure of this request only ([`HandlerErrorKind::Failed`]).
    pub fn failed(message: impl fmt::Display) -> Self {
        Self::new(HandlerErrorKind::Failed, message)
    }

    /// A transient failure of something the handler depends on
    /// ([`HandlerErrorKind::Unavailable`]).
    pub fn unavailable(message: impl fmt::Display) -> Self {
        Self::new(HandlerErrorKind::Unavailable, message)
    }

    /// A defect ([`HandlerErrorKind::Fatal`]).
    pub fn fatal(message: impl fmt::Display) -> Self {
        Self::new(HandlerErrorKind::Fatal, message)
    }

    /// The failure's kind.
    pub fn kind(&self) -> HandlerErrorKind {
        self.kind
    }

    /// The failure's description.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            HandlerErrorKind::Failed | HandlerErrorKind::Unavailable => f.write_str(&self.message),
            HandlerErrorKind::Fatal => write!(f, "fatal: {}", self.message),
        }
    }
}

impl<E: std::error::Error> From<E> for HandlerError {
    fn from(error: E) -> Self {
        Self::failed(error)
    }
}
