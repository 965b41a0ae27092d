//! The cluster as the lease keeper last read it from storage.

use shoal_storage::{RunnerStatus, ShardLease};

/// The last view of the cluster read from storage.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// Runners with a live heartbeat.
    pub runners: Vec<RunnerStatus>,
    /// Live shard leases.
    pub leases: Vec<ShardLease>,
    /// How many times the lease keeper has read the cluster so far (one per assignment round):
    /// wait for it to grow to know that rounds have passed, whatever the machine's speed.
    pub rounds: u64,
}
