//! How a runtime joins the other runners: a value given to the builder
//! ([`ShardingBuilder::network`](crate::ShardingBuilder::network)).

use std::sync::Arc;

use shoal_protocol::RunnerAddress;

use crate::config::ShardingConfig;
use crate::health::RunnerHealth;
use crate::serving::Serving;
use crate::sharding::Sharding;
use crate::transport::Transport;

/// Why a network could not start serving.
pub type NetworkError = Box<dyn std::error::Error + Send + Sync>;

/// How a runtime reaches the other runners and is reached by them: its outbound
/// [`Transport`], the address it is reachable at, and the server that hands their requests to
/// it. The same builder starts a runtime on any network:
///
/// - [`InProcessNetwork::endpoint`](crate::InProcessNetwork::endpoint): several runtimes in one
///   process (tests, embedded use);
/// - `shoal_socket::SocketNetwork`: gRPC over TCP or Unix sockets, between processes.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use shoal_sharding::{InProcessNetwork, Sharding, ShardingConfig};
/// # use shoal_protocol::RunnerAddress;
/// # use shoal_storage::MemoryRunnerStorage;
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let network = InProcessNetwork::new();
/// let address = RunnerAddress::tcp("runner-a", 1)?;
/// let sharding = Sharding::builder(ShardingConfig::default())
///     .storage(Arc::new(MemoryRunnerStorage::new()))
///     .network(network.endpoint(address))
///     .start()
///     .await?;
/// # Ok(()) }
/// ```
pub trait Network: Send + 'static {
    /// The transport to other runners.
    fn transport(&self) -> Arc<dyn Transport>;

    /// Where other runners reach this one; `None` for a client-only process, which holds no
    /// shards and serves nothing.
    fn address(&self) -> Option<RunnerAddress>;

    /// How other runners' health is judged, given the runtime's settings (`None`: not probed;
    /// see [`RunnerHealth`]).
    fn health(&self, config: &ShardingConfig) -> Option<Arc<dyn RunnerHealth>> {
        let _ = config;
        None
    }

    /// Starts serving requests from other runners with `handler`. Called once by
    /// [`ShardingBuilder::start`](crate::ShardingBuilder::start), after the entity types are
    /// registered and before the runner takes shards; only when [`Network::address`] is `Some`.
    fn serve(self: Box<Self>, handler: Sharding) -> Result<Box<dyn Serving>, NetworkError>;
}
