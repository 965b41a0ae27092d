//! One `shoal run` process: storage, the runner (or a client-only router), the HTTP gateway and
//! the metrics listener, started in order and stopped gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use shoal_sharding::{RegisterError, Sharding};
use shoal_socket::{ServeOptions, SocketError, SocketRunner};
use shoal_storage::{StorageError, connect};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::{MetricsListen, Role, RunnerConfig};
use crate::entities::{Builtin, EntityRoutes, WorkerEntities, WorkerEntityError};
use crate::gateway::{self, ConnectionLimits, GatewayOptions, HttpServer};
use crate::health::Readiness;

/// How long HTTP servers may take to finish open requests once they stop accepting.
const HTTP_GRACE: Duration = Duration::from_secs(5);

/// Most connections the separate metrics listener (`metrics = HOST:PORT`) holds at once: it serves
/// scrapers, which keep a connection or two each.
const METRICS_MAX_CONNECTIONS: usize = 64;

/// Why the process could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Storage could not be opened or migrated.
    #[error("cannot open storage {url}: {source}")]
    Storage {
        /// The storage URL, password hidden.
        url: String,
        /// The storage error.
        #[source]
        source: StorageError,
    },
    /// An HTTP listener could not be bound.
    #[error("cannot listen for HTTP ({what}) on {address}: {source}")]
    Bind {
        /// `gateway` or `metrics`.
        what: &'static str,
        /// The address.
        address: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The runner could not start (listen, TLS, register in storage).
    #[error(transparent)]
    Runner(#[from] SocketError),
    /// An entity type could not be routed.
    #[error(transparent)]
    Register(#[from] RegisterError),
    /// A worker entity type (`[[entity]]`) could not be served.
    #[error(transparent)]
    Worker(#[from] WorkerEntityError),
}

/// Where the process ended up listening.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Addresses {
    /// The runner's advertised address (`None` when client-only).
    pub runner: Option<String>,
    /// The gateway (`None` when off).
    pub gateway: Option<SocketAddr>,
    /// Where `/metrics` is served (`None` when off).
    pub metrics: Option<SocketAddr>,
}

async fn bind(what: &'static str, address: &str) -> Result<TcpListener, NodeError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| NodeError::Bind {
            what,
            address: address.to_owned(),
            source,
        })
}

/// A running `shoal run` process.
#[derive(Debug)]
pub struct Node {
    runner: SocketRunner,
    workers: WorkerEntities,
    readiness: Arc<Readiness>,
    gateway: Option<HttpServer>,
    metrics: Option<HttpServer>,
    upkeep: Option<JoinHandle<()>>,
    shutdown_delay: Duration,
    addresses: Addresses,
}

impl Node {
    /// Starts everything `config` describes. `metrics` is the installed recorder's handle (`None`
    /// when metrics are off). HTTP listeners are bound before the runner registers, so a port
    /// conflict fails before the runner joins the cluster.
    pub async fn start(
        config: &RunnerConfig,
        metrics: Option<PrometheusHandle>,
    ) -> Result<Self, NodeError> {
        let gateway_listener = match &config.gateway {
            Some(gw) => Some(bind("gateway", &gw.listen).await?),
            None => None,
        };
        let metrics_listener = match (&config.metrics, &metrics) {
            (MetricsListen::Separate(address), Some(_)) => Some(bind("metrics", address).await?),
            _ => None,
        };

        let url = config.storage.redacted_url();
        tracing::info!(storage = %url, migrate = config.storage.migrate, "opening storage");
        let stores = connect(&config.storage.url, config.storage.options())
            .await
            .map_err(|source| NodeError::Storage {
                url: url.clone(),
                source,
            })?;
        let storage = stores.runners.clone();
        let (messages, kv) = (stores.messages.clone(), stores.kv.clone());

        // Worker entities: their workers answer (and describe their types) before the runner
        // joins the cluster, so a missing or broken worker fails the start.
        let mut workers = match &config.role {
            Role::Runner { .. } => WorkerEntities::start(&config.entities, kv.clone()).await?,
            Role::ClientOnly => WorkerEntities::default(),
        };
        let worker_definitions = workers.take_definitions();
        let runner = match &config.role {
            Role::Runner {
                listen,
                advertise_host,
                advertise_port,
            } => {
                let builtin = config.builtin_entities;
                SocketRunner::serve(
                    ServeOptions {
                        listen: listen.clone(),
                        advertise_host: advertise_host.clone(),
                        advertise_port: *advertise_port,
                        sharding: config.sharding.clone(),
                        socket: config.socket.clone(),
                    },
                    storage.clone(),
                    move |builder| {
                        let builder = builder.message_storage(messages).entity_kv(kv);
                        let builder = if builtin {
                            Builtin::register(builder)
                        } else {
                            builder
                        };
                        worker_definitions
                            .into_iter()
                            .fold(builder, shoal_sharding::ShardingBuilder::entity)
                    },
                )
                .await
            }
            Role::ClientOnly => {
                SocketRunner::client_only_with(
                    config.sharding.clone(),
                    config.socket.clone(),
                    storage.clone(),
                    move |builder| builder.message_storage(messages),
                )
                .await
            }
        };
        let runner = match runner {
            Ok(runner) => runner,
            Err(error) => {
                workers.shutdown().await;
                return Err(error.into());
            }
        };
        let sharding = runner.sharding().clone();
        let routes = if config.builtin_entities {
            Builtin::routes(EntityRoutes::new())?
        } else {
            EntityRoutes::new()
        };
        let routes = WorkerEntities::routes(&config.entities, routes);
        let readiness = Readiness::new(sharding.clone(), storage);

        let upkeep = metrics.clone().map(crate::telemetry::spawn_upkeep);
        let mut addresses = Addresses {
            runner: sharding.runner_address().map(ToString::to_string),
            gateway: None,
            metrics: None,
        };
        let gateway = match (gateway_listener, &config.gateway) {
            (Some(listener), Some(gw)) => {
                let local = listener.local_addr().ok();
                addresses.gateway = local;
                let serve_metrics = config.metrics == MetricsListen::Gateway;
                if serve_metrics && metrics.is_some() {
                    addresses.metrics = local;
                }
                let router = gateway::router(
                    &sharding,
                    &routes,
                    readiness.clone(),
                    GatewayOptions {
                        max_body: gw.max_body,
                        token: gw.token.clone(),
                        metrics: metrics.clone().filter(|_| serve_metrics),
                        body_timeout: gw.body_timeout,
                    },
                );
                let max_connections = gw.max_connections.resolve();
                tracing::info!(
                    address = ?local,
                    max_connections,
                    header_timeout = ?gw.header_timeout,
                    body_timeout = ?gw.body_timeout,
                    "gateway listening"
                );
                Some(gateway::serve(
                    "gateway",
                    listener,
                    router,
                    ConnectionLimits {
                        header_timeout: gw.header_timeout,
                        max_connections,
                    },
                ))
            }
            _ => None,
        };
        let metrics_server = match (metrics_listener, metrics) {
            (Some(listener), Some(handle)) => {
                addresses.metrics = listener.local_addr().ok();
                tracing::info!(address = ?addresses.metrics, "metrics listening");
                Some(gateway::serve(
                    "metrics",
                    listener,
                    gateway::metrics_router(handle),
                    ConnectionLimits {
                        max_connections: METRICS_MAX_CONNECTIONS,
                        ..ConnectionLimits::default()
                    },
                ))
            }
            _ => None,
        };
        tracing::info!(
            runner = ?addresses.runner,
            machine_id = ?sharding.machine_id().map(|m| m.0),
            shards = sharding.active_shards().len(),
            "started"
        );
        Ok(Self {
            runner,
            readiness,
            gateway,
            metrics: metrics_server,
            upkeep,
            workers,
            shutdown_delay: config.shutdown_delay,
            addresses,
        })
    }

    /// Where the process listens.
    pub fn addresses(&self) -> &Addresses {
        &self.addresses
    }

    /// The sharding runtime.
    pub fn sharding(&self) -> &Sharding {
        self.runner.sharding()
    }

    /// Graceful stop: readiness fails at once; after the shutdown delay the runner leaves the
    /// cluster and hands its shards off (running requests finish, up to the entity termination
    /// timeout); then the HTTP servers finish their open requests and stop.
    pub async fn shutdown(self) {
        self.readiness.begin_drain();
        if !self.shutdown_delay.is_zero() {
            tracing::info!(delay = ?self.shutdown_delay, "not ready; serving until the shutdown delay ends");
            tokio::time::sleep(self.shutdown_delay).await;
        }
        tracing::info!("handing shards off");
        self.runner.shutdown().await;
        // After the handoff: the entities served by workers are stopped by now.
        self.workers.shutdown().await;
        if let Some(gateway) = self.gateway {
            gateway.stop(HTTP_GRACE).await;
        }
        if let Some(metrics) = self.metrics {
            metrics.stop(HTTP_GRACE).await;
        }
        if let Some(upkeep) = self.upkeep {
            upkeep.abort();
        }
        tracing::info!("stopped");
    }
}
