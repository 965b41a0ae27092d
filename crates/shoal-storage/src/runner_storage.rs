//! Runner membership and shard leases: the typed [`RunnerStorage`] seam.

use std::time::Duration;

use async_trait::async_trait;
use shoal_protocol::{MachineId, Runner, RunnerAddress, ShardId};

use crate::error::StorageError;
use crate::lease::{HeldShard, ShardLease};

/// A registered runner and whether it is considered healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerStatus {
    /// The runner's description.
    pub runner: Runner,
    /// `false` once a health check marked it unhealthy; unhealthy runners get no shards.
    pub healthy: bool,
}

/// Where runners register and lease shards. The lease in storage, not any runner's view, is the
/// authority on who owns a shard.
///
/// # Contract
///
/// - Times are compared against the storage's own clock (the database clock for SQL backends),
///   never a runner's.
/// - A shard has at most one live lease. A lease is live until its expiry; `acquire` and
///   `refresh` set the expiry to `now + ttl`.
/// - The [`Epoch`](crate::Epoch) of a shard grows every time a lease is granted to a runner that
///   did not hold it live, and never goes back (also across release).
/// - `acquire` returns only shards that were asked for.
/// - Machine ids are unique and never reused, also when the same address registers again.
/// - A runner whose heartbeat (written by `register` and by every `refresh`) is older than the
///   `ttl` it gave is left out of [`RunnerStorage::runners`].
/// - Implementations bound every call by a deadline and report [`StorageError::Timeout`] when it
///   passes.
#[async_trait]
pub trait RunnerStorage: Send + Sync + 'static {
    /// Registers (or re-registers) a runner and returns a fresh machine id. The runner's
    /// heartbeat is written; it stays listed for `ttl` unless refreshed.
    async fn register(
        &self,
        runner: &Runner,
        healthy: bool,
        ttl: Duration,
    ) -> Result<MachineId, StorageError>;

    /// Removes a runner (its leases are not touched: see [`RunnerStorage::release_all`]).
    async fn unregister(&self, address: &RunnerAddress) -> Result<(), StorageError>;

    /// The runners whose heartbeat is live, in no particular order.
    async fn runners(&self) -> Result<Vec<RunnerStatus>, StorageError>;

    /// Marks a runner healthy or unhealthy.
    async fn set_runner_health(
        &self,
        address: &RunnerAddress,
        healthy: bool,
    ) -> Result<(), StorageError>;

    /// Every live lease (held by any runner), in no particular order. Runners read it to route
    /// messages to actual owners and to keep shards where they are when the membership changes.
    async fn leases(&self) -> Result<Vec<ShardLease>, StorageError>;

    /// Takes leases on those of `shards` that are free, expired, or already held by `address`,
    /// in one round trip, and returns every shard of `shards` that `address` now holds.
    async fn acquire(
        &self,
        address: &RunnerAddress,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<HeldShard>, StorageError>;

    /// Extends the live leases `address` holds among `shards` and writes its heartbeat; returns
    /// the shards still held. A lapsed lease is not renewed, even if nobody took it: the caller
    /// must stop the shard's entities and acquire it again (under a new epoch).
    async fn refresh(
        &self,
        address: &RunnerAddress,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<HeldShard>, StorageError>;

    /// Gives up the leases `address` holds among `shards`, so another runner can take them at
    /// once.
    async fn release(
        &self,
        address: &RunnerAddress,
        shards: &[ShardId],
    ) -> Result<(), StorageError>;

    /// Gives up every lease `address` holds.
    async fn release_all(&self, address: &RunnerAddress) -> Result<(), StorageError>;
}

#[async_trait]
impl<S: RunnerStorage + ?Sized> RunnerStorage for std::sync::Arc<S> {
    async fn register(
        &self,
        runner: &Runner,
        healthy: bool,
        ttl: Duration,
    ) -> Result<MachineId, StorageError> {
        (**self).register(runner, healthy, ttl).await
    }

    async fn unregister(&self, address: &RunnerAddress) -> Result<(), StorageError> {
        (**self).unregister(address).await
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

    async fn leases(&self) -> Result<Vec<ShardLease>, StorageError> {
        (**self).leases().await
    }

    async fn acquire(
        &self,
        address: &RunnerAddress,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<HeldShard>, StorageError> {
        (**self).acquire(address, shards, ttl).await
    }

    async fn refresh(
        &self,
        address: &RunnerAddress,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<HeldShard>, StorageError> {
        (**self).refresh(address, shards, ttl).await
    }

    async fn release(
        &self,
        address: &RunnerAddress,
        shards: &[ShardId],
    ) -> Result<(), StorageError> {
        (**self).release(address, shards).await
    }

    async fn release_all(&self, address: &RunnerAddress) -> Result<(), StorageError> {
        (**self).release_all(address).await
    }
}
