//! In-memory [`RunnerStorage`] with real lease semantics.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use shoal_protocol::{MachineId, Runner, RunnerAddress, ShardId};
use tokio::time::Instant;

use crate::error::StorageError;
use crate::lease::{Epoch, HeldShard, ShardLease};
use crate::runner_storage::{RunnerStatus, RunnerStorage};

/// Runner membership and shard leases held in process memory.
///
/// Leases expire, a shard has one live owner at a time, epochs grow on every grant, machine ids are
/// never reused: the same contract as the SQL backends, so tests written against it hold for them.
/// The clock is tokio's, so tests can pause and advance time (`tokio::time::pause`).
///
/// Share one instance (it is cheap to wrap in an `Arc`) between the runners of a single-process
/// cluster.
///
/// ```
/// # tokio_test_block_on(async {
/// use std::num::NonZeroU32;
/// use std::time::Duration;
/// use shoal_protocol::{Runner, ShardGroup, ShardId};
/// use shoal_storage::{MemoryRunnerStorage, RunnerStorage};
///
/// let storage = MemoryRunnerStorage::new();
/// let runner = Runner::new("127.0.0.1:1".parse()?, [ShardGroup::default_group()], NonZeroU32::MIN);
/// storage.register(&runner, true, Duration::from_secs(10)).await?;
/// let shard: ShardId = "default:1".parse()?;
/// let held = storage.acquire(&runner.address, &[shard.clone()], Duration::from_secs(10)).await?;
/// assert_eq!(held[0].shard, shard);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug, Default)]
pub struct MemoryRunnerStorage {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last_machine_id: i64,
    runners: HashMap<RunnerAddress, RunnerRow>,
    leases: HashMap<ShardId, LeaseRow>,
}

#[derive(Debug)]
struct RunnerRow {
    runner: Runner,
    healthy: bool,
    heartbeat_expires: Instant,
}

#[derive(Debug)]
struct LeaseRow {
    owner: Option<RunnerAddress>,
    epoch: u64,
    expires: Instant,
}

impl LeaseRow {
    fn held_by(&self, address: &RunnerAddress, now: Instant) -> bool {
        self.expires > now && self.owner.as_ref() == Some(address)
    }
}

impl MemoryRunnerStorage {
    /// Empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current owner and epoch of a shard's lease, if it is live (for assertions in tests).
    pub fn lease_owner(&self, shard: &ShardId) -> Option<(RunnerAddress, Epoch)> {
        let now = Instant::now();
        let state = self.state.lock();
        let row = state.leases.get(shard)?;
        match &row.owner {
            Some(owner) if row.expires > now => Some((owner.clone(), Epoch(row.epoch))),
            _ => None,
        }
    }

    /// The latest epoch of a shard's lease, live or not (`None` if it was never leased): the
    /// epoch fencing compares a writer's [`Fence`](crate::Fence) with.
    pub fn shard_epoch(&self, shard: &ShardId) -> Option<Epoch> {
        self.state
            .lock()
            .leases
            .get(shard)
            .map(|row| Epoch(row.epoch))
    }

    /// Runs `f` while no lease can change hands; `f` gets the latest epoch of any shard. Message
    /// storage checks fences and writes inside it, so a write is never accepted under an epoch
    /// that a concurrent `acquire` has just superseded.
    pub(crate) fn with_epochs<R>(
        &self,
        f: impl FnOnce(&dyn Fn(&ShardId) -> Option<Epoch>) -> R,
    ) -> R {
        let state = self.state.lock();
        f(&|shard| state.leases.get(shard).map(|row| Epoch(row.epoch)))
    }
}

#[async_trait]
impl RunnerStorage for MemoryRunnerStorage {
    async fn register(
        &self,
        runner: &Runner,
        healthy: bool,
        ttl: Duration,
    ) -> Result<MachineId, StorageError> {
        let now = Instant::now();
        let mut state = self.state.lock();
        state.last_machine_id += 1;
        let id = state.last_machine_id;
        state.runners.insert(
            runner.address.clone(),
            RunnerRow {
                runner: runner.clone(),
                healthy,
                heartbeat_expires: now + ttl,
            },
        );
        Ok(MachineId(id))
    }

    async fn unregister(&self, address: &RunnerAddress) -> Result<(), StorageError> {
        let now = Instant::now();
        let mut state = self.state.lock();
        state.runners.remove(address);
        // Also forget runners whose heartbeat lapsed long ago, as the SQL backends do.
        state.runners.retain(|_, row| row.heartbeat_expires > now);
        Ok(())
    }

    async fn runners(&self) -> Result<Vec<RunnerStatus>, StorageError> {
        let now = Instant::now();
        let state = self.state.lock();
        Ok(state
            .runners
            .values()
            .filter(|row| row.heartbeat_expires > now)
            .map(|row| RunnerStatus {
                runner: row.runner.clone(),
                healthy: row.healthy,
            })
            .collect())
    }

    async fn set_runner_health(
        &self,
        address: &RunnerAddress,
        healthy: bool,
    ) -> Result<(), StorageError> {
        if let Some(row) = self.state.lock().runners.get_mut(address) {
            row.healthy = healthy;
        }
        Ok(())
    }

    async fn leases(&self) -> Result<Vec<ShardLease>, StorageError> {
        let now = Instant::now();
        let state = self.state.lock();
        Ok(state
            .leases
            .iter()
            .filter(|(_, row)| row.expires > now)
            .filter_map(|(shard, row)| {
                row.owner.as_ref().map(|owner| ShardLease {
                    shard: shard.clone(),
                    owner: owner.clone(),
                    epoch: Epoch(row.epoch),
                })
            })
            .collect())
    }

    async fn acquire(
        &self,
        address: &RunnerAddress,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<HeldShard>, StorageError> {
        let now = Instant::now();
        let mut state = self.state.lock();
        let mut held = Vec::with_capacity(shards.len());
        for shard in shards {
            let row = state
                .leases
                .entry(shard.clone())
                .or_insert_with(|| LeaseRow {
                    owner: None,
                    epoch: 0,
                    expires: now,
                });
            if row.held_by(address, now) {
                row.expires = now + ttl;
            } else if row.owner.is_none() || row.expires <= now {
                row.owner = Some(address.clone());
                row.epoch += 1;
                row.expires = now + ttl;
            } else {
                continue;
            }
            held.push(HeldShard {
                shard: shard.clone(),
                epoch: Epoch(row.epoch),
            });
        }
        Ok(held)
    }

    async fn refresh(
        &self,
        address: &RunnerAddress,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<HeldShard>, StorageError> {
        let now = Instant::now();
        let mut state = self.state.lock();
        if let Some(row) = state.runners.get_mut(address) {
            row.heartbeat_expires = now + ttl;
        }
        let mut held = Vec::with_capacity(shards.len());
        for shard in shards {
            if let Some(row) = state.leases.get_mut(shard)
                && row.held_by(address, now)
            {
                row.expires = now + ttl;
                held.push(HeldShard {
                    shard: shard.clone(),
                    epoch: Epoch(row.epoch),
                });
            }
        }
        Ok(held)
    }

    async fn release(
        &self,
        address: &RunnerAddress,
        shards: &[ShardId],
    ) -> Result<(), StorageError> {
        let now = Instant::now();
        let mut state = self.state.lock();
        for shard in shards {
            if let Some(row) = state.leases.get_mut(shard)
                && row.owner.as_ref() == Some(address)
            {
                row.owner = None;
                row.expires = now;
            }
        }
        Ok(())
    }

    async fn release_all(&self, address: &RunnerAddress) -> Result<(), StorageError> {
        let now = Instant::now();
        let mut state = self.state.lock();
        for row in state.leases.values_mut() {
            if row.owner.as_ref() == Some(address) {
                row.owner = None;
                row.expires = now;
            }
        }
        Ok(())
    }
}
