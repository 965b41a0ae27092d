//! The outgoing side: [`GrpcTransport`] implements the sharding runtime's `Transport` trait over
//! gRPC, with one connection (and one batch stream) per peer runner.

mod connect;
mod pipeline;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use parking_lot::Mutex;
use prost::Message as _;
use shoal_protocol::proto::runner::v1 as pb;
use shoal_protocol::{ErrorCode, Failure, Notification, Reply, ReplyFrame, Request, RunnerAddress};
use shoal_sharding::{ReplyFrames, Transport, TransportError};
use tokio_util::sync::CancellationToken;

use crate::auth::AttachToken;
use crate::codec::encode::RequestFrame;
use crate::config::{SendMode, SocketConfig};
use crate::error::SocketError;
use connect::Connection;
use pipeline::Pipeline;

/// Reaches other runners over gRPC (TCP or Unix sockets).
#[derive(Debug)]
pub struct GrpcTransport {
    config: SocketConfig,
    token: AttachToken,
    peers: Mutex<HashMap<RunnerAddress, Arc<Peer>>>,
    started: Instant,
    closed: CancellationToken,
}

#[derive(Debug)]
struct Peer {
    address: RunnerAddress,
    /// Serializes connecting and opening the batch stream.
    connecting: tokio::sync::Mutex<()>,
    connection: Mutex<Option<Connection>>,
    /// The open batch stream (read without waiting by every request).
    pipeline: Mutex<Option<Arc<Pipeline>>>,
    /// Set by every use; the idle sweeper clears it.
    used: AtomicBool,
    /// When the sweeper last saw the peer in use (ms since the transport started).
    seen_ms: AtomicU64,
}

impl Peer {
    fn open_pipeline(&self) -> Option<Arc<Pipeline>> {
        self.pipeline
            .lock()
            .as_ref()
            .filter(|p| !p.is_closed())
            .cloned()
    }
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

impl GrpcTransport {
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
        let peer = {
            let mut peers = self.peers.lock();
            match peers.get(runner) {
                Some(peer) => peer.clone(),
                None => peers
                    .entry(runner.clone())
                    .or_insert_with(|| {
                        Arc::new(Peer {
                            address: runner.clone(),
                            connecting: tokio::sync::Mutex::new(()),
                            connection: Mutex::new(None),
                            pipeline: Mutex::new(None),
                            used: AtomicBool::new(true),
                            seen_ms: AtomicU64::new(self.now_ms()),
                        })
                    })
                    .clone(),
            }
        };
        peer.used.store(true, Ordering::Relaxed);
        peer
    }

    fn close_idle(&self) {
        let idle_ms = self.config.idle_timeout.as_millis() as u64;
        let now = self.now_ms();
        self.peers.lock().retain(|address, peer| {
            if peer.used.swap(false, Ordering::Relaxed) || Arc::strong_count(peer) > 1 {
                peer.seen_ms.store(now, Ordering::Relaxed);
                return true;
            }
            let keep = now.saturating_sub(peer.seen_ms.load(Ordering::Relaxed)) < idle_ms;
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

    /// The peer's connection, connecting first if needed.
    async fn connection(&self, peer: &Peer) -> Result<Connection, TransportError> {
        if let Some(connection) = peer.connection.lock().clone() {
            return Ok(connection);
        }
        let _connecting = peer.connecting.lock().await;
        self.connect_locked(peer).await
    }

    /// Connects unless another caller did meanwhile (`connecting` held).
    async fn connect_locked(&self, peer: &Peer) -> Result<Connection, TransportError> {
        if let Some(connection) = peer.connection.lock().clone() {
            return Ok(connection);
        }
        let connection = connect::connect(&peer.address, &self.config, self.token.clone())
            .await
            .map_err(|reason| unreachable(&peer.address, reason))?;
        *peer.connection.lock() = Some(connection.clone());
        Ok(connection)
    }

    /// The peer's batch stream: the open one without waiting, else a new one.
    async fn pipeline(&self, peer: &Peer) -> Result<Arc<Pipeline>, TransportError> {
        if let Some(pipeline) = peer.open_pipeline() {
            return Ok(pipeline);
        }
        // Opening is rare; boxed so that every request's future stays small.
        Box::pin(self.open_pipeline(peer)).await
    }

    async fn open_pipeline(&self, peer: &Peer) -> Result<Arc<Pipeline>, TransportError> {
        let _connecting = peer.connecting.lock().await;
        if let Some(pipeline) = peer.open_pipeline() {
            return Ok(pipeline);
        }
        let connection = self.connect_locked(peer).await?;
        let pipeline = Pipeline::open(connection, &peer.address, &self.config).await?;
        *peer.pipeline.lock() = Some(pipeline.clone());
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

    fn with_failures<T>(
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

    async fn send_unary(
        &self,
        peer: &Peer,
        request: &Request,
    ) -> Result<ReplyFrame, TransportError> {
        let runner = &peer.address;
        let mut client = self.connection(peer).await?.client;
        let reply = client
            .send(pb::Request::from(request))
            .await
            .map_err(|s| status_error(runner, s))?
            .into_inner();
        Reply::try_from(reply)
            .map(|r| r.frame)
            .map_err(|e| lost(runner, format!("malformed reply: {e}")))
    }

    async fn send_stream_unary(
        &self,
        peer: &Peer,
        request: &Request,
    ) -> Result<ReplyFrames, TransportError> {
        let runner = peer.address.clone();
        let mut client = self.connection(peer).await?.client;
        let replies = client
            .send_stream(pb::Request::from(request))
            .await
            .map_err(|s| status_error(&runner, s))?
            .into_inner();
        Ok(replies
            .map(move |item| match item {
                Ok(reply) => Reply::try_from(reply)
                    .map(|r| r.frame)
                    .map_err(|e| lost(&runner, format!("malformed reply: {e}"))),
                Err(status) => Err(status_error(&runner, status)),
            })
            .boxed())
    }

    async fn notify_unary(
        &self,
        peer: &Peer,
        wire: pb::Notification,
    ) -> Result<Option<Failure>, TransportError> {
        let runner = &peer.address;
        let mut client = self.connection(peer).await?.client;
        let ack = client
            .notify(wire)
            .await
            .map_err(|s| status_error(runner, s))?
            .into_inner();
        ack.failure
            .map(Failure::try_from)
            .transpose()
            .map_err(|e| lost(runner, format!("malformed reply: {e}")))
    }
}

#[async_trait]
impl Transport for GrpcTransport {
    async fn ping(&self, runner: &RunnerAddress) -> Result<(), TransportError> {
        let peer = self.peer(runner);
        let result = async {
            let mut client = self.connection(&peer).await?.client;
            client
                .ping(pb::PingRequest {})
                .await
                .map(|_| ())
                .map_err(|s| status_error(runner, s))
        }
        .await;
        self.with_failures(runner, result)
    }

    async fn send(
        &self,
        runner: &RunnerAddress,
        request: Request,
    ) -> Result<ReplyFrame, TransportError> {
        let frame = RequestFrame::new(&request, false);
        self.check_size(runner, frame.request_len())?;
        let peer = self.peer(runner);
        let result = match self.config.mode {
            SendMode::Batch => match self.pipeline(&peer).await {
                Ok(pipeline) => pipeline.request(&request, frame).await,
                Err(e) => Err(e),
            },
            SendMode::Unary => Box::pin(self.send_unary(&peer, &request)).await,
        };
        self.with_failures(runner, result)
    }

    async fn send_stream(
        &self,
        runner: &RunnerAddress,
        request: Request,
    ) -> Result<ReplyFrames, TransportError> {
        self.check_size(runner, RequestFrame::new(&request, true).request_len())?;
        let peer = self.peer(runner);
        let result = match self.config.mode {
            SendMode::Batch => match self.pipeline(&peer).await {
                Ok(pipeline) => pipeline.stream(&request).await,
                Err(e) => Err(e),
            },
            SendMode::Unary => Box::pin(self.send_stream_unary(&peer, &request)).await,
        };
        self.with_failures(runner, result)
    }

    async fn notify(
        &self,
        runner: &RunnerAddress,
        notification: Notification,
    ) -> Result<Option<Failure>, TransportError> {
        let wire = pb::Notification::from(&notification);
        self.check_size(runner, wire.encoded_len())?;
        let peer = self.peer(runner);
        let result = match self.config.mode {
            SendMode::Batch => match self.pipeline(&peer).await {
                Ok(pipeline) => pipeline.notify(wire).await,
                Err(e) => Err(e),
            },
            SendMode::Unary => Box::pin(self.notify_unary(&peer, wire)).await,
        };
        self.with_failures(runner, result)
    }

    fn runner_left(&self, runner: &RunnerAddress) {
        if self.peers.lock().remove(runner).is_some() {
            tracing::debug!(%runner, "closed the connection to a runner that left");
        }
    }

    fn close(&self) {
        GrpcTransport::close(self);
    }
}
