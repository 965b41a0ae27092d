//! The string-level [`EncodedRunnerStorage`] and its adapter to the typed [`RunnerStorage`].
//!
//! Backends that store text (SQL tables, key-value stores) implement the encoded trait; wrapping
//! one in [`Typed`] gives a [`RunnerStorage`]. Decoding is strict: a stored runner or shard that
//! does not decode is reported as [`StorageError::Malformed`] naming the row, never skipped.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use shoal_protocol::{Incarnation, MachineId, Runner, RunnerAddress, RunnerId, ShardId};

use crate::cluster::ClusterParameters;
use crate::error::StorageError;
use crate::lease::{Epoch, HeldShard, MachineIdLease, MachineLease, ShardLease};
use crate::runner_storage::{RunnerStatus, RunnerStorage};

/// A stored runner row: its address text, its runner JSON, its incarnation and its health flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRunner {
    /// The address text (the row's key).
    pub address: String,
    /// The runner's JSON encoding ([`Runner::to_json`]).
    pub runner: String,
    /// The incarnation registered, as stored (the same 64 bits, signed).
    pub incarnation: i64,
    /// Health flag.
    pub healthy: bool,
    /// The addresses (text) this runner reported unreachable, one per line.
    pub unreachable: String,
}

/// A live lease as stored: `(shard text, owner address text, owner incarnation, epoch,
/// milliseconds left by the database clock)`.
pub type EncodedLease = (String, String, i64, i64, i64);

/// [`RunnerStorage`] over text and integers: addresses in their text form, runners as JSON,
/// shards as `group:id`, incarnations, machine ids and epochs as signed 64-bit integers. Same
/// contract as [`RunnerStorage`].
#[async_trait]
pub trait EncodedRunnerStorage: Send + Sync + 'static {
    /// See [`RunnerStorage::register`]; `runner` is the runner's JSON. `Ok(Some((holder,
    /// remaining_ms)))` when another incarnation's heartbeat at `address` is live (nothing was
    /// written).
    async fn register(
        &self,
        address: &str,
        runner: &str,
        incarnation: i64,
        healthy: bool,
        ttl: Duration,
    ) -> Result<Option<(i64, i64)>, StorageError>;

    /// See [`RunnerStorage::unregister`].
    async fn unregister(&self, address: &str, incarnation: i64) -> Result<(), StorageError>;

    /// See [`RunnerStorage::runners`].
    async fn runners(&self) -> Result<Vec<EncodedRunner>, StorageError>;

    /// See [`RunnerStorage::set_runner_health`].
    async fn set_runner_health(&self, address: &str, healthy: bool) -> Result<(), StorageError>;

    /// See [`RunnerStorage::report_unreachable`]; `unreachable` holds one address per line.
    async fn report_unreachable(
        &self,
        address: &str,
        incarnation: i64,
        unreachable: &str,
    ) -> Result<(), StorageError>;

    /// See [`RunnerStorage::leases`].
    async fn leases(&self) -> Result<Vec<EncodedLease>, StorageError>;

    /// See [`RunnerStorage::acquire`]; returns `(shard text, epoch)` pairs.
    async fn acquire(
        &self,
        address: &str,
        incarnation: i64,
        shards: &[String],
        ttl: Duration,
    ) -> Result<Vec<(String, i64)>, StorageError>;

    /// See [`RunnerStorage::refresh`]; returns `(shard text, epoch)` pairs.
    async fn refresh(
        &self,
        address: &str,
        incarnation: i64,
        shards: &[String],
        ttl: Duration,
    ) -> Result<Vec<(String, i64)>, StorageError>;

    /// See [`RunnerStorage::release`].
    async fn release(
        &self,
        address: &str,
        incarnation: i64,
        shards: &[String],
    ) -> Result<(), StorageError>;

    /// See [`RunnerStorage::release_all`].
    async fn release_all(&self, address: &str, incarnation: i64) -> Result<(), StorageError>;

    /// See [`RunnerStorage::lease_machine_id`]; returns `(machine id, floor, reserved until)`,
    /// or `None` when every machine id is held.
    async fn lease_machine_id(
        &self,
        incarnation: i64,
        now_ms: i64,
        ttl: Duration,
    ) -> Result<Option<(i64, i64, i64)>, StorageError>;

    /// See [`RunnerStorage::renew_machine_id`].
    async fn renew_machine_id(
        &self,
        machine_id: i64,
        incarnation: i64,
        now_ms: i64,
        ttl: Duration,
    ) -> Result<Option<i64>, StorageError>;

    /// See [`RunnerStorage::release_machine_id`].
    async fn release_machine_id(
        &self,
        machine_id: i64,
        incarnation: i64,
        minted_until: i64,
    ) -> Result<(), StorageError>;

    /// See [`RunnerStorage::machine_ids`]; `(machine id, incarnation)` pairs.
    async fn machine_ids(&self) -> Result<Vec<(i64, i64)>, StorageError>;

    /// See [`RunnerStorage::cluster_parameters`]; `(name, value)` pairs.
    async fn cluster_parameters(
        &self,
        proposed: &[(String, String)],
    ) -> Result<Vec<(String, String)>, StorageError>;
}

/// An incarnation as stored (the same 64 bits, signed).
pub(crate) fn db_incarnation(incarnation: Incarnation) -> i64 {
    incarnation.raw() as i64
}

/// A stored incarnation.
pub(crate) fn incarnation(stored: i64) -> Incarnation {
    Incarnation::from_raw(stored as u64)
}

/// Wall-clock milliseconds as stored.
fn db_ms(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// Stored milliseconds (negative values are clamped to 0: nothing to reserve below it).
fn from_db_ms(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0)
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
        incarnation: Incarnation,
        healthy: bool,
        ttl: Duration,
    ) -> Result<(), StorageError> {
        let held = self
            .0
            .register(
                runner.address.as_str(),
                &runner.to_json(),
                db_incarnation(incarnation),
                healthy,
                ttl,
            )
            .await?;
        match held {
            None => Ok(()),
            Some((holder, remaining_ms)) => Err(StorageError::AddressInUse {
                address: runner.address.clone(),
                holder: self::incarnation(holder),
                expires_in: Duration::from_millis(from_db_ms(remaining_ms)),
            }),
        }
    }

    async fn unregister(&self, runner: &RunnerId) -> Result<(), StorageError> {
        self.0
            .unregister(runner.address.as_str(), db_incarnation(runner.incarnation))
            .await
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
                let unreachable = row
                    .unreachable
                    .lines()
                    .filter(|line| !line.is_empty())
                    .map(|line| {
                        line.parse::<RunnerAddress>()
                            .map_err(|e| StorageError::Malformed {
                                what: format!("runner row for address {:?}", row.address),
                                detail: format!("reported unreachable address {line:?}: {e}"),
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(RunnerStatus {
                    runner,
                    incarnation: incarnation(row.incarnation),
                    healthy: row.healthy,
                    unreachable,
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

    async fn report_unreachable(
        &self,
        reporter: &RunnerId,
        unreachable: &[RunnerAddress],
    ) -> Result<(), StorageError> {
        let mut text = String::new();
        for address in unreachable {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(address.as_str());
        }
        self.0
            .report_unreachable(
                reporter.address.as_str(),
                db_incarnation(reporter.incarnation),
                &text,
            )
            .await
    }

    async fn leases(&self) -> Result<Vec<ShardLease>, StorageError> {
        let rows = self.0.leases().await?;
        rows.into_iter()
            .map(
                |(shard_text, owner_text, owner_incarnation, epoch, left_ms)| {
                    let malformed = |detail: String| StorageError::Malformed {
                        what: format!("shard lease row {shard_text:?}"),
                        detail,
                    };
                    let shard: ShardId =
                        shard_text.parse().map_err(|e| malformed(format!("{e}")))?;
                    let owner: RunnerAddress = owner_text
                        .parse()
                        .map_err(|e| malformed(format!("owner: {e}")))?;
                    let epoch = u64::try_from(epoch)
                        .map_err(|_| malformed(format!("negative epoch {epoch}")))?;
                    Ok(ShardLease {
                        shard,
                        owner,
                        incarnation: incarnation(owner_incarnation),
                        epoch: Epoch(epoch),
                        // Rounded up: a lease listed as live has at least a millisecond left.
                        expires_in: Duration::from_millis(
                            u64::try_from(left_ms).unwrap_or(0).max(1),
                        ),
                    })
                },
            )
            .collect()
    }

    async fn acquire(
        &self,
        runner: &RunnerId,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<HeldShard>, StorageError> {
        let rows = self
            .0
            .acquire(
                runner.address.as_str(),
                db_incarnation(runner.incarnation),
                &shard_texts(shards),
                ttl,
            )
            .await?;
        decode_held("acquire", shards, rows)
    }

    async fn refresh(
        &self,
        runner: &RunnerId,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<HeldShard>, StorageError> {
        let rows = self
            .0
            .refresh(
                runner.address.as_str(),
                db_incarnation(runner.incarnation),
                &shard_texts(shards),
                ttl,
            )
            .await?;
        decode_held("refresh", shards, rows)
    }

    async fn release(&self, runner: &RunnerId, shards: &[ShardId]) -> Result<(), StorageError> {
        self.0
            .release(
                runner.address.as_str(),
                db_incarnation(runner.incarnation),
                &shard_texts(shards),
            )
            .await
    }

    async fn release_all(&self, runner: &RunnerId) -> Result<(), StorageError> {
        self.0
            .release_all(runner.address.as_str(), db_incarnation(runner.incarnation))
            .await
    }

    async fn lease_machine_id(
        &self,
        incarnation: Incarnation,
        now_ms: u64,
        ttl: Duration,
    ) -> Result<MachineLease, StorageError> {
        let (machine, floor, reserved_until) = self
            .0
            .lease_machine_id(db_incarnation(incarnation), db_ms(now_ms), ttl)
            .await?
            .ok_or(StorageError::NoMachineId)?;
        if !(0..1024).contains(&machine) {
            return Err(StorageError::Malformed {
                what: format!("machine id row {machine}"),
                detail: "machine ids are 0 to 1023".to_owned(),
            });
        }
        Ok(MachineLease {
            machine_id: MachineId(machine),
            floor: from_db_ms(floor),
            reserved_until: from_db_ms(reserved_until),
        })
    }

    async fn renew_machine_id(
        &self,
        machine_id: MachineId,
        incarnation: Incarnation,
        now_ms: u64,
        ttl: Duration,
    ) -> Result<Option<u64>, StorageError> {
        let reserved = self
            .0
            .renew_machine_id(
                machine_id.0,
                db_incarnation(incarnation),
                db_ms(now_ms),
                ttl,
            )
            .await?;
        Ok(reserved.map(from_db_ms))
    }

    async fn release_machine_id(
        &self,
        machine_id: MachineId,
        incarnation: Incarnation,
        minted_until: u64,
    ) -> Result<(), StorageError> {
        self.0
            .release_machine_id(
                machine_id.0,
                db_incarnation(incarnation),
                db_ms(minted_until),
            )
            .await
    }

    async fn machine_ids(&self) -> Result<Vec<MachineIdLease>, StorageError> {
        Ok(self
            .0
            .machine_ids()
            .await?
            .into_iter()
            .map(|(machine, holder)| MachineIdLease {
                machine_id: MachineId(machine),
                incarnation: incarnation(holder),
            })
            .collect())
    }

    async fn cluster_parameters(
        &self,
        proposed: &ClusterParameters,
    ) -> Result<ClusterParameters, StorageError> {
        let pairs: Vec<(String, String)> = proposed
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Ok(self
            .0
            .cluster_parameters(&pairs)
            .await?
            .into_iter()
            .collect())
    }
}
