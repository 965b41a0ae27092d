//! This process's identity: the incarnation it started as, and the machine id it stamps into
//! the ids it makes.
//!
//! Every process (runner or client-only) leases a machine id from storage: the lowest of the
//! 1024 that no live process holds, with a reservation of timestamps (see
//! [`shoal_storage::MachineLease`]). The lease is renewed every sixth of [`MACHINE_ID_TTL`], each
//! renewal moving the reservation forward; the id generator refuses to make an id past the end
//! of the reservation. So two live processes never make the same id: not after a thousand
//! restarts, not for a client-only process, not after a freeze longer than the lease (a process
//! that lost its machine id still makes ids only inside its old reservation, which the next
//! holder starts after).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal_protocol::{Incarnation, MachineId, Snowflake, SnowflakeGenerator};
use shoal_storage::{MachineLease, RunnerStorage, StorageError};
use tokio_util::sync::CancellationToken;

pub(crate) use shoal_protocol::IdsExhausted;

/// How long a machine-id lease (and the reservation of timestamps that comes with it) lasts
/// without renewal. Long enough to ride out a storage outage without running out of ids; a
/// crashed process's machine id is free again after it.
pub const MACHINE_ID_TTL: Duration = Duration::from_secs(60);

/// How often the lease is renewed.
const RENEW_EVERY: Duration = Duration::from_secs(10);

/// The wall clock in milliseconds since the Unix epoch (as reservations are kept).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// This process's incarnation and id generator, with the machine-id lease behind it.
pub(crate) struct Identity {
    incarnation: Incarnation,
    ids: SnowflakeGenerator,
    machine: AtomicI64,
    storage: Arc<dyn RunnerStorage>,
    storage_timeout: Duration,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("incarnation", &self.incarnation)
            .field("machine", &self.machine_id())
            .finish_non_exhaustive()
    }
}

/// Leases a machine id for `incarnation`, retrying transient storage failures a few times.
async fn lease(
    storage: &dyn RunnerStorage,
    incarnation: Incarnation,
    timeout: Duration,
) -> Result<MachineLease, StorageError> {
    let mut last = None;
    for attempt in 0..5u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200) * attempt).await;
        }
        let call = storage.lease_machine_id(incarnation, now_ms(), MACHINE_ID_TTL);
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(lease)) => return Ok(lease),
            Ok(Err(error)) if !error.is_unavailable() => return Err(error),
            Ok(Err(error)) => last = Some(error),
            Err(_) => {
                last = Some(StorageError::Timeout {
                    operation: "lease_machine_id",
                    timeout,
                })
            }
        }
    }
    Err(last.unwrap_or(StorageError::Timeout {
        operation: "lease_machine_id",
        timeout,
    }))
}

impl Identity {
    /// A new incarnation with a machine id leased from `storage`.
    pub(crate) async fn start(
        storage: Arc<dyn RunnerStorage>,
        storage_timeout: Duration,
    ) -> Result<Arc<Self>, StorageError> {
        let incarnation = Incarnation::random();
        let leased = lease(&*storage, incarnation, storage_timeout).await?;
        tracing::debug!(%incarnation, machine_id = %leased.machine_id, "machine id leased");
        Ok(Arc::new(Self {
            incarnation,
            ids: SnowflakeGenerator::reserved(
                leased.machine_id,
                leased.floor,
                leased.reserved_until,
            ),
            machine: AtomicI64::new(leased.machine_id.0),
            storage,
            storage_timeout,
        }))
    }

    /// The incarnation this process started as.
    pub(crate) fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// The machine id stamped into new ids.
    pub(crate) fn machine_id(&self) -> MachineId {
        MachineId(self.machine.load(Ordering::Acquire))
    }

    /// A new id, unique in the cluster.
    pub(crate) fn next_id(&self) -> Result<Snowflake, IdsExhausted> {
        self.ids.next_id()
    }

    /// Renews the lease until `cancel` fires.
    pub(crate) async fn keep(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(RENEW_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => self.renew().await,
            }
        }
    }

    async fn renew(&self) {
        let machine = self.machine_id();
        let call =
            self.storage
                .renew_machine_id(machine, self.incarnation, now_ms(), MACHINE_ID_TTL);
        match tokio::time::timeout(self.storage_timeout, call).await {
            Ok(Ok(Some(reserved_until))) => self.ids.extend(machine, reserved_until),
            Ok(Ok(None)) => {
                // The lease lapsed (storage unreachable, or this process frozen, for longer than
                // the lease) and another process took the id: ids made so far stay unique (the
                // other process starts after our reservation); move to a new id.
                tracing::warn!(machine_id = %machine, "the machine id lease was lost; leasing another");
                match lease(&*self.storage, self.incarnation, self.storage_timeout).await {
                    Ok(leased) => {
                        self.ids
                            .switch(leased.machine_id, leased.floor, leased.reserved_until);
                        self.machine.store(leased.machine_id.0, Ordering::Release);
                        tracing::info!(machine_id = %leased.machine_id, "machine id leased");
                    }
                    Err(error) => {
                        tracing::warn!(%error, "leasing a new machine id failed; will retry");
                    }
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "renewing the machine id lease failed; will retry");
            }
            Err(_) => tracing::warn!("renewing the machine id lease timed out; will retry"),
        }
    }

    /// Stops making ids and gives the machine id back, so the next process may use it at once.
    pub(crate) async fn release(&self) {
        let machine = self.machine_id();
        let minted_until = self.ids.close();
        let call = self
            .storage
            .release_machine_id(machine, self.incarnation, minted_until);
        match tokio::time::timeout(self.storage_timeout, call).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "releasing the machine id failed; it lapses on its own");
            }
            Err(_) => tracing::warn!("releasing the machine id timed out; it lapses on its own"),
        }
    }
}
