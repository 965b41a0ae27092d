//! The gRPC service a worker serves (`shoal.worker.v1.WorkerService`): its description, and one
//! session per runner.

use std::collections::HashMap;
use std::sync::Arc;

use shoal_protocol::proto::worker::v1 as pb;
use shoal_protocol::proto::worker::v1::worker_service_server::WorkerService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::PROTOCOL_VERSION;
use crate::entity_type::{EntityType, Handler};
use crate::session;

/// The handlers by entity type and tag, and the description.
pub(crate) struct Registry {
    handlers: HashMap<(String, String), Handler>,
    description: pb::DescribeResponse,
}

impl Registry {
    /// The handlers of `types`, and the description of a worker named `name` that serves them.
    pub(crate) fn new(name: String, types: Vec<EntityType>) -> Self {
        let mut handlers = HashMap::new();
        let mut specs = Vec::with_capacity(types.len());
        for ty in types {
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
        Self {
            handlers,
            description: pb::DescribeResponse {
                protocol_version: PROTOCOL_VERSION,
                entity_types: specs,
                worker_name: name,
                pid: std::process::id(),
            },
        }
    }

    pub(crate) fn handler(&self, entity_type: &str, tag: &str) -> Option<Handler> {
        self.handlers
            .get(&(entity_type.to_owned(), tag.to_owned()))
            .cloned()
    }
}

/// `shoal.worker.v1.WorkerService`, answered from a registry.
pub(crate) struct Service {
    registry: Arc<Registry>,
    max_kv_in_flight: usize,
}

impl Service {
    /// Serves `registry`; each session sends at most `max_kv_in_flight` KV requests at once.
    pub(crate) fn new(registry: Registry, max_kv_in_flight: usize) -> Self {
        Self {
            registry: Arc::new(registry),
            max_kv_in_flight,
        }
    }
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
