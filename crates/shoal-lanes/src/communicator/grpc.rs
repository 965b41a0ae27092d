//! The gRPC communicator (`shoal.lanes.v1.LaneService`).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use shoal_protocol::proto::lanes::v1 as pb;
use shoal_protocol::proto::lanes::v1::lane_service_client::LaneServiceClient;
use tonic::metadata::{AsciiMetadataValue, BinaryMetadataValue, MetadataMap};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::{Communicator, RemoteCall, RemoteError};
use crate::exposure::{CONTEXT_HEADER, EDGE_TOKEN_HEADER, ERROR_ID_HEADER};

/// Calls an RPC lane's serving process over gRPC. The channel connects lazily (creating the
/// communicator opens no connection) and reconnects by itself.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), shoal_lanes::RemoteError> {
/// use std::time::Duration;
/// use shoal_lanes::GrpcCommunicator;
///
/// let billing = GrpcCommunicator::lazy("http://127.0.0.1:7100")?
///     .edge_token("edge-secret")?
///     .timeout(Duration::from_secs(5));
/// # let _ = billing;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct GrpcCommunicator {
    client: LaneServiceClient<Channel>,
    edge_token: Option<AsciiMetadataValue>,
    timeout: Duration,
}

impl GrpcCommunicator {
    /// A communicator for the exposure at `uri` (for example `http://127.0.0.1:7100`).
    pub fn lazy(uri: &str) -> Result<Self, RemoteError> {
        let endpoint = Endpoint::from_shared(uri.to_owned())
            .map_err(|e| RemoteError::Unavailable(format!("invalid endpoint {uri}: {e}")))?
            .tcp_nodelay(true);
        Ok(GrpcCommunicator {
            client: LaneServiceClient::new(endpoint.connect_lazy()),
            edge_token: None,
            timeout: Duration::from_secs(30),
        })
    }

    /// The exposure's edge token, sent with every call.
    pub fn edge_token(mut self, token: &str) -> Result<Self, RemoteError> {
        let value = token.parse().map_err(|_| {
            RemoteError::Unavailable("the edge token is not valid ASCII metadata".to_owned())
        })?;
        self.edge_token = Some(value);
        Ok(self)
    }

    /// The deadline of each call (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The largest response accepted, in bytes (default 4 MiB).
    pub fn max_response_bytes(mut self, limit: usize) -> Self {
        self.client = self.client.max_decoding_message_size(limit);
        self
    }

    fn request<T>(&self, body: T, call: &RemoteCall) -> Result<tonic::Request<T>, RemoteError> {
        let mut request = tonic::Request::new(body);
        request.set_timeout(self.timeout);
        let metadata = request.metadata_mut();
        if let Some(edge) = &self.edge_token {
            metadata.insert(EDGE_TOKEN_HEADER, edge.clone());
        }
        if let Some(token) = &call.token {
            let value = format!("Bearer {token}").parse().map_err(|_| {
                RemoteError::Unavailable("the lane token is not valid metadata".to_owned())
            })?;
            metadata.insert("authorization", value);
        }
        if !call.context.is_empty() {
            metadata.insert_bin(
                CONTEXT_HEADER,
                BinaryMetadataValue::from_bytes(call.context.to_json().as_bytes()),
            );
        }
        Ok(request)
    }
}

fn error_id(metadata: &MetadataMap) -> Option<&str> {
    metadata.get(ERROR_ID_HEADER).and_then(|v| v.to_str().ok())
}

fn from_status(status: &Status, target: &str) -> RemoteError {
    let id = error_id(status.metadata());
    match (status.code(), id) {
        (_, Some("lanes-edge-unauthorized")) => RemoteError::EdgeUnauthorized,
        (_, Some("lanes-auth-unauthorized")) => RemoteError::LaneUnauthorized,
        (_, Some("lanes-not-exposed")) | (Code::PermissionDenied, _) => {
            RemoteError::NotExposed(target.to_owned())
        }
        (Code::Unauthenticated, _) => RemoteError::LaneUnauthorized,
        (Code::ResourceExhausted | Code::OutOfRange, _) => RemoteError::TooLarge,
        (Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled, _) => {
            RemoteError::Unavailable(status.message().to_owned())
        }
        (code, _) => RemoteError::Transport {
            code: format!("{code:?}"),
            message: status.message().to_owned(),
        },
    }
}

fn from_failure(failure: pb::Failure) -> RemoteError {
    match pb::FailureKind::try_from(failure.kind) {
        Ok(pb::FailureKind::Typed) => RemoteError::Typed(failure.data),
        Ok(pb::FailureKind::InvalidInput) => RemoteError::InvalidInput(failure.message),
        _ => RemoteError::Internal,
    }
}

#[async_trait]
impl Communicator for GrpcCommunicator {
    async fn run_task(&self, call: RemoteCall) -> Result<Bytes, RemoteError> {
        let body = pb::RunTaskRequest {
            task_id: call.target.clone(),
            input: call.payload.clone(),
        };
        let request = self.request(body, &call)?;
        let response = self
            .client
            .clone()
            .run_task(request)
            .await
            .map_err(|status| from_status(&status, &call.target))?
            .into_inner();
        match response.outcome {
            Some(pb::run_task_response::Outcome::Output(output)) => Ok(output),
            Some(pb::run_task_response::Outcome::Failure(failure)) => Err(from_failure(failure)),
            None => Err(RemoteError::Transport {
                code: "Ok".to_owned(),
                message: "empty response".to_owned(),
            }),
        }
    }

    async fn emit_event(&self, call: RemoteCall) -> Result<(), RemoteError> {
        let body = pb::EmitEventRequest {
            event_id: call.target.clone(),
            payload: call.payload.clone(),
        };
        let request = self.request(body, &call)?;
        let response = self
            .client
            .clone()
            .emit_event(request)
            .await
            .map_err(|status| from_status(&status, &call.target))?
            .into_inner();
        match response.failure {
            None => Ok(()),
            Some(failure) => Err(from_failure(failure)),
        }
    }
}
