//! An in-process transport: several runtimes in one process reach each other directly.
//!
//! Requests still cross a real serialization boundary — every request and reply is encoded to
//! the `shoal.runner.v1` protobuf wire form and decoded again — so what works here works over
//! sockets. Runners can be disconnected (connections refused) or frozen (requests and replies
//! hang, as with a process stopped by SIGSTOP) to simulate a server that stops answering.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use parking_lot::RwLock;
use prost::Message as _;
use shoal_protocol::proto::runner::v1 as pb;
use shoal_protocol::{Failure, Notification, Reply, ReplyFrame, Request, RunnerAddress, Snowflake};

use crate::inbound::{Inbound, InboundHandler};
use crate::network::{Network, NetworkError};
use crate::router::{Router, WeakRouter};
use crate::serving::Serving;
use crate::sharding::Sharding;
use crate::transport::{ReplyFrames, Transport, TransportError};

/// Connects the runtimes of one process. Give each runtime an endpoint of it
/// ([`InProcessNetwork::endpoint`], through [`crate::ShardingBuilder::network`]; or
/// [`crate::ShardingBuilder::in_process`] with [`crate::ShardingBuilder::runner`]).
#[derive(Debug, Default)]
pub struct InProcessNetwork {
    runners: RwLock<HashMap<RunnerAddress, WeakRouter>>,
    disconnected: RwLock<HashSet<RunnerAddress>>,
    frozen: RwLock<HashSet<RunnerAddress>>,
    thawed: tokio::sync::Notify,
}

impl InProcessNetwork {
    /// An empty network.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The network as the runner at `address` joins it: give it to
    /// [`crate::ShardingBuilder::network`].
    pub fn endpoint(self: &Arc<Self>, address: RunnerAddress) -> InProcessEndpoint {
        InProcessEndpoint {
            network: self.clone(),
            address: Some(address),
        }
    }

    /// The network as a client-only process joins it (it sends, and serves nothing).
    pub fn client_endpoint(self: &Arc<Self>) -> InProcessEndpoint {
        InProcessEndpoint {
            network: self.clone(),
            address: None,
        }
    }

    pub(crate) fn attach(&self, address: RunnerAddress, router: &Router) {
        self.runners.write().insert(address, router.downgrade());
    }

    pub(crate) fn detach(&self, address: &RunnerAddress) {
        self.runners.write().remove(address);
    }

    /// Makes `runner` unreachable (its server stops answering) without stopping it.
    pub fn disconnect(&self, runner: &RunnerAddress) {
        self.disconnected.write().insert(runner.clone());
    }

    /// Undoes [`InProcessNetwork::disconnect`].
    pub fn reconnect(&self, runner: &RunnerAddress) {
        self.disconnected.write().remove(runner);
    }

    /// Freezes `runner`'s server: requests to it (pings included) and its replies wait until
    /// [`InProcessNetwork::thaw`], as with a process stopped by SIGSTOP. The runtime itself runs
    /// on; freeze its storage too to stop its lease renewals.
    pub fn freeze(&self, runner: &RunnerAddress) {
        self.frozen.write().insert(runner.clone());
    }

    /// Undoes [`InProcessNetwork::freeze`]: what waited goes on.
    pub fn thaw(&self, runner: &RunnerAddress) {
        self.frozen.write().remove(runner);
        self.thawed.notify_waiters();
    }

    /// Waits while `runner` is frozen.
    async fn while_frozen(&self, runner: &RunnerAddress) {
        loop {
            let thawed = self.thawed.notified();
            tokio::pin!(thawed);
            thawed.as_mut().enable();
            if !self.frozen.read().contains(runner) {
                return;
            }
            thawed.await;
        }
    }

    fn target(&self, runner: &RunnerAddress) -> Result<Inbound, TransportError> {
        let unreachable = |reason: &str| TransportError::Unreachable {
            runner: runner.clone(),
            reason: reason.to_owned(),
        };
        if self.disconnected.read().contains(runner) {
            return Err(unreachable("connection refused (disconnected)"));
        }
        let router = self
            .runners
            .read()
            .get(runner)
            .and_then(WeakRouter::upgrade)
            .ok_or_else(|| unreachable("connection refused (no such runner)"))?;
        Ok(Inbound::new(router))
    }
}

/// One runtime's place on an [`InProcessNetwork`] (see [`InProcessNetwork::endpoint`]).
#[derive(Debug, Clone)]
pub struct InProcessEndpoint {
    network: Arc<InProcessNetwork>,
    address: Option<RunnerAddress>,
}

impl Network for InProcessEndpoint {
    fn transport(&self) -> Arc<dyn Transport> {
        self.network.clone()
    }

    fn address(&self) -> Option<RunnerAddress> {
        self.address.clone()
    }

    fn serve(self: Box<Self>, handler: Sharding) -> Result<Box<dyn Serving>, NetworkError> {
        let address = self
            .address
            .clone()
            .ok_or("a client-only endpoint serves nothing")?;
        self.network.attach(address.clone(), handler.router());
        Ok(Box::new(Attached {
            network: self.network,
            address,
        }))
    }
}

/// A runtime reachable on an in-process network until it stops.
#[derive(Debug)]
struct Attached {
    network: Arc<InProcessNetwork>,
    address: RunnerAddress,
}

#[async_trait]
impl Serving for Attached {
    async fn shutdown(self: Box<Self>) {
        self.network.detach(&self.address);
    }

    fn abort(self: Box<Self>) {
        self.network.detach(&self.address);
    }
}

fn wire_error(runner: &RunnerAddress, e: impl std::fmt::Display) -> TransportError {
    TransportError::Lost {
        runner: runner.clone(),
        reason: format!("bad wire data: {e}"),
    }
}

/// Encodes and decodes a request as the socket transport would.
fn through_wire(runner: &RunnerAddress, request: &Request) -> Result<Request, TransportError> {
    let bytes = pb::Request::from(request).encode_to_vec();
    let wire = pb::Request::decode(&bytes[..]).map_err(|e| wire_error(runner, e))?;
    Request::try_from(wire).map_err(|e| wire_error(runner, e))
}

fn frame_through_wire(
    runner: &RunnerAddress,
    id: Snowflake,
    frame: ReplyFrame,
) -> Result<ReplyFrame, TransportError> {
    let bytes = pb::Reply::from(Reply {
        request_id: id,
        frame,
    })
    .encode_to_vec();
    let wire = pb::Reply::decode(&bytes[..]).map_err(|e| wire_error(runner, e))?;
    Reply::try_from(wire)
        .map(|r| r.frame)
        .map_err(|e| wire_error(runner, e))
}

#[async_trait]
impl Transport for InProcessNetwork {
    async fn ping(&self, runner: &RunnerAddress) -> Result<(), TransportError> {
        self.while_frozen(runner).await;
        self.target(runner).map(|_| ())
    }

    async fn send(
        &self,
        runner: &RunnerAddress,
        request: Request,
    ) -> Result<ReplyFrame, TransportError> {
        self.while_frozen(runner).await;
        let target = self.target(runner)?;
        let id = request.id;
        let request = through_wire(runner, &request)?;
        let frame = target.handle_request(request).await;
        self.while_frozen(runner).await;
        // A runner disconnected meanwhile never delivers its reply.
        if self.disconnected.read().contains(runner) {
            return Err(TransportError::Lost {
                runner: runner.clone(),
                reason: "connection lost while waiting for the reply".to_owned(),
            });
        }
        frame_through_wire(runner, id, frame)
    }

    async fn send_stream(
        &self,
        runner: &RunnerAddress,
        request: Request,
    ) -> Result<ReplyFrames, TransportError> {
        self.while_frozen(runner).await;
        let target = self.target(runner)?;
        let id = request.id;
        let request = through_wire(runner, &request)?;
        let runner = runner.clone();
        Ok(target
            .handle_stream(request)
            .map(move |frame| frame_through_wire(&runner, id, frame))
            .boxed())
    }

    async fn notify(
        &self,
        runner: &RunnerAddress,
        notification: Notification,
    ) -> Result<Option<Failure>, TransportError> {
        self.while_frozen(runner).await;
        let target = self.target(runner)?;
        let bytes = pb::Notification::from(&notification).encode_to_vec();
        let wire = pb::Notification::decode(&bytes[..]).map_err(|e| wire_error(runner, e))?;
        let notification = Notification::try_from(wire).map_err(|e| wire_error(runner, e))?;
        Ok(target.handle_notification(notification).await.err())
    }
}
