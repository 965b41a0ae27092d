//! Write a worker in Rust: declare entity types and their handlers, then serve them on the socket
//! the launcher hands you.
//!
//! ```no_run
//! use bytes::Bytes;
//! use shoal_worker::sdk::{CallContext, EntityType, Failure, Worker};
//!
//! async fn increment(ctx: CallContext, payload: Bytes) -> Result<Bytes, Failure> {
//!     let by: i64 = std::str::from_utf8(&payload)
//!         .ok()
//!         .and_then(|text| text.trim().parse().ok())
//!         .ok_or_else(|| Failure::malformed("expected a decimal number"))?;
//!     let current: i64 = match ctx.kv().get_one("value").await? {
//!         Some(bytes) => String::from_utf8_lossy(&bytes).parse().unwrap_or(0),
//!         None => 0,
//!     };
//!     let next = current + by;
//!     ctx.kv().put_one("value", next.to_string()).await?;
//!     Ok(Bytes::from(next.to_string()))
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     Worker::new("counter-worker")
//!         .entity(EntityType::new("counter").unary("increment", increment))
//!         .run() // --unix PATH --idle-timeout SECS from argv; announces UNIX:PATH
//!         .await?;
//!     Ok(())
//! }
//! ```

mod context;
mod failure;
mod kv;
mod session;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use shoal_launcher::{
    ServeError, ServeOptions, StopReason, UnixServer, WorkerArgs, WorkerArgsError, serve_unix,
};
use shoal_protocol::proto::worker::v1 as pb;
use shoal_protocol::proto::worker::v1::worker_service_server::{
    WorkerService, WorkerServiceServer,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::server::Router;

pub use context::{CallContext, ChunkWriter};
pub use failure::Failure;
pub use kv::{Kv, KvError, KvErrorKind};

use crate::PROTOCOL_VERSION;

type UnaryFn =
    Arc<dyn Fn(CallContext, Bytes) -> BoxFuture<'static, Result<Bytes, Failure>> + Send + Sync>;
type StreamFn = Arc<
    dyn Fn(CallContext, Bytes, ChunkWriter) -> BoxFuture<'static, Result<(), Failure>>
        + Send
        + Sync,
>;

#[derive(Clone)]
pub(crate) enum Handler {
    Unary(UnaryFn),
    Stream(StreamFn),
}

struct TagDef {
    name: String,
    persisted: bool,
    handler: Handler,
}

/// An entity type served by the worker: its name, concurrency and handlers.
pub struct EntityType {
    name: String,
    concurrency: u32,
    tags: Vec<TagDef>,
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
        F: Fn(CallContext, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, Failure>> + Send + 'static,
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
    /// (make the handler idempotent, for example with [`CallContext::request_id`]).
    pub fn persisted_unary<F, Fut>(self, tag: impl Into<String>, handler: F) -> Self
    where
        F: Fn(CallContext, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, Failure>> + Send + 'static,
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
        F: Fn(CallContext, Bytes, ChunkWriter) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Failure>> + Send + 'static,
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

/// The handlers by entity type and tag, and the description.
pub(crate) struct Registry {
    handlers: HashMap<(String, String), Handler>,
    description: pb::DescribeResponse,
}

impl Registry {
    pub(crate) fn handler(&self, entity_type: &str, tag: &str) -> Option<Handler> {
        self.handlers
            .get(&(entity_type.to_owned(), tag.to_owned()))
            .cloned()
    }
}

/// A worker: entity types and their handlers. Serve it with [`Worker::run`] (the launcher's
/// arguments from `argv`), [`Worker::serve`] (options of your own) or [`Worker::into_router`].
#[derive(Debug)]
pub struct Worker {
    name: String,
    types: Vec<EntityType>,
    max_kv_in_flight: usize,
}

/// Why [`Worker::run`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The launcher's arguments are missing or malformed.
    #[error(transparent)]
    Args(#[from] WorkerArgsError),
    /// Serving failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
}

impl Worker {
    /// A worker named `name` (for logs) with no entity types yet.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            types: Vec::new(),
            max_kv_in_flight: crate::DEFAULT_MAX_KV_IN_FLIGHT,
        }
    }

    /// Adds an entity type.
    pub fn entity(mut self, entity_type: EntityType) -> Self {
        self.types.push(entity_type);
        self
    }

    /// How many KV requests one session may have outstanding (default
    /// [`DEFAULT_MAX_KV_IN_FLIGHT`](crate::DEFAULT_MAX_KV_IN_FLIGHT), at least 1). A handler's KV
    /// request past it waits for an earlier one's answer before it is sent, so the requests
    /// waiting for answers, and those queued to the runner, stay bounded. Keep it at or below
    /// the runner's [`WorkerOptions::max_kv_in_flight`](crate::WorkerOptions::max_kv_in_flight):
    /// past that the runner stops reading the session until it has answered one.
    pub fn max_kv_in_flight(mut self, max: usize) -> Self {
        self.max_kv_in_flight = max.max(1);
        self
    }

    fn registry(self) -> Registry {
        let mut handlers = HashMap::new();
        let mut specs = Vec::with_capacity(self.types.len());
        for ty in self.types {
            let mut tags = Vec::with_capacity(ty.tags.len());
            for tag in ty.tags {
                let kind = match tag.handler {
                    Handler::Unary(_) => pb::TagKind::Unary,
                    Handler::Stream(_) => pb::TagKind::Stream,
                };
                tags.push(pb::TagSpec {
                    name: tag.name.clone(),
                    kind: kind as i32,
                    persisted: tag.persisted,
                });
                handlers.insert((ty.name.clone(), tag.name), tag.handler);
            }
            specs.push(pb::EntityTypeSpec {
                name: ty.name,
                tags,
                concurrency: ty.concurrency,
            });
        }
        Registry {
            handlers,
            description: pb::DescribeResponse {
                protocol_version: PROTOCOL_VERSION,
                entity_types: specs,
                worker_name: self.name,
                pid: std::process::id(),
            },
        }
    }

    /// The worker as a tonic router serving `shoal.worker.v1.WorkerService` (64 MiB message
    /// limit each way).
    pub fn into_router(self) -> Router {
        const MAX_MESSAGE: usize = 64 * 1024 * 1024;
        let max_kv_in_flight = self.max_kv_in_flight;
        let service = WorkerServiceServer::new(Service {
            registry: Arc::new(self.registry()),
            max_kv_in_flight,
        })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
        tonic::transport::Server::builder().add_service(service)
    }

    /// Serves on the socket `options` names (binds, announces `UNIX:<path>`, idles out), with
    /// gRPC reflection describing the Shoal protos.
    pub async fn serve(self, options: ServeOptions) -> Result<UnixServer, ServeError> {
        let options = options.file_descriptor_set(shoal_protocol::proto::FILE_DESCRIPTOR_SET);
        serve_unix(self.into_router(), options).await
    }

    /// Parses the launcher's arguments (`--unix`, `--idle-timeout`) from this process's `argv`,
    /// serves until the idle timeout, SIGTERM or SIGINT, and returns why it stopped.
    pub async fn run(self) -> Result<StopReason, RunError> {
        let args = WorkerArgs::from_env()?;
        self.run_with(&args).await
    }

    /// Like [`Worker::run`], with arguments parsed elsewhere.
    pub async fn run_with(self, args: &WorkerArgs) -> Result<StopReason, RunError> {
        let server = self
            .serve(args.serve_options()?.stop_on_signals(true))
            .await?;
        Ok(server.done().await?)
    }
}

struct Service {
    registry: Arc<Registry>,
    max_kv_in_flight: usize,
}

type SessionStream = UnboundedReceiverStream<Result<pb::WorkerMessage, tonic::Status>>;

#[tonic::async_trait]
impl WorkerService for Service {
    async fn describe(
        &self,
        _request: tonic::Request<pb::DescribeRequest>,
    ) -> Result<tonic::Response<pb::DescribeResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.registry.description.clone()))
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: tonic::Request<tonic::Streaming<pb::RunnerMessage>>,
    ) -> Result<tonic::Response<Self::SessionStream>, tonic::Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(session::SessionState::new(tx, self.max_kv_in_flight));
        tokio::spawn(session::run(
            self.registry.clone(),
            state,
            request.into_inner(),
        ));
        Ok(tonic::Response::new(UnboundedReceiverStream::new(rx)))
    }
}
