//! How a process reaches the processes that serve an RPC lane.

mod grpc;

use async_trait::async_trait;
use bytes::Bytes;
use thiserror::Error;

use crate::context::CallContext;

pub use grpc::GrpcCommunicator;

/// One call across an RPC lane, ready to send: the target, its serialized input or payload, the
/// lane token and the forwarded context.
#[derive(Debug, Clone)]
pub struct RemoteCall {
    /// The task or event id.
    pub target: String,
    /// The serialized input (tasks) or payload (events), exactly the bytes the token hashes.
    pub payload: Bytes,
    /// The lane token, when the lane uses auth.
    pub token: Option<String>,
    /// The forwarded context (only the lane's allowed keys).
    pub context: CallContext,
}

/// Why a remote call did not produce a result.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RemoteError {
    /// The task returned its typed error (encoded); the runtime decodes it for the caller.
    #[error("the remote task returned its typed error")]
    Typed(Bytes),
    /// The serving process could not decode the input as the target's type.
    #[error("the remote process refused the input: {0}")]
    InvalidInput(String),
    /// The target failed on the serving side; details stay in its logs.
    #[error("the remote target failed (details withheld)")]
    Internal,
    /// The exposure's edge token was missing or wrong.
    #[error("the remote exposure refused the edge token")]
    EdgeUnauthorized,
    /// The lane token was refused (the reason stays in the serving process's logs).
    #[error("the remote process refused the lane token")]
    LaneUnauthorized,
    /// The target is not exposed by the remote process.
    #[error("\"{0}\" is not exposed by the remote process")]
    NotExposed(String),
    /// The request was over the remote process's size limit.
    #[error("the request is larger than the remote process accepts")]
    TooLarge,
    /// The remote process could not be reached or timed out.
    #[error("the remote process is unavailable: {0}")]
    Unavailable(String),
    /// Any other transport failure.
    #[error("transport error ({code}): {message}")]
    Transport {
        /// The gRPC status code.
        code: String,
        /// Its message.
        message: String,
    },
}

impl RemoteError {
    /// The stable id of the error.
    pub fn id(&self) -> &'static str {
        match self {
            RemoteError::Typed(_) => "lanes-task-error",
            RemoteError::InvalidInput(_) => "lanes-invalid-input",
            RemoteError::Internal => "lanes-internal",
            RemoteError::EdgeUnauthorized => "lanes-edge-unauthorized",
            RemoteError::LaneUnauthorized => "lanes-auth-unauthorized",
            RemoteError::NotExposed(_) => "lanes-not-exposed",
            RemoteError::TooLarge => "lanes-payload-too-large",
            RemoteError::Unavailable(_) => "lanes-unavailable",
            RemoteError::Transport { .. } => "lanes-transport",
        }
    }
}

/// Carries RPC lane calls to a process that serves the lane.
#[async_trait]
pub trait Communicator: Send + Sync + std::fmt::Debug + 'static {
    /// Runs a task remotely; returns its serialized output.
    async fn run_task(&self, call: RemoteCall) -> Result<Bytes, RemoteError>;

    /// Emits an event remotely; returns once the remote handlers ran.
    async fn emit_event(&self, call: RemoteCall) -> Result<(), RemoteError>;
}
