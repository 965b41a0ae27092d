//! Runner processes: a full runner that serves the runner RPCs and holds shards, or a client-only
//! process that only sends.

use std::sync::Arc;

use shoal_sharding::{Sharding, ShardingBuilder, ShardingConfig};
use shoal_storage::RunnerStorage;

use crate::config::SocketConfig;
use crate::error::SocketError;
use crate::listen::ListenAddress;
use crate::network::{BindOptions, SocketNetwork};
use crate::server::Bound;

/// A sharding runtime connected to other runners over sockets: a shorthand for
/// [`Sharding::builder`] with a [`SocketNetwork`].
#[derive(Debug)]
pub struct SocketRunner {
    sharding: Sharding,
    bound: Option<Bound>,
}

/// Options of [`SocketRunner::serve`].
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where to listen: `host:port` (port 0 for any) or `unix:/path`.
    pub listen: ListenAddress,
    /// The TCP host other runners use to reach this one (default: the listen host, which must
    /// then be reachable, not `0.0.0.0`).
    pub advertise_host: Option<String>,
    /// The TCP port other runners use to reach this one (default: the port bound). Set it when
    /// the runner is reached through a port mapping or a proxy (a container's published port, a
    /// load balancer, the fault harness's partition proxies).
    pub advertise_port: Option<u16>,
    /// Sharding settings.
    pub sharding: ShardingConfig,
    /// Transport settings.
    pub socket: SocketConfig,
}

impl SocketRunner {
    /// Starts a full runner: binds the socket, registers in `storage`, takes its share of shards
    /// and serves the runner RPCs. `configure` registers entity types (and may adjust the
    /// builder) before the runner takes shards. Health of other runners is checked by pinging
    /// them over this transport. Listening on a TCP address other hosts can reach (not loopback)
    /// needs a token or mutual TLS in `options.socket`, or `insecure_transport`
    /// ([`SocketError::InsecureTransport`] otherwise).
    pub async fn serve(
        options: ServeOptions,
        storage: Arc<dyn RunnerStorage>,
        configure: impl FnOnce(ShardingBuilder) -> ShardingBuilder,
    ) -> Result<Self, SocketError> {
        let network = SocketNetwork::bind(BindOptions {
            listen: options.listen,
            advertise_host: options.advertise_host,
            advertise_port: options.advertise_port,
            socket: options.socket,
        })
        .await?;
        let bound = network.bound();
        let builder = Sharding::builder(options.sharding)
            .storage(storage)
            .network(network);
        let sharding = configure(builder).start().await?;
        Ok(Self { sharding, bound })
    }

    /// Starts a client-only process: it reads the cluster from `storage` and sends to runners,
    /// but holds no shards and starts no server.
    pub async fn client_only(
        sharding: ShardingConfig,
        socket: SocketConfig,
        storage: Arc<dyn RunnerStorage>,
    ) -> Result<Self, SocketError> {
        Self::client_only_with(sharding, socket, storage, |builder| builder).await
    }

    /// [`SocketRunner::client_only`] with a hook to configure the runtime before it starts (for
    /// example to give it message storage, so it can send persisted messages).
    pub async fn client_only_with(
        sharding: ShardingConfig,
        socket: SocketConfig,
        storage: Arc<dyn RunnerStorage>,
        configure: impl FnOnce(ShardingBuilder) -> ShardingBuilder,
    ) -> Result<Self, SocketError> {
        let builder = Sharding::builder(sharding)
            .storage(storage)
            .network(SocketNetwork::client_only(socket)?);
        let sharding = configure(builder).start().await?;
        Ok(Self {
            sharding,
            bound: None,
        })
    }

    /// The sharding runtime (register entities, make clients).
    pub fn sharding(&self) -> &Sharding {
        &self.sharding
    }

    /// Where the server listens (`None` for a client-only process).
    pub fn bound(&self) -> Option<&Bound> {
        self.bound.as_ref()
    }

    /// Graceful stop: hands shards off (see [`Sharding::shutdown`]), then stops the server and
    /// closes connections.
    pub async fn shutdown(self) {
        self.sharding.shutdown().await;
    }

    /// Stops at once without handing anything off, as a crash would (for fault tests).
    pub fn crash(self) {
        self.sharding.crash();
    }
}
