//! In-memory [`RunnerStorage`] with real lease semantics.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use shoal_protocol::{Incarnation, MachineId, Runner, RunnerAddress, RunnerId, ShardId};
use tokio::time::Instant;

use crate::cluster::ClusterParameters;
use crate::error::StorageError;
use crate::lease::{Epoch, HeldShard, MachineIdLease, MachineLease, ShardLease};
use crate::runner_storage::{RunnerStatus, RunnerStorage};

/// Runner membership and shard leases held in process memory.
///
/// Leases expire, a shard has one live owner at a time, epochs grow on every grant, no two live
/// processes hold one machine id: the same contract as the SQL backends, so tests written against
/// it hold for them.
/// The clock is tokio's, so tests can pause and advance time (`tokio::time::pause`).
///
/// Share one instance (it is cheap to wrap in an `Arc`) between the runners of a single-process
/// cluster.
///
/// ```
/// # tokio_test_block_on(async {
/// use std::num::NonZeroU32;
/// use std::time::Duration;
/// use shoal_protocol::{Incarnation, Runner, RunnerId, ShardGroup, ShardId};
/// use shoal_storage::{MemoryRunnerStorage, RunnerStorage};
///
/// let storage = MemoryRunnerStorage::new();
/// let runner = Runner::new("127.0.0.1:1".parse()?, [ShardGroup::default_group()], NonZeroU32::MIN);
/// let me = RunnerId::new(runner.address.clone(), Incarnation::random());
/// storage.register(&runner, me.incarnation, true, Duration::from_secs(10)).await?;
/// let shard: ShardId = "default:1".parse()?;
/// let held = storage.acquire(&me, &[shard.clone()], Duration::from_secs(10)).await?;
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
    runners: HashMap<RunnerAddress, RunnerRow>,
    leases: HashMap<ShardId, LeaseRow>,
    machines: BTreeMap<i64, MachineRow>,
    parameters: ClusterParameters,
}

#[derive(Debug)]
struct RunnerRow {
    runner: Runner,
    incarnation: Incarnation,
    healthy: bool,
    heartbeat_expires: Instant,
    /// What it reported unreachable.
    unreachable: Vec<RunnerAddress>,
}

#[derive(Debug)]
struct LeaseRow {
    owner: Option<RunnerId>,
    epoch: u64,
    expires: Instant,
}

impl LeaseRow {
    fn held_by(&self, runner: &RunnerId, now: Instant) -> bool {
        self.expires > now && self.owner.as_ref() == Some(runner)
    }
}

#[derive(Debug)]
struct MachineRow {
    incarnation: Incarnation,
    expires: Instant,
    reserved_until: u64,
}

/// How many machine ids there are (the 10 machine bits of a Snowflake).
const MACHINE_IDS: i64 = 1024;

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
            Some(owner) if row.expires > now => Some((owner.address.clone(), Epoch(row.epoch))),
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
        incarnation: Incarnation,
        healthy: bool,
        ttl: Duration,
    ) -> Result<(), StorageError> {
        let now = Instant::now();
        let mut state = self.state.lock();
        if let Some(row) = state.runners.get(&runner.address)
            && row.incarnation != incarnation
            && row.heartbeat_expires > now
        {
            return Err(StorageError::AddressInUse {
                address: runner.address.clone(),
                holder: row.incarnation,
                expires_in: row.heartbeat_expires - now,
            });
        }
        // The same incarnation registering again keeps its reports; a new one starts afresh.
        let unreachable = state
            .runners
            .get(&runner.address)
            .filter(|row| row.incarnation == incarnation)
            .map(|row| row.unreachable.clone())
            .unwrap_or_default();
        state.runners.insert(
            runner.address.clone(),
            RunnerRow {
                runner: runner.clone(),
                incarnation,
                healthy,
                heartbeat_expires: now + ttl,
                unreachable,
            },
        );
        Ok(())
    }

    async fn unregister(&self, runner: &RunnerId) -> Result<(), StorageError> {
        let now = Instant::now();
        let mut state = self.state.lock();
        if state
            .runners
            .get(&runner.address)
            .is_some_and(|row| row.incarnation == runner.incarnation)
        {
            state.runners.remove(&runner.address);
        }
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
                incarnation: row.incarnation,
                healthy: row.healthy,
                unreachable: row.unreachable.clone(),
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

    async fn report_unreachable(
        &self,
        reporter: &RunnerId,
        unreachable: &[RunnerAddress],
    ) -> Result<(), StorageError> {
        if let Some(row) = self.state.lock().runners.get_mut(&reporter.address)
            && row.incarnation == reporter.incarnation
        {
            row.unreachable = unreachable.to_vec();
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
                    owner: owner.address.clone(),
                    incarnation: owner.incarnation,
                    epoch: Epoch(row.epoch),
                    expires_in: row.expires - now,
                })
            })
            .collect())
    }

    async fn acquire(
        &self,
        runner: &RunnerId,
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
            if !(row.held_by(runner, now) || row.owner.is_none() || row.expires <= now) {
                continue;
            }
            row.owner = Some(runner.clone());
            row.epoch += 1;
            row.expires = now + ttl;
            held.push(HeldShard {
                shard: shard.clone(),
                epoch: Epoch(row.epoch),
            });
        }
        Ok(held)
    }

    async fn refresh(
        &self,
        runner: &RunnerId,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<HeldShard>, StorageError> {
        let now = Instant::now();
        let mut state = self.state.lock();
        if let Some(row) = state.runners.get_mut(&runner.address)
            && row.incarnation == runner.incarnation
        {
            row.heartbeat_expires = now + ttl;
        }
        let mut held = Vec::with_capacity(shards.len());
        for shard in shards {
            if let Some(row) = state.leases.get_mut(shard)
                && row.held_by(runner, now)
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

    async fn release(&self, runner: &RunnerId, shards: &[ShardId]) -> Result<(), StorageError> {
        let now = Instant::now();
        let mut state = self.state.lock();
        for shard in shards {
            if let Some(row) = state.leases.get_mut(shard)
                && row.owner.as_ref() == Some(runner)
            {
                row.owner = None;
                row.expires = now;
            }
        }
        Ok(())
    }

    async fn release_all(&self, runner: &RunnerId) -> Result<(), StorageError> {
        let now = Instant::now();
        let mut state = self.state.lock();
        for row in state.leases.values_mut() {
            if row.owner.as_ref() == Some(runner) {
                row.owner = None;
                row.expires = now;
            }
        }
        Ok(())
    }

    async fn lease_machine_id(
        &self,
        incarnation: Incarnation,
        now_ms: u64,
        ttl: Duration,
    ) -> Result<MachineLease, StorageError> {
        let now = Instant::now();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let mut state = self.state.lock();
        // Ours again, else the lowest free id whose reservation has passed, else the lowest free.
        let free = |row: Option<&MachineRow>| row.is_none_or(|r| r.expires <= now);
        let candidates = (0..MACHINE_IDS).map(|id| (id, state.machines.get(&id)));
        let chosen = candidates
            .filter(|(_, row)| free(*row) || row.is_some_and(|r| r.incarnation == incarnation))
            .min_by_key(|(id, row)| {
                let ours = row.is_some_and(|r| r.incarnation == incarnation);
                let reserved = row.is_some_and(|r| r.reserved_until > now_ms);
                (!ours, reserved, *id)
            })
            .map(|(id, _)| id)
            .ok_or(StorageError::NoMachineId)?;
        let floor = state
            .machines
            .get(&chosen)
            .map_or(0, |row| row.reserved_until);
        let reserved_until = floor.max(now_ms).saturating_add(ttl_ms);
        state.machines.insert(
            chosen,
            MachineRow {
                incarnation,
                expires: now + ttl,
                reserved_until,
            },
        );
        Ok(MachineLease {
            machine_id: MachineId(chosen),
            floor,
            reserved_until,
        })
    }

    async fn renew_machine_id(
        &self,
        machine_id: MachineId,
        incarnation: Incarnation,
        now_ms: u64,
        ttl: Duration,
    ) -> Result<Option<u64>, StorageError> {
        let now = Instant::now();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let mut state = self.state.lock();
        Ok(match state.machines.get_mut(&machine_id.0) {
            Some(row) if row.incarnation == incarnation => {
                row.expires = now + ttl;
                row.reserved_until = row.reserved_until.max(now_ms.saturating_add(ttl_ms));
                Some(row.reserved_until)
            }
            _ => None,
        })
    }

    async fn release_machine_id(
        &self,
        machine_id: MachineId,
        incarnation: Incarnation,
        minted_until: u64,
    ) -> Result<(), StorageError> {
        let now = Instant::now();
        let mut state = self.state.lock();
        if let Some(row) = state.machines.get_mut(&machine_id.0)
            && row.incarnation == incarnation
        {
            row.expires = now;
            row.reserved_until = minted_until;
        }
        Ok(())
    }

    async fn machine_ids(&self) -> Result<Vec<MachineIdLease>, StorageError> {
        let now = Instant::now();
        Ok(self
            .state
            .lock()
            .machines
            .iter()
            .filter(|(_, row)| row.expires > now)
            .map(|(id, row)| MachineIdLease {
                machine_id: MachineId(*id),
                incarnation: row.incarnation,
            })
            .collect())
    }

    async fn cluster_parameters(
        &self,
        proposed: &ClusterParameters,
    ) -> Result<ClusterParameters, StorageError> {
        let mut state = self.state.lock();
        let mut stored = std::mem::take(&mut state.parameters);
        for (name, value) in proposed.iter() {
            if stored.get(name).is_none() {
                stored = stored.with(name, value);
            }
        }
        state.parameters = stored.clone();
        Ok(stored)
    }
}
