//! The cluster as the lease keeper last read it from storage.

use shoal_storage::{RunnerStatus, ShardLease};

/// The last view of the cluster read from storage.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// Runners with a live heartbeat.
    pub runners: Vec<RunnerStatus>,
    /// Live shard leases.
    pub leases: Vec<ShardLease>,
}
