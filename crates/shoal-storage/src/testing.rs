//! Fault injection for tests of code that sits on top of storage.
//!
//! [`FaultyRunnerStorage`] wraps any [`RunnerStorage`] and, on command, makes every call fail or
//! hang — the two ways lock storage misbehaves in production (a refused connection; a query stuck
//! on a dead connection, Effect #6508).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use shoal_protocol::{Incarnation, MachineId, Runner, RunnerAddress, RunnerId, ShardId};
use tokio::sync::watch;

use crate::cluster::ClusterParameters;
use crate::error::StorageError;
use crate::lease::{HeldShard, MachineIdLease, MachineLease, ShardLease};
use crate::runner_storage::{RunnerStatus, RunnerStorage};

/// How a [`FaultyRunnerStorage`] behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    /// Calls pass through to the wrapped storage.
    None = 0,
    /// Calls fail at once with a backend error.
    Fail = 1,
    /// Calls never complete (until the fault is cleared; then they proceed).
    Hang = 2,
}

/// A [`RunnerStorage`] that can be told to fail or hang. Clones share the fault switch.
#[derive(Debug, Clone)]
pub struct FaultyRunnerStorage<S> {
    inner: S,
    fault: Arc<AtomicU8>,
    changed: Arc<watch::Sender<()>>,
}

/// The error injected by [`Fault::Fail`].
#[derive(Debug, thiserror::Error)]
#[error("injected storage fault")]
pub struct InjectedFault;

impl<S> FaultyRunnerStorage<S> {
    /// Wraps `inner`, initially without faults.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            fault: Arc::new(AtomicU8::new(Fault::None as u8)),
            changed: Arc::new(watch::channel(()).0),
        }
    }

    /// Sets the fault mode for subsequent (and currently hanging) calls.
    pub fn set_fault(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
        self.changed.send_replace(());
    }

    /// The current fault mode.
    pub fn fault(&self) -> Fault {
        match self.fault.load(Ordering::SeqCst) {
            1 => Fault::Fail,
            2 => Fault::Hang,
            _ => Fault::None,
        }
    }

    /// The wrapped storage.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    async fn gate(&self, operation: &'static str) -> Result<(), StorageError> {
        let mut changed = self.changed.subscribe();
        loop {
            match self.fault() {
                Fault::None => return Ok(()),
                Fault::Fail => return Err(StorageError::backend(operation, InjectedFault)),
                Fault::Hang => {
                    // Wait until the mode changes; a dropped sender cannot happen while `self`
                    // lives, but treat it as "hang forever" all the same.
                    if changed.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }
}

#[async_trait]
impl<S: RunnerStorage> RunnerStorage for FaultyRunnerStorage<S> {
    async fn register(
        &self,
        runner: &Runner,
        incarnation: Incarnation,
        healthy: bool,
        ttl: Duration,
    ) -> Result<(), StorageError> {
        self.gate("register").await?;
        self.inner.register(runner, incarnation, healthy, ttl).await
    }

    async fn unregister(&self, runner: &RunnerId) -> Result<(), StorageError> {
        self.gate("unregister").await?;
        self.inner.unregister(runner).await
    }

    async fn runners(&self) -> Result<Vec<RunnerStatus>, StorageError> {
        self.gate("runners").await?;
        self.inner.runners().await
    }

    async fn set_runner_health(
        &self,
        address: &RunnerAddress,
        healthy: bool,
    ) -> Result<(), StorageError> {
        self.gate("set_runner_health").await?;
        self.inner.set_runner_health(address, healthy).await
    }

    async fn report_unreachable(
        &self,
        reporter: &RunnerId,
        unreachable: &[RunnerAddress],
    ) -> Result<(), StorageError> {
        self.gate("report_unreachable").await?;
        self.inner.report_unreachable(reporter, unreachable).await
    }

    async fn leases(&self) -> Result<Vec<ShardLease>, StorageError> {
        self.gate("leases").await?;
        self.inner.leases().await
    }

    async fn acquire(
        &self,
        runner: &RunnerId,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<HeldShard>, StorageError> {
        self.gate("acquire").await?;
        self.inner.acquire(runner, shards, ttl).await
    }

    async fn refresh(
        &self,
        runner: &RunnerId,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<HeldShard>, StorageError> {
        self.gate("refresh").await?;
        self.inner.refresh(runner, shards, ttl).await
    }

    async fn release(&self, runner: &RunnerId, shards: &[ShardId]) -> Result<(), StorageError> {
        self.gate("release").await?;
        self.inner.release(runner, shards).await
    }

    async fn release_all(&self, runner: &RunnerId) -> Result<(), StorageError> {
        self.gate("release_all").await?;
        self.inner.release_all(runner).await
    }

    async fn lease_machine_id(
        &self,
        incarnation: Incarnation,
        now_ms: u64,
        ttl: Duration,
    ) -> Result<MachineLease, StorageError> {
        self.gate("lease_machine_id").await?;
        self.inner.lease_machine_id(incarnation, now_ms, ttl).await
    }

    async fn renew_machine_id(
        &self,
        machine_id: MachineId,
        incarnation: Incarnation,
        now_ms: u64,
        ttl: Duration,
    ) -> Result<Option<u64>, StorageError> {
        self.gate("renew_machine_id").await?;
        self.inner
            .renew_machine_id(machine_id, incarnation, now_ms, ttl)
            .await
    }

    async fn release_machine_id(
        &self,
        machine_id: MachineId,
        incarnation: Incarnation,
        minted_until: u64,
    ) -> Result<(), StorageError> {
        self.gate("release_machine_id").await?;
        self.inner
            .release_machine_id(machine_id, incarnation, minted_until)
            .await
    }

    async fn machine_ids(&self) -> Result<Vec<MachineIdLease>, StorageError> {
        self.gate("machine_ids").await?;
        self.inner.machine_ids().await
    }

    async fn cluster_parameters(
        &self,
        proposed: &ClusterParameters,
    ) -> Result<ClusterParameters, StorageError> {
        self.gate("cluster_parameters").await?;
        self.inner.cluster_parameters(proposed).await
    }
}
