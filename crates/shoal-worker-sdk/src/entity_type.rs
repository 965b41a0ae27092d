//! An entity type a worker serves: its name, concurrency and handlers by tag.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::context::{ChunkWriter, HandlerContext};
use crate::failure::HandlerFailure;

type UnaryFn = Arc<
    dyn Fn(HandlerContext, Bytes) -> BoxFuture<'static, Result<Bytes, HandlerFailure>>
        + Send
        + Sync,
>;
type StreamFn = Arc<
    dyn Fn(HandlerContext, Bytes, ChunkWriter) -> BoxFuture<'static, Result<(), HandlerFailure>>
        + Send
        + Sync,
>;

/// A tag's handler: one reply, or a stream of them.
#[derive(Clone)]
pub(crate) enum Handler {
    Unary(UnaryFn),
    Stream(StreamFn),
}

/// One tag of an entity type and its handler.
pub(crate) struct TagDef {
    pub(crate) name: String,
    pub(crate) persisted: bool,
    pub(crate) handler: Handler,
}

/// An entity type served by the worker: its name, concurrency and handlers.
pub struct EntityType {
    pub(crate) name: String,
    pub(crate) concurrency: u32,
    pub(crate) tags: Vec<TagDef>,
}

impl std::fmt::Debug for EntityType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntityType")
            .field("name", &self.name)
            .field("concurrency", &self.concurrency)
            .field(
                "tags",
                &self.tags.iter().map(|t| &t.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl EntityType {
    /// An entity type named `name` (handling one call per entity at a time unless
    /// [`EntityType::concurrency`] says otherwise).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            concurrency: 0,
            tags: Vec::new(),
        }
    }

    /// How many calls one entity may run at once (the runner enforces it).
    pub fn concurrency(mut self, concurrency: u32) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Handles `tag` with one reply.
    pub fn unary<F, Fut>(self, tag: impl Into<String>, handler: F) -> Self
    where
        F: Fn(HandlerContext, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, HandlerFailure>> + Send + 'static,
    {
        self.add(
            tag,
            false,
            Handler::Unary(Arc::new(move |ctx, payload| {
                Box::pin(handler(ctx, payload))
            })),
        )
    }

    /// Handles `tag` with one reply; its requests are persisted and redelivered until answered
    /// (make the handler idempotent, for example with [`HandlerContext::request_id`]).
    pub fn persisted_unary<F, Fut>(self, tag: impl Into<String>, handler: F) -> Self
    where
        F: Fn(HandlerContext, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, HandlerFailure>> + Send + 'static,
    {
        self.add(
            tag,
            true,
            Handler::Unary(Arc::new(move |ctx, payload| {
                Box::pin(handler(ctx, payload))
            })),
        )
    }

    /// Handles `tag` with a stream of replies: send items to the [`ChunkWriter`], return to end
    /// the stream.
    pub fn stream<F, Fut>(self, tag: impl Into<String>, handler: F) -> Self
    where
        F: Fn(HandlerContext, Bytes, ChunkWriter) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerFailure>> + Send + 'static,
    {
        self.add(
            tag,
            false,
            Handler::Stream(Arc::new(move |ctx, payload, out| {
                Box::pin(handler(ctx, payload, out))
            })),
        )
    }

    fn add(mut self, tag: impl Into<String>, persisted: bool, handler: Handler) -> Self {
        self.tags.push(TagDef {
            name: tag.into(),
            persisted,
            handler,
        });
        self
    }
}
