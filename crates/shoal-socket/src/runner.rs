//! Runner processes: a full runner that serves the runner RPCs and holds shards, or a client-only
//! process that only sends.

use std::sync::Arc;
use std::time::Duration;

use shoal_sharding::{PingHealth, Sharding, ShardingBuilder, ShardingConfig};
use shoal_storage::RunnerStorage;

use crate::client::GrpcTransport;
use crate::config::SocketConfig;
use crate::error::SocketError;
use crate::listen::ListenAddress;
use crate::server::{Bound, RunnerServiceImpl, ServerHandle};

/// A sharding runtime connected to other runners over sockets.
#[derive(Debug)]
pub struct SocketRunner {
    sharding: Sharding,
    server: Option<ServerHandle>,
    runners: Arc<GrpcTransport>,
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
        let listener = crate::server::bind(&options.listen, &options.socket).await?;
        let listen_host = match &options.listen {
            ListenAddress::Tcp { host, .. } => host.clone(),
            ListenAddress::Unix(_) => String::new(),
        };
        let advertise = options
            .advertise_host
            .clone()
            .unwrap_or_else(|| listen_host.clone());
        if matches!(options.listen, ListenAddress::Tcp { .. })
            && matches!(advertise.as_str(), "0.0.0.0" | "::" | "[::]")
        {
            return Err(SocketError::InvalidAddress {
                address: advertise,
                reason: "a wildcard address cannot be advertised; set advertise_host".to_owned(),
            });
        }
        let address = listener.advertised(&advertise, options.advertise_port)?;
        let runners = GrpcTransport::new(options.socket.clone())?;
        // One ping per probe: the prober probes every `health_check_interval` and reports a
        // runner only after consecutive failures.
        let health = Arc::new(
            PingHealth::new(runners.clone())
                .attempts(1)
                .timeout(options.sharding.health_check_interval()),
        );
        let builder = Sharding::builder(options.sharding.clone())
            .storage(storage)
            .transport(runners.clone())
            .health(health)
            .runner(address);
        let sharding = configure(builder).start().await?;
        let server = crate::server::serve_on(
            listener,
            &listen_host,
            RunnerServiceImpl {
                handler: sharding.clone(),
                max_batch: options.socket.max_batch,
                max_message_size: options.socket.max_message_size,
                window: options.socket.window,
            },
            &options.socket,
        )?;
        Ok(Self {
            sharding,
            server: Some(server),
            runners,
        })
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
        let runners = GrpcTransport::new(socket)?;
        let builder = Sharding::builder(sharding)
            .storage(storage)
            .transport(runners.clone())
            .client_only();
        let sharding = configure(builder).start().await?;
        Ok(Self {
            sharding,
            server: None,
            runners,
        })
    }

    /// The sharding runtime (register entities, make clients).
    pub fn sharding(&self) -> &Sharding {
        &self.sharding
    }

    /// Where the server listens (`None` for a client-only process).
    pub fn bound(&self) -> Option<&Bound> {
        self.server.as_ref().map(ServerHandle::bound)
    }

    /// Graceful stop: hands shards off (see [`Sharding::shutdown`]), then stops the server and
    /// closes connections.
    pub async fn shutdown(self) {
        self.sharding.shutdown().await;
        if let Some(server) = self.server {
            server.shutdown(Duration::from_secs(5)).await;
        }
        self.runners.close();
    }

    /// Stops at once without handing anything off, as a crash would (for fault tests).
    pub fn crash(self) {
        self.sharding.crash();
        if let Some(server) = self.server {
            server.abort();
        }
        self.runners.close();
    }
}
