//! Runner membership, shard leases and process identity: the typed [`RunnerStorage`] seam.

use std::time::Duration;

use async_trait::async_trait;
use shoal_protocol::{Incarnation, MachineId, Runner, RunnerAddress, RunnerId, ShardId};

use crate::cluster::ClusterParameters;
use crate::error::StorageError;
use crate::lease::{HeldShard, MachineIdLease, MachineLease, ShardLease};

/// A registered runner and whether it is considered healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerStatus {
    /// The runner's description.
    pub runner: Runner,
    /// The incarnation of the process registered at its address.
    pub incarnation: Incarnation,
    /// `false` once a health check marked it unhealthy; unhealthy runners get no shards.
    pub healthy: bool,
    /// The runners this one reported it cannot reach ([`RunnerStorage::report_unreachable`]),
    /// in no particular order. Runners judge reachability by quorum from these reports.
    pub unreachable: Vec<RunnerAddress>,
}

/// Where runners register and lease shards, and where every process leases its machine id. The
/// lease in storage, not any runner's view, is the authority on who owns a shard.
///
/// # Contract
///
/// - Times are compared against the storage's own clock (the database clock for SQL backends),
///   never a runner's.
/// - **Identity.** A runner is its address *and* its [`Incarnation`] (one per process start).
///   `register` refuses an address whose heartbeat is live under another incarnation
///   ([`StorageError::AddressInUse`]); every lease operation names the incarnation, and a lease
///   is the caller's only if that incarnation took it.
/// - A shard has at most one live lease. A lease is live until its expiry; `acquire` and
///   `refresh` set the expiry to `now + ttl`.
/// - The [`Epoch`](crate::Epoch) of a shard grows with every lease `acquire` grants, also to the
///   incarnation that held it, and never goes back (also across release). `refresh` keeps it.
/// - `acquire` returns only shards that were asked for.
/// - A runner whose heartbeat (written by `register` and by every `refresh`) is older than the
///   `ttl` it gave is left out of [`RunnerStorage::runners`].
/// - **Machine ids.** `lease_machine_id` hands out the lowest of the 1024 machine ids that no
///   live process holds, with a reservation of timestamps after the previous holder's (see
///   [`MachineLease`]); `renew_machine_id` keeps it; no two live leases share a machine id.
/// - **Cluster parameters** are stored by the first caller and never changed afterwards.
/// - Implementations bound every call by a deadline and report [`StorageError::Timeout`] when it
///   passes.
#[async_trait]
pub trait RunnerStorage: Send + Sync + 'static {
    /// Registers a runner (or registers it again, in the same incarnation) and writes its
    /// heartbeat, which stays live for `ttl` unless refreshed. Refused with
    /// [`StorageError::AddressInUse`] while another incarnation's heartbeat at the same address
    /// is live.
    async fn register(
        &self,
        runner: &Runner,
        incarnation: Incarnation,
        healthy: bool,
        ttl: Duration,
    ) -> Result<(), StorageError>;

    /// Removes a runner's registration, if it is still `runner`'s incarnation (its leases are
    /// not touched: see [`RunnerStorage::release_all`]).
    async fn unregister(&self, runner: &RunnerId) -> Result<(), StorageError>;

    /// The runners whose heartbeat is live, in no particular order.
    async fn runners(&self) -> Result<Vec<RunnerStatus>, StorageError>;

    /// Marks a runner healthy or unhealthy.
    async fn set_runner_health(
        &self,
        address: &RunnerAddress,
        healthy: bool,
    ) -> Result<(), StorageError>;

    /// Replaces the list of runners that `reporter` cannot reach, kept with its registration
    /// (a new incarnation at the address starts with an empty list). Does nothing when
    /// `reporter` is not the registered incarnation at its address.
    async fn report_unreachable(
        &self,
        reporter: &RunnerId,
        unreachable: &[RunnerAddress],
    ) -> Result<(), StorageError>;

    /// Every live lease (held by any runner), in no particular order. Runners read it to route
    /// messages to actual owners and to keep shards where they are when the membership changes.
    async fn leases(&self) -> Result<Vec<ShardLease>, StorageError>;

    /// Takes leases on those of `shards` that are free, expired, or already held by `runner`,
    /// in one round trip, each under a new epoch, and returns every shard of `shards` that
    /// `runner` now holds.
    async fn acquire(
        &self,
        runner: &RunnerId,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<HeldShard>, StorageError>;

    /// Extends the live leases `runner` holds among `shards` and writes its heartbeat; returns
    /// the shards still held. A lapsed lease is not renewed, even if nobody took it: the caller
    /// must stop the shard's entities and acquire it again (under a new epoch).
    async fn refresh(
        &self,
        runner: &RunnerId,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<HeldShard>, StorageError>;

    /// Gives up the leases `runner` holds among `shards`, so another runner can take them at
    /// once.
    async fn release(&self, runner: &RunnerId, shards: &[ShardId]) -> Result<(), StorageError>;

    /// Gives up every lease `runner` holds.
    async fn release_all(&self, runner: &RunnerId) -> Result<(), StorageError>;

    /// Leases a machine id to the process `incarnation` for `ttl`, reserving timestamps up to
    /// `max(now_ms, previous reservation) + ttl` (`now_ms`: the caller's wall clock, milliseconds
    /// since the Unix epoch). An incarnation that already holds one gets it back.
    /// [`StorageError::NoMachineId`] when all 1024 are held.
    async fn lease_machine_id(
        &self,
        incarnation: Incarnation,
        now_ms: u64,
        ttl: Duration,
    ) -> Result<MachineLease, StorageError>;

    /// Renews the lease of `machine_id` held by `incarnation` for `ttl` and extends its
    /// reservation to at least `now_ms + ttl`; returns the end of the reservation, or `None`
    /// when the lease was lost (another process took the machine id after it lapsed).
    async fn renew_machine_id(
        &self,
        machine_id: MachineId,
        incarnation: Incarnation,
        now_ms: u64,
        ttl: Duration,
    ) -> Result<Option<u64>, StorageError>;

    /// Gives `machine_id` up at once (the process is stopping and made no id with a timestamp
    /// after `minted_until`, which becomes the next holder's floor).
    async fn release_machine_id(
        &self,
        machine_id: MachineId,
        incarnation: Incarnation,
        minted_until: u64,
    ) -> Result<(), StorageError>;

    /// The live machine-id leases: which process (incarnation) holds which machine id.
    async fn machine_ids(&self) -> Result<Vec<MachineIdLease>, StorageError>;

    /// Stores `proposed` parameters the cluster does not have yet, and returns every stored
    /// parameter (the caller compares them with its own).
    async fn cluster_parameters(
        &self,
        proposed: &ClusterParameters,
    ) -> Result<ClusterParameters, StorageError>;
}

#[async_trait]
impl<S: RunnerStorage + ?Sized> RunnerStorage for std::sync::Arc<S> {
    async fn register(
        &self,
        runner: &Runner,
        incarnation: Incarnation,
        healthy: bool,
        ttl: Duration,
    ) -> Result<(), StorageError> {
        (**self).register(runner, incarnation, healthy, ttl).await
    }

    async fn unregister(&self, runner: &RunnerId) -> Result<(), StorageError> {
        (**self).unregister(runner).await
    }

    async fn runners(&self) -> Result<Vec<RunnerStatus>, StorageError> {
        (**self).runners().await
    }

    async fn set_runner_health(
        &self,
        address: &RunnerAddress,
        healthy: bool,
    ) -> Result<(), StorageError> {
        (**self).set_runner_health(address, healthy).await
    }

    async fn report_unreachable(
        &self,
        reporter: &RunnerId,
        unreachable: &[RunnerAddress],
    ) -> Result<(), StorageError> {
        (**self).report_unreachable(reporter, unreachable).await
    }

    async fn leases(&self) -> Result<Vec<ShardLease>, StorageError> {
        (**self).leases().await
    }

    async fn acquire(
        &self,
        runner: &RunnerId,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<HeldShard>, StorageError> {
        (**self).acquire(runner, shards, ttl).await
    }

    async fn refresh(
        &self,
        runner: &RunnerId,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<HeldShard>, StorageError> {
        (**self).refresh(runner, shards, ttl).await
    }

    async fn release(&self, runner: &RunnerId, shards: &[ShardId]) -> Result<(), StorageError> {
        (**self).release(runner, shards).await
    }

    async fn release_all(&self, runner: &RunnerId) -> Result<(), StorageError> {
        (**self).release_all(runner).await
    }

    async fn lease_machine_id(
        &self,
        incarnation: Incarnation,
        now_ms: u64,
        ttl: Duration,
    ) -> Result<MachineLease, StorageError> {
        (**self).lease_machine_id(incarnation, now_ms, ttl).await
    }

    async fn renew_machine_id(
        &self,
        machine_id: MachineId,
        incarnation: Incarnation,
        now_ms: u64,
        ttl: Duration,
    ) -> Result<Option<u64>, StorageError> {
        (**self)
            .renew_machine_id(machine_id, incarnation, now_ms, ttl)
            .await
    }

    async fn release_machine_id(
        &self,
        machine_id: MachineId,
        incarnation: Incarnation,
        minted_until: u64,
    ) -> Result<(), StorageError> {
        (**self)
            .release_machine_id(machine_id, incarnation, minted_until)
            .await
    }

    async fn machine_ids(&self) -> Result<Vec<MachineIdLease>, StorageError> {
        (**self).machine_ids().await
    }

    async fn cluster_parameters(
        &self,
        proposed: &ClusterParameters,
    ) -> Result<ClusterParameters, StorageError> {
        (**self).cluster_parameters(proposed).await
    }
}
