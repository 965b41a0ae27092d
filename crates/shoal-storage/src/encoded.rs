//! The string-level [`EncodedRunnerStorage`] and its adapter to the typed [`RunnerStorage`].
//!
//! Backends that store text (SQL tables, key-value stores) implement the encoded trait; wrapping
//! one in [`Typed`] gives a [`RunnerStorage`]. Decoding is strict: a stored runner or shard that
//! does not decode is reported as [`StorageError::Malformed`] naming the row, never skipped.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use shoal_protocol::{MachineId, Runner, RunnerAddress, ShardId};

use crate::error::StorageError;
use crate::lease::{Epoch, HeldShard, ShardLease};
use crate::runner_storage::{RunnerStatus, RunnerStorage};

/// A stored runner row: its address text, its runner JSON and its health flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRunner {
    /// The address text (the row's key).
    pub address: String,
    /// The runner's JSON encoding ([`Runner::to_json`]).
    pub runner: String,
    /// Health flag.
    pub healthy: bool,
}

/// [`RunnerStorage`] over text: addresses in their text form, runners as JSON, shards as
/// `group:id`, machine ids and epochs as integers. Same contract as [`RunnerStorage`].
#[async_trait]
pub trait EncodedRunnerStorage: Send + Sync + 'static {
    /// See [`RunnerStorage::register`]; `runner` is the runner's JSON.
    async fn register(
        &self,
        address: &str,
        runner: &str,
        healthy: bool,
        ttl: Duration,
    ) -> Result<i64, StorageError>;

    /// See [`RunnerStorage::unregister`].
    async fn unregister(&self, address: &str) -> Result<(), StorageError>;

    /// See [`RunnerStorage::runners`].
    async fn runners(&self) -> Result<Vec<EncodedRunner>, StorageError>;

    /// See [`RunnerStorage::set_runner_health`].
    async fn set_runner_health(&self, address: &str, healthy: bool) -> Result<(), StorageError>;

    /// See [`RunnerStorage::leases`]; returns `(shard text, owner address text, epoch)` triples
    /// of the live leases.
    async fn leases(&self) -> Result<Vec<(String, String, i64)>, StorageError>;

    /// See [`RunnerStorage::acquire`]; returns `(shard text, epoch)` pairs.
    async fn acquire(
        &self,
        address: &str,
        shards: &[String],
        ttl: Duration,
    ) -> Result<Vec<(String, i64)>, StorageError>;

    /// See [`RunnerStorage::refresh`]; returns `(shard text, epoch)` pairs.
    async fn refresh(
        &self,
        address: &str,
        shards: &[String],
        ttl: Duration,
    ) -> Result<Vec<(String, i64)>, StorageError>;

    /// See [`RunnerStorage::release`].
    async fn release(&self, address: &str, shards: &[String]) -> Result<(), StorageError>;

    /// See [`RunnerStorage::release_all`].
    async fn release_all(&self, address: &str) -> Result<(), StorageError>;
}

/// Adapts an [`EncodedRunnerStorage`] to the typed [`RunnerStorage`].
#[derive(Debug, Clone)]
pub struct Typed<E>(pub E);

impl<E> Typed<E> {
    /// The wrapped encoded storage.
    pub fn inner(&self) -> &E {
        &self.0
    }
}

fn shard_texts(shards: &[ShardId]) -> Vec<String> {
    shards.iter().map(ToString::to_string).collect()
}

fn decode_held(
    operation: &'static str,
    requested: &[ShardId],
    rows: Vec<(String, i64)>,
) -> Result<Vec<HeldShard>, StorageError> {
    let requested: HashSet<&ShardId> = requested.iter().collect();
    rows.into_iter()
        .map(|(text, epoch)| {
            let shard: ShardId = text.parse().map_err(|e| StorageError::Malformed {
                what: format!("shard lease row {text:?}"),
                detail: format!("{e}"),
            })?;
            let epoch = u64::try_from(epoch).map_err(|_| StorageError::Malformed {
                what: format!("shard lease row {text:?}"),
                detail: format!("negative epoch {epoch}"),
            })?;
            // A backend that returns a shard nobody asked for has a bug (Effect #7859); refuse
            // to pass it on rather than start entities for it.
            if !requested.contains(&shard) {
                return Err(StorageError::Malformed {
                    what: format!("result of `{operation}`"),
                    detail: format!("shard {shard} was returned but not requested"),
                });
            }
            Ok(HeldShard {
                shard,
                epoch: Epoch(epoch),
            })
        })
        .collect()
}

#[async_trait]
impl<E: EncodedRunnerStorage> RunnerStorage for Typed<E> {
    async fn register(
        &self,
        runner: &Runner,
        healthy: bool,
        ttl: Duration,
    ) -> Result<MachineId, StorageError> {
        let id = self
            .0
            .register(runner.address.as_str(), &runner.to_json(), healthy, ttl)
            .await?;
        Ok(MachineId(id))
    }

    async fn unregister(&self, address: &RunnerAddress) -> Result<(), StorageError> {
        self.0.unregister(address.as_str()).await
    }

    async fn runners(&self) -> Result<Vec<RunnerStatus>, StorageError> {
        let rows = self.0.runners().await?;
        rows.into_iter()
            .map(|row| {
                let runner =
                    Runner::from_json(&row.runner).map_err(|e| StorageError::Malformed {
                        what: format!("runner row for address {:?}", row.address),
                        detail: format!("runner JSON does not decode: {e}"),
                    })?;
                if runner.address.as_str() != row.address {
                    return Err(StorageError::Malformed {
                        what: format!("runner row for address {:?}", row.address),
                        detail: format!("runner JSON names another address {}", runner.address),
                    });
                }
                Ok(RunnerStatus {
                    runner,
                    healthy: row.healthy,
                })
            })
            .collect()
    }

    async fn set_runner_health(
        &self,
        address: &RunnerAddress,
        healthy: bool,
    ) -> Result<(), StorageError> {
        self.0.set_runner_health(address.as_str(), healthy).await
    }

    async fn leases(&self) -> Result<Vec<ShardLease>, StorageError> {
        let rows = self.0.leases().await?;
        rows.into_iter()
            .map(|(shard_text, owner_text, epoch)| {
                let malformed = |detail: String| StorageError::Malformed {
                    what: format!("shard lease row {shard_text:?}"),
                    detail,
                };
                let shard: ShardId = shard_text.parse().map_err(|e| malformed(format!("{e}")))?;
                let owner: RunnerAddress = owner_text
                    .parse()
                    .map_err(|e| malformed(format!("owner: {e}")))?;
                let epoch = u64::try_from(epoch)
                    .map_err(|_| malformed(format!("negative epoch {epoch}")))?;
                Ok(ShardLease {
                    shard,
                    owner,
                    epoch: Epoch(epoch),
                })
            })
            .collect()
    }

    async fn acquire(
        &self,
        address: &RunnerAddress,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<HeldShard>, StorageError> {
        let rows = self
            .0
            .acquire(address.as_str(), &shard_texts(shards), ttl)
            .await?;
        decode_held("acquire", shards, rows)
    }

    async fn refresh(
        &self,
        address: &RunnerAddress,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<HeldShard>, StorageError> {
        let rows = self
            .0
            .refresh(address.as_str(), &shard_texts(shards), ttl)
            .await?;
        decode_held("refresh", shards, rows)
    }

    async fn release(
        &self,
        address: &RunnerAddress,
        shards: &[ShardId],
    ) -> Result<(), StorageError> {
        self.0.release(address.as_str(), &shard_texts(shards)).await
    }

    async fn release_all(&self, address: &RunnerAddress) -> Result<(), StorageError> {
        self.0.release_all(address.as_str()).await
    }
}
