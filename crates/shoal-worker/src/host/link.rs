//! Reaching a worker: launch or connect, `Describe`, and the session handshake.

use std::sync::Arc;

use futures::StreamExt;
use shoal_launcher::{LaunchAndConnectError, connect_unix, launch_and_connect};
use shoal_protocol::proto::worker::v1 as pb;
use shoal_protocol::proto::worker::v1::worker_service_client::WorkerServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;

use super::Shared;
use super::session::{Outgoing, Session, status_text};
use crate::PROTOCOL_VERSION;
use crate::describe::{self, DescribeProblem, WorkerEntityType};
use crate::error::WorkerError;
use crate::spec::{WorkerSource, WorkerSpec};

/// The nonce of the heartbeat that opens every session.
const HANDSHAKE_NONCE: u64 = 1;

/// A worker reached and described, with its session open.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) session: Arc<Session>,
    pub(crate) types: Vec<WorkerEntityType>,
}

/// Launches (or connects to) the worker, describes it and opens session number `number`.
pub(crate) async fn link(
    shared: &Arc<Shared>,
    spec: &WorkerSpec,
    number: u64,
) -> Result<Link, WorkerError> {
    let worker = shared.name.to_string();
    let timeout = shared.options.connect_timeout;
    let channel = match &spec.source {
        // The launch has its own deadlines (lock wait, worker startup).
        WorkerSource::Launch(config) => match launch_and_connect(config).await {
            Ok((launched, channel)) => {
                tracing::debug!(socket = %launched.socket.display(), outcome = ?launched.outcome, "worker launched");
                channel
            }
            Err(LaunchAndConnectError::Launch(source)) => {
                return Err(WorkerError::Launch { worker, source });
            }
            Err(LaunchAndConnectError::Connect { socket, source }) => {
                return Err(WorkerError::Connect {
                    worker,
                    socket,
                    source,
                });
            }
        },
        WorkerSource::Socket(path) => match tokio::time::timeout(timeout, connect_unix(path)).await
        {
            Ok(Ok(channel)) => channel,
            Ok(Err(source)) => {
                return Err(WorkerError::Connect {
                    worker,
                    socket: path.clone(),
                    source,
                });
            }
            Err(_) => return Err(WorkerError::Timeout { worker, timeout }),
        },
    };
    match tokio::time::timeout(timeout, describe_and_open(shared, channel, number)).await {
        Ok(result) => result,
        Err(_) => Err(WorkerError::Timeout { worker, timeout }),
    }
}

async fn describe_and_open(
    shared: &Arc<Shared>,
    channel: Channel,
    number: u64,
) -> Result<Link, WorkerError> {
    let worker = shared.name.to_string();
    let size = shared.options.max_message_size;
    let mut client = WorkerServiceClient::new(channel)
        .max_decoding_message_size(size)
        .max_encoding_message_size(size);
    let described = client
        .describe(pb::DescribeRequest {
            protocol_version: PROTOCOL_VERSION,
        })
        .await
        .map_err(|status| WorkerError::Describe {
            worker: worker.clone(),
            message: status_text(&status),
        })?
        .into_inner();
    let types = describe::check(&described).map_err(|problem| match problem {
        DescribeProblem::Version(version) => WorkerError::ProtocolVersion {
            worker: worker.clone(),
            version,
            expected: PROTOCOL_VERSION,
        },
        DescribeProblem::Invalid(detail) => WorkerError::InvalidDescription {
            worker: worker.clone(),
            detail,
        },
    })?;
    let pid = (described.pid != 0).then_some(described.pid);

    // The session opens with `SessionStart` and a heartbeat; the worker's answer to the heartbeat
    // proves it serves the session (and carries the response headers, which some gRPC servers
    // only send with the first message).
    let (tx, rx) = mpsc::unbounded_channel();
    let options = &shared.options;
    let start = pb::RunnerMessage {
        kind: Some(pb::runner_message::Kind::Start(pb::SessionStart {
            protocol_version: PROTOCOL_VERSION,
            runner_address: String::new(),
            heartbeat_interval_ms: millis(options.heartbeat_interval),
            heartbeat_timeout_ms: millis(options.heartbeat_timeout),
        })),
    };
    let hello = pb::RunnerMessage {
        kind: Some(pb::runner_message::Kind::Heartbeat(pb::Heartbeat {
            nonce: HANDSHAKE_NONCE,
            ack: false,
        })),
    };
    let refused = |message: String| WorkerError::Session {
        worker: worker.clone(),
        message,
    };
    if tx.send(Outgoing::message(start)).is_err() || tx.send(Outgoing::message(hello)).is_err() {
        return Err(refused("the session closed before it opened".to_owned()));
    }
    let mut inbound = client
        // A KV answer's slot is given back as the transport takes the answer.
        .session(UnboundedReceiverStream::new(rx).map(Outgoing::into_message))
        .await
        .map_err(|status| refused(status_text(&status)))?
        .into_inner();
    match inbound.message().await {
        Ok(Some(pb::WorkerMessage {
            kind: Some(pb::worker_message::Kind::Heartbeat(beat)),
        })) if beat.ack && beat.nonce == HANDSHAKE_NONCE => {}
        Ok(Some(other)) => {
            return Err(refused(format!(
                "its first session message must answer the opening heartbeat, got {other:?}"
            )));
        }
        Ok(None) => return Err(refused("it closed the session at once".to_owned())),
        Err(status) => return Err(refused(status_text(&status))),
    }
    let session = Arc::new(Session::new(
        number,
        pid,
        shared.clone(),
        tx,
        HANDSHAKE_NONCE,
    ));
    tokio::spawn(session.clone().read(inbound));
    tokio::spawn(
        session
            .clone()
            .beat(options.heartbeat_interval, options.heartbeat_timeout),
    );
    Ok(Link { session, types })
}

fn millis(duration: std::time::Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}
