//! Entity types implemented by worker processes: the `[[entity]]` sections of the configuration.
//!
//! Sections that name the same worker with the same options share one [`WorkerHost`] (one
//! session with the worker); each registers the entity type it names. The worker must describe
//! that type, or the runner refuses to start. Calls reach the worker over `shoal.worker.v1` (see
//! `docs/workers.md`); a worker that dies is started again with backoff.

use std::sync::Arc;

use shoal_launcher::{LaunchConfig, WorkerStderr};
use shoal_protocol::ShardGroup;
use shoal_sharding::{DynamicDefinition, GroupSelector, ShardingBuilder};
use shoal_storage::EntityKv;
use shoal_worker::{WorkerError, WorkerHost, WorkerOptions, WorkerSpec};

use super::EntityRoutes;
use crate::config::{WorkerEntityConfig, WorkerEntityOptions, WorkerSourceConfig};

/// A worker entity type that could not be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerEntityError {
    /// The worker could not be started, reached or understood.
    #[error("entity type {entity_types} ({origin}): {source}")]
    Start {
        /// The types configured for the worker.
        entity_types: String,
        /// The section(s) of the configuration file.
        origin: String,
        /// What went wrong.
        #[source]
        source: WorkerError,
    },
    /// The worker started but does not implement the configured type.
    #[error(
        "entity type {entity_type} ({origin}): worker `{worker}` does not implement it; it \
         implements: {implemented}"
    )]
    NotImplemented {
        /// The configured type.
        entity_type: String,
        /// The section of the configuration file.
        origin: String,
        /// The worker.
        worker: String,
        /// The types it describes.
        implemented: String,
    },
}

/// The worker hosts of a runner and the entity types they serve.
#[derive(Debug, Default)]
pub struct WorkerEntities {
    hosts: Vec<WorkerHost>,
    definitions: Vec<DynamicDefinition>,
}

impl WorkerEntities {
    /// Starts (or connects to) the worker of every section, with entity KV in `kv`, and checks
    /// that each implements its configured type. On failure, the hosts already started are shut
    /// down.
    pub async fn start(
        entities: &[WorkerEntityConfig],
        kv: Arc<dyn EntityKv>,
    ) -> Result<Self, WorkerEntityError> {
        let mut started = Self::default();
        if let Err(error) = started.start_all(entities, kv).await {
            started.shutdown().await;
            return Err(error);
        }
        Ok(started)
    }

    async fn start_all(
        &mut self,
        entities: &[WorkerEntityConfig],
        kv: Arc<dyn EntityKv>,
    ) -> Result<(), WorkerEntityError> {
        for group in group_by_worker(entities) {
            let types: Vec<String> = group.iter().map(|e| e.entity_type.to_string()).collect();
            let origins: Vec<&str> = group.iter().map(|e| e.origin.as_str()).collect();
            let first = group[0];
            let spec = spec_of(&first.source, &first.options);
            tracing::info!(worker = %spec.name(), types = ?types, "starting worker");
            let (host, _) = WorkerHost::start(spec, kv.clone())
                .await
                .map_err(|source| WorkerEntityError::Start {
                    entity_types: types.join(", "),
                    origin: origins.join(", "),
                    source,
                })?;
            self.hosts.push(host.clone());
            for entity in group {
                let Some(definition) = host.definition(&entity.entity_type) else {
                    return Err(WorkerEntityError::NotImplemented {
                        entity_type: entity.entity_type.to_string(),
                        origin: entity.origin.clone(),
                        worker: host.name().to_owned(),
                        implemented: host
                            .entity_types()
                            .iter()
                            .map(|t| t.name.to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                };
                self.definitions.push(definition);
            }
            let unused: Vec<String> = host
                .entity_types()
                .iter()
                .map(|t| t.name.to_string())
                .filter(|name| !types.contains(name))
                .collect();
            if !unused.is_empty() {
                tracing::info!(
                    worker = %host.name(),
                    ?unused,
                    "the worker implements entity types no [[entity]] section names; they are \
                     not served"
                );
            }
        }
        Ok(())
    }

    /// Registers the worker entity types on `builder` (once: the definitions are moved out).
    pub fn register(&mut self, builder: ShardingBuilder) -> ShardingBuilder {
        std::mem::take(&mut self.definitions)
            .into_iter()
            .fold(builder, ShardingBuilder::entity)
    }

    /// The definitions to register, moved out (for a closure that registers them later).
    pub fn take_definitions(&mut self) -> Vec<DynamicDefinition> {
        std::mem::take(&mut self.definitions)
    }

    /// Adds the configured worker entity types to `routes` (every id in the default shard group,
    /// as worker types are registered). Needs no running worker: a client-only gateway routes
    /// them too.
    pub fn routes(entities: &[WorkerEntityConfig], mut routes: EntityRoutes) -> EntityRoutes {
        for entity in entities {
            routes.insert(
                entity.entity_type.clone(),
                GroupSelector::fixed(ShardGroup::default_group()),
            );
        }
        routes
    }

    /// The worker hosts.
    pub fn hosts(&self) -> &[WorkerHost] {
        &self.hosts
    }

    /// Stops hosting: sessions close, workers are no longer restarted. Launched workers are left
    /// to exit after their idle timeout (other runners on the machine may share them).
    pub async fn shutdown(&self) {
        for host in &self.hosts {
            host.shutdown().await;
        }
    }
}

/// The sections grouped by worker: same source and options, in file order.
fn group_by_worker(entities: &[WorkerEntityConfig]) -> Vec<Vec<&WorkerEntityConfig>> {
    let mut groups: Vec<Vec<&WorkerEntityConfig>> = Vec::new();
    for entity in entities {
        match groups
            .iter_mut()
            .find(|g| g[0].source == entity.source && g[0].options == entity.options)
        {
            Some(group) => group.push(entity),
            None => groups.push(vec![entity]),
        }
    }
    groups
}

/// The host's view of a section.
fn spec_of(source: &WorkerSourceConfig, options: &WorkerEntityOptions) -> WorkerSpec {
    let spec = match source {
        WorkerSourceConfig::Command {
            argv,
            cwd,
            stderr,
            idle_timeout,
            startup_timeout,
            state_dir,
        } => {
            let mut launch = LaunchConfig::new(argv.iter().cloned());
            if let Some(cwd) = cwd {
                launch = launch.cwd(cwd);
            }
            if let Some(stderr) = stderr {
                launch = launch.worker_stderr(WorkerStderr::Append(stderr.clone()));
            }
            if let Some(timeout) = idle_timeout {
                launch = launch.idle_timeout(*timeout);
            }
            if let Some(timeout) = startup_timeout {
                launch = launch.worker_startup_timeout(*timeout);
            }
            if let Some(dir) = state_dir {
                launch = launch.state_dir(dir);
            }
            WorkerSpec::launch(launch)
        }
        WorkerSourceConfig::Socket(path) => WorkerSpec::socket(path),
    };
    let mut host = WorkerOptions::new();
    if let Some(timeout) = options.request_timeout {
        host = host.request_timeout(timeout);
    }
    if let Some(timeout) = options.connect_timeout {
        host = host.connect_timeout(timeout);
    }
    if let Some(concurrency) = options.concurrency {
        host = host.default_concurrency(concurrency);
    }
    host = host.max_in_flight(options.max_in_flight);
    if options.heartbeat_interval.is_some() || options.heartbeat_timeout.is_some() {
        let interval = options
            .heartbeat_interval
            .unwrap_or(host.heartbeat_interval);
        let timeout = options
            .heartbeat_timeout
            .unwrap_or(host.heartbeat_timeout.max(interval));
        host = host.heartbeat(interval, timeout);
    }
    spec.options(host)
}
