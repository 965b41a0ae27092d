//! The RPC lane exposure: a gRPC server that runs the tasks and events of the lanes this profile
//! serves, for the processes that do not serve them.

use std::net::SocketAddr;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use shoal_protocol::proto::lanes::v1 as pb;
use shoal_protocol::proto::lanes::v1::lane_service_server::LaneService;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::auth::TargetKind;
use crate::context::CallContext;
use crate::runtime::{Inner, ServeFailure};

/// Metadata key of the edge token.
pub const EDGE_TOKEN_HEADER: &str = "x-shoal-edge-token";
/// Metadata key (binary) of the forwarded context, a JSON object of strings.
pub const CONTEXT_HEADER: &str = "x-shoal-context-bin";
/// Metadata key carrying a refusal's stable error id.
pub const ERROR_ID_HEADER: &str = "x-shoal-error";

/// Who may call the exposure at all (before any lane token is looked at).
#[derive(Clone)]
pub enum EdgeAuth {
    /// Callers must present one of these tokens in `x-shoal-edge-token` (compared in constant
    /// time, over SHA-256 digests so the length leaks nothing either).
    Tokens(Vec<String>),
    /// No edge token: only the lane tokens protect the exposure. Must be chosen explicitly.
    AllowAnonymous,
}

impl std::fmt::Debug for EdgeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EdgeAuth::Tokens(tokens) => write!(f, "Tokens({} redacted)", tokens.len()),
            EdgeAuth::AllowAnonymous => f.write_str("AllowAnonymous"),
        }
    }
}

/// Settings of the RPC lane exposure server.
///
/// ```
/// use shoal_lanes::{EdgeAuth, ExposureConfig};
///
/// let exposure = ExposureConfig::new("127.0.0.1:0".parse()?, EdgeAuth::Tokens(vec!["s3cret".into()]))
///     .max_request_bytes(1 << 20)
///     .replay_protection(true);
/// # let _ = exposure;
/// # Ok::<(), std::net::AddrParseError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ExposureConfig {
    pub(crate) listen: SocketAddr,
    pub(crate) edge: EdgeAuth,
    pub(crate) max_request_bytes: usize,
    pub(crate) replay_protection: bool,
    pub(crate) replay_capacity: usize,
}

impl ExposureConfig {
    /// Serve on `listen` (port 0 picks a free port; see [`crate::Lanes::exposure_addr`]).
    pub fn new(listen: SocketAddr, edge: EdgeAuth) -> Self {
        ExposureConfig {
            listen,
            edge,
            max_request_bytes: 2 * 1024 * 1024,
            replay_protection: false,
            replay_capacity: crate::auth::DEFAULT_REPLAY_CAPACITY,
        }
    }

    /// The largest request accepted, in bytes (default 2 MiB); larger ones are refused before
    /// they are decoded.
    pub fn max_request_bytes(mut self, limit: usize) -> Self {
        self.max_request_bytes = limit;
        self
    }

    /// Refuse a lane token whose `jti` was already used within its lifetime (per process).
    pub fn replay_protection(mut self, enabled: bool) -> Self {
        self.replay_protection = enabled;
        self
    }

    /// How many unexpired token ids replay protection remembers (default
    /// [`crate::DEFAULT_REPLAY_CAPACITY`]; at least 1). A token id is remembered until its `exp`
    /// plus the lane's clock skew. When the guard is full, a call with a new token is refused
    /// with `lanes-replay-guard-full` (gRPC `UNAVAILABLE`; the call did not run) until ids expire:
    /// forgetting an unexpired id instead would allow that token to be replayed. Size it for the
    /// peak call rate times the token window (TTL + clock skew, 90 s by default).
    pub fn replay_capacity(mut self, capacity: usize) -> Self {
        self.replay_capacity = capacity;
        self
    }
}

fn refusal(code: tonic::Code, id: &'static str, message: &str) -> Status {
    let mut metadata = MetadataMap::new();
    metadata.insert(
        ERROR_ID_HEADER,
        tonic::metadata::AsciiMetadataValue::from_static(id),
    );
    Status::with_metadata(code, message, metadata)
}

/// The `LaneService` implementation.
#[derive(Debug)]
pub(crate) struct ExposureService {
    pub(crate) inner: Arc<Inner>,
    pub(crate) edge_digests: Option<Vec<[u8; 32]>>,
}

impl ExposureService {
    pub(crate) fn new(inner: Arc<Inner>, edge: &EdgeAuth) -> Self {
        let edge_digests = match edge {
            EdgeAuth::Tokens(tokens) => Some(
                tokens
                    .iter()
                    .map(|t| Sha256::digest(t.as_bytes()).into())
                    .collect(),
            ),
            EdgeAuth::AllowAnonymous => None,
        };
        ExposureService {
            inner,
            edge_digests,
        }
    }

    fn check_edge(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let Some(digests) = &self.edge_digests else {
            return Ok(());
        };
        let presented = metadata
            .get(EDGE_TOKEN_HEADER)
            .map(|v| Sha256::digest(v.as_bytes()));
        let ok = presented.is_some_and(|p| {
            // Compare against every configured token, without stopping early.
            digests.iter().fold(false, |acc, d| {
                acc | crate::auth::claims_constant_time_eq(d, &p)
            })
        });
        if ok {
            Ok(())
        } else {
            Err(refusal(
                tonic::Code::Unauthenticated,
                "lanes-edge-unauthorized",
                "unauthorized",
            ))
        }
    }

    fn lane_token(metadata: &MetadataMap) -> Option<String> {
        let value = metadata.get("authorization")?.to_str().ok()?.trim();
        let token = match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => value,
        };
        (!token.is_empty()).then(|| token.to_owned())
    }

    fn context(metadata: &MetadataMap) -> Result<CallContext, Status> {
        match metadata.get_bin(CONTEXT_HEADER) {
            None => Ok(CallContext::new()),
            Some(value) => value
                .to_bytes()
                .ok()
                .and_then(|b| {
                    std::str::from_utf8(&b)
                        .ok()
                        .and_then(CallContext::from_json)
                })
                .ok_or_else(|| {
                    refusal(
                        tonic::Code::InvalidArgument,
                        "lanes-invalid-context",
                        "the context metadata is not a JSON object of strings",
                    )
                }),
        }
    }

    fn to_status(failure: ServeFailure, target: &str) -> Result<pb::Failure, Status> {
        match failure {
            ServeFailure::NotExposed => Err(refusal(
                tonic::Code::PermissionDenied,
                "lanes-not-exposed",
                &format!("\"{target}\" is not exposed"),
            )),
            ServeFailure::Unauthorized => Err(refusal(
                tonic::Code::Unauthenticated,
                "lanes-auth-unauthorized",
                "unauthorized",
            )),
            ServeFailure::ReplayGuardFull => Err(refusal(
                tonic::Code::Unavailable,
                "lanes-replay-guard-full",
                "the replay guard is full; the call did not run, retry later with a fresh token",
            )),
            ServeFailure::Unavailable => Err(refusal(
                tonic::Code::Unavailable,
                "lanes-shutting-down",
                "shutting down",
            )),
            ServeFailure::Typed(data) => Ok(pb::Failure {
                kind: pb::FailureKind::Typed.into(),
                message: "task error".to_owned(),
                data,
            }),
            ServeFailure::InvalidInput => Ok(pb::Failure {
                kind: pb::FailureKind::InvalidInput.into(),
                message: format!("the input does not decode as \"{target}\"'s type"),
                data: Default::default(),
            }),
            ServeFailure::Internal => Ok(pb::Failure {
                kind: pb::FailureKind::Internal.into(),
                message: "internal error".to_owned(),
                data: Default::default(),
            }),
        }
    }
}

#[tonic::async_trait]
impl LaneService for ExposureService {
    async fn run_task(
        &self,
        request: Request<pb::RunTaskRequest>,
    ) -> Result<Response<pb::RunTaskResponse>, Status> {
        self.check_edge(request.metadata())?;
        let token = Self::lane_token(request.metadata());
        let context = Self::context(request.metadata())?;
        let body = request.into_inner();
        let outcome = match self
            .inner
            .serve(TargetKind::Task, &body.task_id, body.input, token, context)
            .await
        {
            Ok(output) => pb::run_task_response::Outcome::Output(output),
            Err(failure) => {
                pb::run_task_response::Outcome::Failure(Self::to_status(failure, &body.task_id)?)
            }
        };
        Ok(Response::new(pb::RunTaskResponse {
            outcome: Some(outcome),
        }))
    }

    async fn emit_event(
        &self,
        request: Request<pb::EmitEventRequest>,
    ) -> Result<Response<pb::EmitEventResponse>, Status> {
        self.check_edge(request.metadata())?;
        let token = Self::lane_token(request.metadata());
        let context = Self::context(request.metadata())?;
        let body = request.into_inner();
        let failure = match self
            .inner
            .serve(
                TargetKind::Event,
                &body.event_id,
                body.payload,
                token,
                context,
            )
            .await
        {
            Ok(_) => None,
            Err(failure) => Some(Self::to_status(failure, &body.event_id)?),
        };
        Ok(Response::new(pb::EmitEventResponse { failure }))
    }
}
