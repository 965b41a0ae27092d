//! The outgoing side: [`GrpcRunners`] implements the sharding runtime's `Runners` trait over
//! gRPC, with one connection (and one batch stream) per peer runner.

mod connect;
mod pipeline;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use parking_lot::Mutex;
use prost::Message as _;
use shoal_protocol::proto::runner::v1 as pb;
use shoal_protocol::{ErrorCode, Failure, Notification, Reply, ReplyFrame, Request, RunnerAddress};
use shoal_sharding::{ReplyFrames, Runners, TransportError};
use tokio_util::sync::CancellationToken;

use crate::auth::AttachToken;
use crate::config::{SendMode, SocketConfig};
use crate::error::SocketError;
use connect::Client;
use pipeline::Pipeline;

/// Reaches other runners over gRPC (TCP or Unix sockets).
#[derive(Debug)]
pub struct GrpcRunners {
    config: SocketConfig,
    token: AttachToken,
    peers: Mutex<HashMap<RunnerAddress, Arc<Peer>>>,
    started: Instant,
    closed: CancellationToken,
}

#[derive(Debug)]
struct Peer {
    address: RunnerAddress,
    client: tokio::sync::Mutex<Option<Client>>,
    pipeline: tokio::sync::Mutex<Option<Arc<Pipeline>>>,
    last_used: AtomicU64,
}

fn unreachable(runner: &RunnerAddress, reason: impl Into<String>) -> TransportError {
    TransportError::Unreachable {
        runner: runner.clone(),
        reason: reason.into(),
    }
}

fn lost(runner: &RunnerAddress, reason: impl Into<String>) -> TransportError {
    TransportError::Lost {
        runner: runner.clone(),
        reason: reason.into(),
    }
}

/// Maps a gRPC status of a call that was sent.
fn status_error(runner: &RunnerAddress, status: tonic::Status) -> TransportError {
    match status.code() {
        tonic::Code::Unauthenticated => TransportError::Refused {
            runner: runner.clone(),
            failure: Box::new(Failure::new(ErrorCode::Unauthenticated, status.message())),
        },
        tonic::Code::ResourceExhausted | tonic::Code::OutOfRange => TransportError::Refused {
            runner: runner.clone(),
            failure: Box::new(Failure::new(ErrorCode::MessageTooLarge, status.message())),
        },
        _ => lost(runner, format!("{}: {}", status.code(), status.message())),
    }
}

impl GrpcRunners {
    /// A transport with `config`. Must be called inside a tokio runtime (it starts a task that
    /// closes idle connections).
    pub fn new(config: SocketConfig) -> Result<Arc<Self>, SocketError> {
        let token = AttachToken::new(config.auth_token.as_deref()).map_err(|reason| {
            SocketError::InvalidAddress {
                address: "auth_token".to_owned(),
                reason,
            }
        })?;
        let runners = Arc::new(Self {
            config,
            token,
            peers: Mutex::new(HashMap::new()),
            started: Instant::now(),
            closed: CancellationToken::new(),
        });
        let weak = Arc::downgrade(&runners);
        let closed = runners.closed.clone();
        let period = (runners.config.idle_timeout / 4).max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = closed.cancelled() => return,
                    _ = tokio::time::sleep(period) => {}
                }
                let Some(runners) = weak.upgrade() else {
                    return;
                };
                runners.close_idle();
            }
        });
        Ok(runners)
    }

    /// Closes every connection and stops the idle sweeper.
    pub fn close(&self) {
        self.closed.cancel();
        self.peers.lock().clear();
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn peer(&self, runner: &RunnerAddress) -> Arc<Peer> {
        let peer = self
            .peers
            .lock()
            .entry(runner.clone())
            .or_insert_with(|| {
                Arc::new(Peer {
                    address: runner.clone(),
                    client: tokio::sync::Mutex::new(None),
                    pipeline: tokio::sync::Mutex::new(None),
                    last_used: AtomicU64::new(0),
                })
            })
            .clone();
        peer.last_used.store(self.now_ms(), Ordering::Relaxed);
        peer
    }

    fn close_idle(&self) {
        let idle_ms = self.config.idle_timeout.as_millis() as u64;
        let now = self.now_ms();
        self.peers.lock().retain(|address, peer| {
            let keep = now.saturating_sub(peer.last_used.load(Ordering::Relaxed)) < idle_ms
                || Arc::strong_count(peer) > 1;
            if !keep {
                tracing::debug!(runner = %address, "closing idle connection");
            }
            keep
        });
    }

    /// Drops a peer's connection after a transport failure, so the next call reconnects.
    fn forget(&self, runner: &RunnerAddress) {
        self.peers.lock().remove(runner);
    }

    async fn client(&self, peer: &Peer) -> Result<Client, TransportError> {
        let mut slot = peer.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let client = connect::connect(&peer.address, &self.config, self.token.clone())
            .await
            .map_err(|reason| unreachable(&peer.address, reason))?;
        *slot = Some(client.clone());
        Ok(client)
    }

    async fn pipeline(&self, peer: &Peer) -> Result<Arc<Pipeline>, TransportError> {
        let mut slot = peer.pipeline.lock().await;
        if let Some(pipeline) = slot.as_ref()
            && !pipeline.is_closed()
        {
            return Ok(pipeline.clone());
        }
        let client = self.client(peer).await?;
        let pipeline = Pipeline::open(client, &peer.address, &self.config).await?;
        *slot = Some(pipeline.clone());
        Ok(pipeline)
    }

    fn check_size(&self, runner: &RunnerAddress, size: usize) -> Result<(), TransportError> {
        if size > self.config.max_message_size {
            return Err(TransportError::Refused {
                runner: runner.clone(),
                failure: Box::new(Failure::new(
                    ErrorCode::MessageTooLarge,
                    format!(
                        "the request is {size} bytes encoded; the limit is {} bytes \
                         (max_message_size)",
                        self.config.max_message_size
                    ),
                )),
            });
        }
        Ok(())
    }

    async fn with_failures<T>(
        &self,
        runner: &RunnerAddress,
        result: Result<T, TransportError>,
    ) -> Result<T, TransportError> {
        if matches!(
            result,
            Err(TransportError::Unreachable { .. } | TransportError::Lost { .. })
        ) {
            self.forget(runner);
        }
        result
    }
}

#[async_trait]
impl Runners for GrpcRunners {
    async fn ping(&self, runner: &RunnerAddress) -> Result<(), TransportError> {
        let peer = self.peer(runner);
        let result = async {
            let mut client = self.client(&peer).await?;
            client
                .ping(pb::PingRequest {})
                .await
                .map(|_| ())
                .map_err(|s| status_error(runner, s))
        }
        .await;
        self.with_failures(runner, result).await
    }

    async fn send(
        &self,
        runner: &RunnerAddress,
        request: Request,
    ) -> Result<ReplyFrame, TransportError> {
        let wire = pb::Request::from(&request);
        let size = wire.encoded_len();
        self.check_size(runner, size)?;
        let peer = self.peer(runner);
        let result = match self.config.mode {
            SendMode::Batch => match self.pipeline(&peer).await {
                Ok(pipeline) => pipeline.request(wire, size).await,
                Err(e) => Err(e),
            },
            SendMode::Unary => {
                async {
                    let mut client = self.client(&peer).await?;
                    let reply = client
                        .send(wire)
                        .await
                        .map_err(|s| status_error(runner, s))?
                        .into_inner();
                    Reply::try_from(reply)
                        .map(|r| r.frame)
                        .map_err(|e| lost(runner, format!("malformed reply: {e}")))
                }
                .await
            }
        };
        self.with_failures(runner, result).await
    }

    async fn send_stream(
        &self,
        runner: &RunnerAddress,
        request: Request,
    ) -> Result<ReplyFrames, TransportError> {
        let wire = pb::Request::from(&request);
        let size = wire.encoded_len();
        self.check_size(runner, size)?;
        let peer = self.peer(runner);
        let result = match self.config.mode {
            SendMode::Batch => match self.pipeline(&peer).await {
                Ok(pipeline) => pipeline.stream(wire, size).await,
                Err(e) => Err(e),
            },
            SendMode::Unary => {
                async {
                    let mut client = self.client(&peer).await?;
                    let replies = client
                        .send_stream(wire)
                        .await
                        .map_err(|s| status_error(runner, s))?
                        .into_inner();
                    let runner = runner.clone();
                    let frames: ReplyFrames = replies
                        .map(move |item| match item {
                            Ok(reply) => Reply::try_from(reply)
                                .map(|r| r.frame)
                                .map_err(|e| lost(&runner, format!("malformed reply: {e}"))),
                            Err(status) => Err(status_error(&runner, status)),
                        })
                        .boxed();
                    Ok(frames)
                }
                .await
            }
        };
        self.with_failures(runner, result).await
    }

    async fn notify(
        &self,
        runner: &RunnerAddress,
        notification: Notification,
    ) -> Result<Option<Failure>, TransportError> {
        let wire = pb::Notification::from(&notification);
        let size = wire.encoded_len();
        self.check_size(runner, size)?;
        let peer = self.peer(runner);
        let result = match self.config.mode {
            SendMode::Batch => match self.pipeline(&peer).await {
                Ok(pipeline) => pipeline.notify(wire, size).await,
                Err(e) => Err(e),
            },
            SendMode::Unary => {
                async {
                    let mut client = self.client(&peer).await?;
                    let ack = client
                        .notify(wire)
                        .await
                        .map_err(|s| status_error(runner, s))?
                        .into_inner();
                    match ack.failure.map(Failure::try_from).transpose() {
                        Ok(failure) => Ok(failure),
                        Err(e) => Err(lost(runner, format!("malformed reply: {e}"))),
                    }
                }
                .await
            }
        };
        self.with_failures(runner, result).await
    }

    fn runner_left(&self, runner: &RunnerAddress) {
        if self.peers.lock().remove(runner).is_some() {
            tracing::debug!(%runner, "closed the connection to a runner that left");
        }
    }
}
