//! The runner transport as a [`Network`]: what [`ShardingBuilder::network`] is given to run a
//! runtime over sockets.
//!
//! [`ShardingBuilder::network`]: shoal_sharding::ShardingBuilder::network

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use shoal_protocol::RunnerAddress;
use shoal_sharding::{
    Network, NetworkError, PingHealth, RunnerHealth, Serving, Sharding, ShardingConfig, Transport,
};

use crate::client::GrpcTransport;
use crate::config::SocketConfig;
use crate::error::SocketError;
use crate::listen::ListenAddress;
use crate::server::{Bound, Listener, RunnerServiceImpl, ServerHandle};

/// How long a stopping runner's server lets the requests it is answering finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Where a runner listens and how others reach it ([`SocketNetwork::bind`]).
#[derive(Debug, Clone)]
pub struct BindOptions {
    /// Where to listen: `host:port` (port 0 for any) or `unix:/path`.
    pub listen: ListenAddress,
    /// The TCP host other runners use to reach this one (default: the listen host, which must
    /// then be reachable, not `0.0.0.0`).
    pub advertise_host: Option<String>,
    /// The TCP port other runners use to reach this one (default: the port bound). Set it when
    /// the runner is reached through a port mapping or a proxy (a container's published port, a
    /// load balancer, the fault harness's partition proxies).
    pub advertise_port: Option<u16>,
    /// Transport settings.
    pub socket: SocketConfig,
}

impl BindOptions {
    /// Listens on `listen` with the default transport settings.
    pub fn new(listen: ListenAddress) -> Self {
        Self {
            listen,
            advertise_host: None,
            advertise_port: None,
            socket: SocketConfig::default(),
        }
    }
}

/// gRPC over TCP or a Unix socket between runner processes, as a
/// [`Network`]: a bound socket (for a runner) and the [`GrpcTransport`] to the others.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use shoal_sharding::{Sharding, ShardingConfig};
/// use shoal_socket::{BindOptions, SocketNetwork};
/// use shoal_storage::MemoryRunnerStorage;
///
/// let network = SocketNetwork::bind(BindOptions::new("127.0.0.1:0".parse()?)).await?;
/// let sharding = Sharding::builder(ShardingConfig::default())
///     .storage(Arc::new(MemoryRunnerStorage::new()))
///     .network(network)
///     // .entity(...) registers entity types
///     .start()
///     .await?;
/// sharding.shutdown().await; // hands shards off, then stops the server
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SocketNetwork {
    transport: Arc<GrpcTransport>,
    /// The bound socket and the host it listens on (`None`: client only).
    listener: Option<(Listener, String)>,
    address: Option<RunnerAddress>,
    socket: SocketConfig,
}

impl SocketNetwork {
    /// Binds the runner's socket (a TCP port, 0 for any free one, or a Unix socket path) and
    /// makes the transport to the other runners. Listening on a TCP address other hosts can reach
    /// (not loopback) needs a token or mutual TLS in `options.socket`, or `insecure_transport`
    /// ([`SocketError::InsecureTransport`] otherwise).
    pub async fn bind(options: BindOptions) -> Result<Self, SocketError> {
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
        Ok(Self {
            transport: GrpcTransport::new(options.socket.clone())?,
            listener: Some((listener, listen_host)),
            address: Some(address),
            socket: options.socket,
        })
    }

    /// The transport of a client-only process: it sends to runners and serves nothing.
    pub fn client_only(socket: SocketConfig) -> Result<Self, SocketError> {
        Ok(Self {
            transport: GrpcTransport::new(socket.clone())?,
            listener: None,
            address: None,
            socket,
        })
    }

    /// Where the socket is bound (`None` for a client-only process): the actual port when 0
    /// was asked for.
    pub fn bound(&self) -> Option<Bound> {
        self.listener.as_ref().map(|(listener, _)| listener.bound())
    }
}

impl Network for SocketNetwork {
    fn transport(&self) -> Arc<dyn Transport> {
        self.transport.clone()
    }

    fn address(&self) -> Option<RunnerAddress> {
        self.address.clone()
    }

    /// Other runners are pinged over this transport, once per probe (the prober probes every
    /// `health_check_interval` and reports a runner only after consecutive failures).
    fn health(&self, config: &ShardingConfig) -> Option<Arc<dyn RunnerHealth>> {
        Some(Arc::new(
            PingHealth::new(self.transport.clone())
                .attempts(1)
                .timeout(config.health_check_interval()),
        ))
    }

    fn serve(self: Box<Self>, handler: Sharding) -> Result<Box<dyn Serving>, NetworkError> {
        let (listener, host) = self
            .listener
            .ok_or("a client-only network serves nothing")?;
        let server = crate::server::serve_on(
            listener,
            &host,
            RunnerServiceImpl {
                handler,
                max_batch: self.socket.max_batch,
                max_message_size: self.socket.max_message_size,
                window: self.socket.window,
            },
            &self.socket,
        )?;
        Ok(Box::new(SocketServing { server }))
    }
}

/// A runner's gRPC server, stopped with its runtime.
#[derive(Debug)]
struct SocketServing {
    server: ServerHandle,
}

#[async_trait]
impl Serving for SocketServing {
    async fn shutdown(self: Box<Self>) {
        self.server.shutdown(SHUTDOWN_GRACE).await;
    }

    fn abort(self: Box<Self>) {
        self.server.abort();
    }
}
