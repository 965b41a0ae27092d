//! Dynamic entities: message tags known at run time, bodies as encoded bytes.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use shoal_protocol::{EntityType, ErrorCode, Failure, Headers, Snowflake, Tag};

use super::behavior::{
    Behavior, BehaviorFactory, Call, CallFailure, CallResult, SharedBehavior, TagInfo,
};
use super::context::EntityContext;
use super::handler::{HandlerError, HandlerErrorKind};
use super::options::EntityOptions;
use super::payload::{Payload, ReplyValue};
use super::stream::RawChunkSink;
use super::{Registration, RegistrationParts};
use crate::error::RegisterError;

/// Whether a tag answers once or streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagKind {
    /// One reply.
    Unary,
    /// A stream of replies.
    Stream,
}

/// A request to a dynamic entity.
#[derive(Debug)]
pub struct DynamicRequest {
    /// The request's id.
    pub id: Snowflake,
    /// The message tag (one the definition declared).
    pub tag: Tag,
    /// The encoded message.
    pub payload: Bytes,
    /// The caller's headers.
    pub headers: Headers,
    /// For streaming tags: where to send the items. Return once the stream is complete.
    pub chunks: Option<RawChunkSink>,
}

/// An entity whose messages are handled as bytes. Instances are shared (`Arc`), so the runtime may
/// run up to the type's `concurrency` requests at once.
pub trait DynamicEntity: Send + Sync + 'static {
    /// Handles one request and returns the encoded reply (empty for a completed stream).
    fn handle(
        self: Arc<Self>,
        request: DynamicRequest,
        ctx: EntityContext,
    ) -> BoxFuture<'static, Result<Bytes, HandlerError>>;

    /// Runs before the instance stops gracefully.
    fn deactivate(self: Arc<Self>, ctx: EntityContext) -> BoxFuture<'static, ()> {
        let _ = ctx;
        Box::pin(async {})
    }
}

/// Creates dynamic entity instances. Implemented for async closures
/// `Fn(EntityContext) -> Future<Output = Result<Arc<dyn DynamicEntity>, HandlerError>>`.
pub trait DynamicFactory: Send + Sync + 'static {
    /// Activates the instance at `ctx.address()`.
    fn activate(
        &self,
        ctx: EntityContext,
    ) -> BoxFuture<'static, Result<Arc<dyn DynamicEntity>, HandlerError>>;
}

impl<F, Fut> DynamicFactory for F
where
    F: Fn(EntityContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Arc<dyn DynamicEntity>, HandlerError>> + Send + 'static,
{
    fn activate(
        &self,
        ctx: EntityContext,
    ) -> BoxFuture<'static, Result<Arc<dyn DynamicEntity>, HandlerError>> {
        Box::pin(self(ctx))
    }
}

/// Declares a dynamic entity type: its name, its tags and a factory.
pub struct DynamicDefinition {
    entity_type: String,
    factory: Arc<dyn DynamicFactory>,
    tags: Vec<(String, TagKind, bool)>,
    options: EntityOptions,
}

impl fmt::Debug for DynamicDefinition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamicDefinition")
            .field("entity_type", &self.entity_type)
            .field("tags", &self.tags)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl DynamicDefinition {
    /// A definition of `entity_type` whose instances `factory` creates.
    pub fn new(entity_type: impl Into<String>, factory: impl DynamicFactory) -> Self {
        Self {
            entity_type: entity_type.into(),
            factory: Arc::new(factory),
            tags: Vec::new(),
            options: EntityOptions::default(),
        }
    }

    /// Declares a tag.
    pub fn tag(mut self, tag: impl Into<String>, kind: TagKind) -> Self {
        self.tags.push((tag.into(), kind, false));
        self
    }

    /// Declares a persisted tag: its requests are saved in message storage before delivery and
    /// redelivered until they have a final reply (see [`crate::Message::PERSISTED`]).
    pub fn persisted_tag(mut self, tag: impl Into<String>, kind: TagKind) -> Self {
        self.tags.push((tag.into(), kind, true));
        self
    }

    /// Replaces all options.
    pub fn options(mut self, options: EntityOptions) -> Self {
        self.options = options;
        self
    }
}

impl Registration for DynamicDefinition {
    fn into_parts(self) -> Result<RegistrationParts, RegisterError> {
        let entity_type = EntityType::new(&self.entity_type)?;
        if self.options.concurrency == Some(0) {
            return Err(RegisterError::InvalidOption {
                entity_type: self.entity_type,
                reason: "concurrency must be at least 1".to_owned(),
            });
        }
        let mut tags = HashMap::new();
        for (tag, kind, persisted) in &self.tags {
            let info = TagInfo {
                streaming: *kind == TagKind::Stream,
                persisted: *persisted,
            };
            if tags.insert(Tag::new(tag)?, info).is_some() {
                return Err(RegisterError::DuplicateTag {
                    entity_type: self.entity_type.clone(),
                    tag: tag.clone(),
                });
            }
        }
        Ok(RegistrationParts {
            entity_type,
            factory: Arc::new(DynamicFactoryAdapter {
                factory: self.factory,
            }),
            tags,
            options: self.options,
            rust_type: None,
        })
    }
}

struct DynamicFactoryAdapter {
    factory: Arc<dyn DynamicFactory>,
}

impl fmt::Debug for DynamicFactoryAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DynamicFactory")
    }
}

impl BehaviorFactory for DynamicFactoryAdapter {
    fn activate(&self, ctx: EntityContext) -> BoxFuture<'static, Result<Behavior, String>> {
        let activation = self.factory.activate(ctx);
        Box::pin(async move {
            let entity = activation.await.map_err(|e| e.to_string())?;
            Ok(Behavior::Shared(Arc::new(DynamicBehavior { entity })))
        })
    }
}

struct DynamicBehavior {
    entity: Arc<dyn DynamicEntity>,
}

impl SharedBehavior for DynamicBehavior {
    fn handle(self: Arc<Self>, call: &Call, ctx: EntityContext) -> BoxFuture<'static, CallResult> {
        let (Some(tag), Payload::Encoded(payload)) = (&call.tag, &call.payload) else {
            return Box::pin(async {
                Err(CallFailure::Failed(Failure::new(
                    ErrorCode::MalformedMessage,
                    "dynamic entities take encoded messages",
                )))
            });
        };
        let request = DynamicRequest {
            id: call.id,
            tag: tag.clone(),
            payload: payload.clone(),
            headers: call.headers.clone(),
            chunks: call.chunks.clone().map(RawChunkSink::new),
        };
        Box::pin(async move {
            match self.entity.clone().handle(request, ctx).await {
                Ok(bytes) => Ok(ReplyValue::Encoded(bytes)),
                Err(e) => Err(match e.kind() {
                    HandlerErrorKind::Fatal => CallFailure::Fatal(e.message().to_owned()),
                    HandlerErrorKind::Unavailable => {
                        CallFailure::Failed(Failure::new(ErrorCode::Persistence, e.message()))
                    }
                    HandlerErrorKind::Failed => {
                        CallFailure::Failed(Failure::new(ErrorCode::Handler, e.message()))
                    }
                }),
            }
        })
    }

    fn deactivate(self: Arc<Self>, ctx: EntityContext) -> BoxFuture<'static, ()> {
        self.entity.clone().deactivate(ctx)
    }
}
