//! Typed entity definitions.

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use shoal_protocol::{EntityType, ErrorCode, Failure, Tag};

use super::behavior::{
    Behavior, BehaviorFactory, Call, CallFailure, CallResult, ExclusiveBehavior, TagInfo,
};
use super::context::EntityContext;
use super::handler::{Entity, Handler, HandlerError, HandlerErrorKind, StreamHandler};
use super::message::Message;
use super::options::{EntityOptions, GroupSelector};
use super::payload::{Payload, ReplyValue};
use super::stream::ChunkSink;
use super::{Registration, RegistrationParts};
use crate::error::RegisterError;

type HandleFn<E> = for<'a> fn(&'a mut E, &'a Call, &'a EntityContext) -> BoxFuture<'a, CallResult>;

struct HandlerEntry<E> {
    tag: &'static str,
    message_type: TypeId,
    streaming: bool,
    persisted: bool,
    handle: HandleFn<E>,
}

/// Declares a typed entity: its handlers and options. Register it with
/// [`crate::Sharding::register`].
///
/// Build it from the handlers the type declares with [`#[handlers]`](crate::handlers):
/// [`EntityDefinition::declared`] (or [`EntityDefinition::declared_with_state`]) adds every one
/// of them, so none can be forgotten.
///
/// ```ignore
/// #[shoal_sharding::handlers]
/// impl Counter {
///     #[handle]
///     async fn increment(&mut self, msg: Increment, ctx: &EntityContext) -> Result<i64, HandlerError> { ... }
///     #[handle]
///     async fn get(&mut self, msg: Get, ctx: &EntityContext) -> Result<i64, HandlerError> { ... }
/// }
///
/// sharding.register(EntityDefinition::<Counter>::declared().max_idle_time(Duration::from_secs(30)))?;
/// ```
///
/// Handlers can also be added one by one ([`EntityDefinition::handle`],
/// [`EntityDefinition::stream`]), for definitions composed at run time; a handler left out that
/// way still compiles, and its calls fail with `unknown_tag`.
pub struct EntityDefinition<E: Entity> {
    handlers: Vec<HandlerEntry<E>>,
    options: EntityOptions,
    state: Arc<E::State>,
    _entity: PhantomData<fn() -> E>,
}

impl<E: Entity> fmt::Debug for EntityDefinition<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntityDefinition")
            .field(
                "tags",
                &self.handlers.iter().map(|h| h.tag).collect::<Vec<_>>(),
            )
            .field("options", &self.options)
            .finish()
    }
}

impl<E: Entity<State = ()>> Default for EntityDefinition<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: Entity<State = ()>> EntityDefinition<E> {
    /// A definition with no handlers yet, of an entity without shared state. (An entity with
    /// shared state is defined with [`EntityDefinition::with_state`]; one whose handlers are
    /// declared with [`#[handlers]`](crate::handlers), with [`EntityDefinition::declared`].)
    pub fn new() -> Self {
        Self::with_state(())
    }
}

impl<E: Entity> EntityDefinition<E> {
    /// A definition with no handlers yet, whose instances all get `state` when they activate
    /// ([`Entity::activate`]). Pass the value or an `Arc` of it already shared elsewhere. (For an
    /// entity whose handlers are declared with [`#[handlers]`](crate::handlers):
    /// [`EntityDefinition::declared_with_state`].)
    pub fn with_state(state: impl Into<Arc<E::State>>) -> Self {
        Self {
            handlers: Vec::new(),
            options: EntityOptions::default(),
            state: state.into(),
            _entity: PhantomData,
        }
    }

    /// Handles message `M` with one reply.
    ///
    /// For composing a definition handler by handler (at run time, or for `Handler` impls
    /// written by hand). Nothing checks that every handler of the type is added: a forgotten one
    /// compiles, and its calls fail with `unknown_tag`. A type whose handlers are declared with
    /// [`#[handlers]`](crate::handlers) is defined with [`EntityDefinition::declared`] (or
    /// [`EntityDefinition::declared_with_state`]), which cannot forget one.
    pub fn handle<M: Message>(mut self) -> Self
    where
        E: Handler<M>,
    {
        self.handlers.push(HandlerEntry {
            tag: M::TAG,
            message_type: TypeId::of::<M>(),
            streaming: false,
            persisted: M::PERSISTED,
            handle: dispatch_unary::<E, M>,
        });
        self
    }

    /// Handles message `M` with a stream of replies.
    ///
    /// Like [`EntityDefinition::handle`], nothing checks that it is not forgotten:
    /// [`EntityDefinition::declared`] registers every `#[stream]` handler of a
    /// [`#[handlers]`](crate::handlers) block.
    pub fn stream<M: Message>(mut self) -> Self
    where
        E: StreamHandler<M>,
    {
        self.handlers.push(HandlerEntry {
            tag: M::TAG,
            message_type: TypeId::of::<M>(),
            streaming: true,
            persisted: M::PERSISTED,
            handle: dispatch_stream::<E, M>,
        });
        self
    }

    /// Replaces all options.
    pub fn options(mut self, options: EntityOptions) -> Self {
        self.options = options;
        self
    }

    /// Mailbox capacity of each instance.
    pub fn mailbox_capacity(mut self, capacity: usize) -> Self {
        self.options.mailbox_capacity = Some(capacity);
        self
    }

    /// Idle time before passivation.
    pub fn max_idle_time(mut self, idle: std::time::Duration) -> Self {
        self.options.max_idle_time = Some(idle);
        self
    }
}

impl<E: Entity> Registration for EntityDefinition<E> {
    fn into_parts(self) -> Result<RegistrationParts, RegisterError> {
        let entity_type = EntityType::from_static(E::TYPE)?;
        if self.options.concurrency.is_some_and(|c| c != 1) {
            return Err(RegisterError::InvalidOption {
                entity_type: E::TYPE.to_owned(),
                reason: "typed entities handle one message at a time (concurrency 1); use a \
                         dynamic entity for concurrent handling"
                    .to_owned(),
            });
        }
        let mut tags = HashMap::new();
        let mut by_tag = HashMap::new();
        let mut by_type = HashMap::new();
        for (index, entry) in self.handlers.iter().enumerate() {
            let tag = Tag::from_static(entry.tag)?;
            if by_tag.insert(tag.clone(), index).is_some() {
                return Err(RegisterError::DuplicateTag {
                    entity_type: E::TYPE.to_owned(),
                    tag: entry.tag.to_owned(),
                });
            }
            by_type.insert(entry.message_type, index);
            tags.insert(
                tag,
                TagInfo {
                    streaming: entry.streaming,
                    persisted: entry.persisted,
                },
            );
        }
        let table = Arc::new(Table {
            entries: self.handlers,
            by_tag,
            by_type,
        });
        let mut options = self.options;
        options.shard_group = Some(GroupSelector::by(E::shard_group));
        Ok(RegistrationParts {
            entity_type,
            factory: Arc::new(TypedFactory {
                table,
                state: self.state,
            }),
            tags,
            options,
            rust_type: Some(TypeId::of::<E>()),
        })
    }
}

struct Table<E> {
    entries: Vec<HandlerEntry<E>>,
    by_tag: HashMap<Tag, usize>,
    by_type: HashMap<TypeId, usize>,
}

struct TypedFactory<E: Entity> {
    table: Arc<Table<E>>,
    state: Arc<E::State>,
}

impl<E: Entity> fmt::Debug for TypedFactory<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedFactory").finish_non_exhaustive()
    }
}

impl<E: Entity> BehaviorFactory for TypedFactory<E> {
    fn activate(&self, ctx: EntityContext) -> BoxFuture<'static, Result<Behavior, String>> {
        let table = self.table.clone();
        let state = self.state.clone();
        Box::pin(async move {
            let entity = E::activate(&ctx, &state).await.map_err(|e| e.to_string())?;
            Ok(Behavior::Exclusive(Box::new(TypedBehavior {
                entity,
                table,
            })))
        })
    }
}

struct TypedBehavior<E> {
    entity: E,
    table: Arc<Table<E>>,
}

fn failed(code: ErrorCode, message: impl Into<String>) -> CallFailure {
    CallFailure::Failed(Failure::new(code, message))
}

impl<E: Entity> ExclusiveBehavior for TypedBehavior<E> {
    fn handle<'a>(
        &'a mut self,
        call: &'a Call,
        ctx: &'a EntityContext,
    ) -> BoxFuture<'a, CallResult> {
        let index = match (&call.tag, &call.payload) {
            (_, Payload::Local(value)) => self.table.by_type.get(&(**value).type_id()),
            (Some(tag), Payload::Encoded(_)) => self.table.by_tag.get(tag),
            (None, Payload::Encoded(_)) => None,
        };
        let Some(entry) = index.and_then(|&i| self.table.entries.get(i)) else {
            let tag = call.tag.as_ref().map(|t| t.to_string()).unwrap_or_default();
            return Box::pin(async move { Err(failed(ErrorCode::UnknownTag, tag)) });
        };
        if entry.streaming != call.chunks.is_some() {
            let message = if entry.streaming {
                format!(
                    "message {:?} streams its replies; call it as a stream",
                    entry.tag
                )
            } else {
                format!(
                    "message {:?} has a single reply; it cannot be streamed",
                    entry.tag
                )
            };
            return Box::pin(async move { Err(failed(ErrorCode::MalformedMessage, message)) });
        }
        (entry.handle)(&mut self.entity, call, ctx)
    }

    fn deactivate<'a>(&'a mut self, ctx: &'a EntityContext) -> BoxFuture<'a, ()> {
        Box::pin(self.entity.deactivate(ctx))
    }
}

#[expect(
    clippy::result_large_err,
    reason = "a refused message is answered with the wire `Failure` it carries"
)]
fn decode<M: Message>(payload: &Payload) -> Result<M, CallFailure> {
    match payload {
        Payload::Local(value) => value.downcast_ref::<M>().cloned().ok_or_else(|| {
            failed(
                ErrorCode::MalformedMessage,
                "local message of an unexpected type",
            )
        }),
        Payload::Encoded(bytes) => serde_json::from_slice(bytes).map_err(|e| {
            failed(
                ErrorCode::MalformedMessage,
                format!("message {:?} does not decode: {e}", M::TAG),
            )
        }),
    }
}

fn handler_failure(error: HandlerError) -> CallFailure {
    match error.kind() {
        HandlerErrorKind::Fatal => CallFailure::Fatal(error.message().to_owned()),
        HandlerErrorKind::Unavailable => failed(ErrorCode::Persistence, error.message()),
        HandlerErrorKind::Failed => failed(ErrorCode::Handler, error.message()),
    }
}

#[expect(
    clippy::result_large_err,
    reason = "a reply that does not encode is answered with the wire `Failure` it carries"
)]
fn encode_reply<T: serde::Serialize + Send + 'static>(reply: T, encode: bool) -> CallResult {
    if encode {
        serde_json::to_vec(&reply)
            .map(|b| ReplyValue::Encoded(Bytes::from(b)))
            .map_err(|e| {
                failed(
                    ErrorCode::MalformedMessage,
                    format!("reply does not encode: {e}"),
                )
            })
    } else {
        Ok(ReplyValue::Local(Box::new(reply)))
    }
}

fn dispatch_unary<'a, E: Handler<M>, M: Message>(
    entity: &'a mut E,
    call: &'a Call,
    ctx: &'a EntityContext,
) -> BoxFuture<'a, CallResult> {
    Box::pin(async move {
        let msg = decode::<M>(&call.payload)?;
        let reply = entity.handle(msg, ctx).await.map_err(handler_failure)?;
        encode_reply(reply, call.encode_reply)
    })
}

fn dispatch_stream<'a, E: StreamHandler<M>, M: Message>(
    entity: &'a mut E,
    call: &'a Call,
    ctx: &'a EntityContext,
) -> BoxFuture<'a, CallResult> {
    Box::pin(async move {
        let msg = decode::<M>(&call.payload)?;
        let Some(chunks) = call.chunks.clone() else {
            return Err(failed(
                ErrorCode::MalformedMessage,
                "streaming call without a stream",
            ));
        };
        let mut sink = ChunkSink::<M::Reply>::new(chunks, call.encode_reply);
        entity
            .handle_stream(msg, ctx, &mut sink)
            .await
            .map_err(handler_failure)?;
        Ok(ReplyValue::Encoded(Bytes::new()))
    })
}
