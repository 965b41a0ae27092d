//! A worker: its entity types, and how it is served.

use shoal_launcher::{
    ServeError, StopReason, UnixServeOptions, UnixServer, WorkerArgs, WorkerArgsError, serve_unix,
};
use shoal_protocol::proto::worker::v1::worker_service_server::WorkerServiceServer;
use tonic::transport::server::Router;

use crate::DEFAULT_MAX_KV_IN_FLIGHT;
use crate::entity_type::EntityType;
use crate::service::{Registry, Service};

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
pub enum WorkerRunError {
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
            max_kv_in_flight: DEFAULT_MAX_KV_IN_FLIGHT,
        }
    }

    /// Adds an entity type.
    pub fn entity(mut self, entity_type: EntityType) -> Self {
        self.types.push(entity_type);
        self
    }

    /// How many KV requests one session may have outstanding (default
    /// [`DEFAULT_MAX_KV_IN_FLIGHT`], at least 1). A handler's KV request past it waits for an
    /// earlier one's answer before it is sent, so the requests waiting for answers, and those
    /// queued to the runner, stay bounded. Keep it at or below the runner's limit
    /// (`WorkerOptions::max_kv_in_flight` in `shoal-worker`, the same by default): past that the
    /// runner stops reading the session until it has answered one.
    pub fn max_kv_in_flight(mut self, max: usize) -> Self {
        self.max_kv_in_flight = max.max(1);
        self
    }

    /// The worker as a tonic router serving `shoal.worker.v1.WorkerService` (64 MiB message
    /// limit each way).
    pub fn into_router(self) -> Router {
        const MAX_MESSAGE: usize = 64 * 1024 * 1024;
        let registry = Registry::new(self.name, self.types);
        let service = WorkerServiceServer::new(Service::new(registry, self.max_kv_in_flight))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        tonic::transport::Server::builder().add_service(service)
    }

    /// Serves on the socket `options` names (binds, announces `UNIX:<path>`, idles out), with
    /// gRPC reflection describing the Shoal protos.
    pub async fn serve(self, options: UnixServeOptions) -> Result<UnixServer, ServeError> {
        let options = options.file_descriptor_set(shoal_protocol::proto::FILE_DESCRIPTOR_SET);
        serve_unix(self.into_router(), options).await
    }

    /// Parses the launcher's arguments (`--unix`, `--idle-timeout`) from this process's `argv`,
    /// serves until the idle timeout, SIGTERM or SIGINT, and returns why it stopped.
    pub async fn run(self) -> Result<StopReason, WorkerRunError> {
        let args = WorkerArgs::from_env()?;
        self.run_with(&args).await
    }

    /// Like [`Worker::run`], with arguments parsed elsewhere.
    pub async fn run_with(self, args: &WorkerArgs) -> Result<StopReason, WorkerRunError> {
        let server = self
            .serve(args.serve_options()?.stop_on_signals(true))
            .await?;
        Ok(server.done().await?)
    }
}
