//! Chaos: runners join, leave, crash and lose their lock storage at random while a client keeps
//! calling entities. Afterwards, the journal proves that no entity ever ran on two runners at
//! once, and the lease log that epochs only grew.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use parking_lot::Mutex;
use shoal_protocol::{Incarnation, MachineId, Runner, RunnerAddress, RunnerId, ShardId};
use shoal_sharding::{CallOptions, Sharding};
use shoal_storage::testing::{Fault, FaultyRunnerStorage};
use shoal_storage::{
    ClusterParameters, HeldShard, MachineIdLease, MachineLease, RunnerStatus, RunnerStorage,
    ShardLease, StorageError,
};
use tokio::time::Instant;

/// Records every lease grant.
struct LeaseLog {
    inner: Arc<dyn RunnerStorage>,
    grants: Mutex<Vec<(Instant, ShardId, RunnerAddress, u64)>>,
}

#[async_trait]
impl RunnerStorage for LeaseLog {
    async fn register(
        &self,
        r: &Runner,
        i: Incarnation,
        h: bool,
        ttl: Duration,
    ) -> Result<(), StorageError> {
        self.inner.register(r, i, h, ttl).await
    }
    async fn unregister(&self, r: &RunnerId) -> Result<(), StorageError> {
        self.inner.unregister(r).await
    }
    async fn runners(&self) -> Result<Vec<RunnerStatus>, StorageError> {
        self.inner.runners().await
    }
    async fn set_runner_health(&self, a: &RunnerAddress, h: bool) -> Result<(), StorageError> {
        self.inner.set_runner_health(a, h).await
    }

    async fn report_unreachable(
        &self,
        reporter: &RunnerId,
        unreachable: &[RunnerAddress],
    ) -> Result<(), StorageError> {
        self.inner.report_unreachable(reporter, unreachable).await
    }
    async fn leases(&self) -> Result<Vec<ShardLease>, StorageError> {
        self.inner.leases().await
    }
    async fn acquire(
        &self,
        r: &RunnerId,
        s: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<HeldShard>, StorageError> {
        let held = self.inner.acquire(r, s, ttl).await?;
        let now = Instant::now();
        let mut grants = self.grants.lock();
        for h in &held {
            grants.push((now, h.shard.clone(), r.address.clone(), h.epoch.0));
        }
        Ok(held)
    }
    async fn refresh(
        &self,
        r: &RunnerId,
        s: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<HeldShard>, StorageError> {
        self.inner.refresh(r, s, ttl).await
    }
    async fn release(&self, r: &RunnerId, s: &[ShardId]) -> Result<(), StorageError> {
        self.inner.release(r, s).await
    }
    async fn release_all(&self, r: &RunnerId) -> Result<(), StorageError> {
        self.inner.release_all(r).await
    }
    async fn lease_machine_id(
        &self,
        i: Incarnation,
        now_ms: u64,
        ttl: Duration,
    ) -> Result<MachineLease, StorageError> {
        self.inner.lease_machine_id(i, now_ms, ttl).await
    }
    async fn renew_machine_id(
        &self,
        m: MachineId,
        i: Incarnation,
        now_ms: u64,
        ttl: Duration,
    ) -> Result<Option<u64>, StorageError> {
        self.inner.renew_machine_id(m, i, now_ms, ttl).await
    }
    async fn release_machine_id(
        &self,
        m: MachineId,
        i: Incarnation,
        minted_until: u64,
    ) -> Result<(), StorageError> {
        self.inner.release_machine_id(m, i, minted_until).await
    }
    async fn machine_ids(&self) -> Result<Vec<MachineIdLease>, StorageError> {
        self.inner.machine_ids().await
    }
    async fn cluster_parameters(
        &self,
        proposed: &ClusterParameters,
    ) -> Result<ClusterParameters, StorageError> {
        self.inner.cluster_parameters(proposed).await
    }
}

/// A small deterministic generator (xorshift64*), so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Member {
    sharding: Sharding,
    storage: Arc<FaultyRunnerStorage<Arc<dyn RunnerStorage>>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_no_shard_ever_has_two_active_owners_under_chaos() {
    chaos(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_no_shard_ever_has_two_active_owners_under_chaos() {
    chaos(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_no_shard_ever_has_two_active_owners_under_chaos() {
    chaos(Backend::Postgres).await;
}

async fn chaos(backend: Backend) {
    // The entities' journal is this test's own (tests of one binary share a process).
    let key = format!("chaos-{backend:?}").to_lowercase();
    let seed: u64 = std::env::var("SHOAL_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_cafe);
    eprintln!("chaos seed {seed} (set SHOAL_CHAOS_SEED to replay)");
    let mut rng = Rng(seed | 1);

    let mut cluster = Cluster::new(backend).await;
    let log = Arc::new(LeaseLog {
        inner: cluster.storage.clone(),
        grants: Mutex::new(Vec::new()),
    });
    let shared: Arc<dyn RunnerStorage> = log.clone();
    let config = config_for(backend).build().unwrap();

    async fn start_member(
        cluster: &mut Cluster,
        shared: &Arc<dyn RunnerStorage>,
        config: &shoal_sharding::ShardingConfig,
    ) -> Member {
        let address = cluster.next_address();
        let storage = Arc::new(FaultyRunnerStorage::new(shared.clone()));
        let sharding = cluster
            .runner_at(
                address,
                config.clone(),
                storage.clone() as Arc<dyn RunnerStorage>,
            )
            .await;
        Member { sharding, storage }
    }
    let mut members: Vec<Member> = Vec::new();
    for _ in 0..3 {
        members.push(start_member(&mut cluster, &shared, &config).await);
    }

    // Load: a client-only process calls 120 entities continuously.
    let client = cluster.client(config.clone()).await;
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut load = Vec::new();
    for worker in 0..8 {
        let counters = client.client::<Counter>();
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        let key = key.clone();
        load.push(tokio::spawn(async move {
            let mut i = worker;
            while !stop.is_cancelled() {
                let id = format!("{key}/{}", i % 120);
                i += 7;
                let options = CallOptions::timeout(Duration::from_secs(3));
                match counters
                    .call_with(&id, Increment { by: 1, work_ms: 3 }, options)
                    .await
                {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }

    let chaos_until = Instant::now() + Duration::from_secs(8);
    let mut faulted: Vec<(usize, Instant)> = Vec::new();
    let mut actions: HashMap<&str, usize> = HashMap::new();
    while Instant::now() < chaos_until {
        tokio::time::sleep(Duration::from_millis(150 + rng.below(350) as u64)).await;
        // Heal faults that have lasted long enough.
        faulted.retain(|(i, until)| {
            if Instant::now() >= *until {
                if let Some(m) = members.get(*i) {
                    m.storage.set_fault(Fault::None);
                }
                false
            } else {
                true
            }
        });
        match rng.below(5) {
            0 if members.len() < 6 => {
                members.push(start_member(&mut cluster, &shared, &config).await);
                *actions.entry("join").or_default() += 1;
            }
            1 if members.len() > 2 => {
                let i = rng.below(members.len());
                faulted.retain(|(f, _)| *f != i);
                let m = members.remove(i);
                m.sharding.shutdown().await;
                *actions.entry("graceful leave").or_default() += 1;
                faulted = faulted
                    .into_iter()
                    .map(|(f, u)| (if f > i { f - 1 } else { f }, u))
                    .collect();
            }
            2 if members.len() > 2 => {
                let i = rng.below(members.len());
                faulted.retain(|(f, _)| *f != i);
                let m = members.remove(i);
                m.sharding.crash();
                *actions.entry("crash").or_default() += 1;
                faulted = faulted
                    .into_iter()
                    .map(|(f, u)| (if f > i { f - 1 } else { f }, u))
                    .collect();
            }
            3 | 4 => {
                let i = rng.below(members.len());
                if !faulted.iter().any(|(f, _)| *f == i) {
                    let fault = if rng.below(2) == 0 {
                        Fault::Fail
                    } else {
                        Fault::Hang
                    };
                    members[i].storage.set_fault(fault);
                    faulted.push((
                        i,
                        Instant::now() + Duration::from_millis(400 + rng.below(1200) as u64),
                    ));
                    *actions.entry("storage fault").or_default() += 1;
                }
            }
            _ => {}
        }
    }
    for m in &members {
        m.storage.set_fault(Fault::None);
    }
    let refs: Vec<&Sharding> = members.iter().map(|m| &m.sharding).collect();
    wait_balanced(&refs, 60).await;
    stop.cancel();
    for l in load {
        l.await.unwrap();
    }
    eprintln!(
        "chaos actions {actions:?}; calls ok {} failed {}",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert!(ok.load(Ordering::Relaxed) > 100, "the cluster kept serving");

    // Every entity answers after the chaos.
    let counters = client.client::<Counter>();
    for i in 0..120 {
        counters.call(&format!("{key}/{i}"), Get).await.unwrap();
    }

    // No entity ever ran on two runners at once.
    let mut entries = journal(&key).entries.lock().clone();
    entries.sort_by_key(|e| (e.entity.clone(), e.start));
    for pair in entries.windows(2) {
        if pair[0].entity == pair[1].entity {
            assert!(
                pair[0].end <= pair[1].start,
                "{} overlapped: {} until {:?}, {} from {:?}",
                pair[0].entity,
                pair[0].runner,
                pair[0].end,
                pair[1].runner,
                pair[1].start
            );
        }
    }

    // Epochs: per shard, every grant to a new owner has a higher epoch; an epoch belongs to one
    // runner only.
    let grants = log.grants.lock().clone();
    let mut by_shard: HashMap<ShardId, Vec<(Instant, RunnerAddress, u64)>> = HashMap::new();
    for (at, shard, runner, epoch) in grants {
        by_shard.entry(shard).or_default().push((at, runner, epoch));
    }
    let mut owner_changes = 0;
    for (shard, mut grants) in by_shard {
        grants.sort_by_key(|g| g.0);
        let mut owner_of_epoch: HashMap<u64, RunnerAddress> = HashMap::new();
        for pair in grants.windows(2) {
            assert!(pair[1].2 >= pair[0].2, "epoch of {shard} went back");
            if pair[1].1 != pair[0].1 {
                owner_changes += 1;
                assert!(
                    pair[1].2 > pair[0].2,
                    "{shard} changed owner without a new epoch"
                );
            }
        }
        for (_, runner, epoch) in grants {
            let owner = owner_of_epoch
                .entry(epoch)
                .or_insert_with(|| runner.clone());
            assert_eq!(
                *owner, runner,
                "{shard} epoch {epoch} granted to two runners"
            );
        }
    }
    assert!(owner_changes > 0, "the chaos moved shards");

    client.shutdown().await;
    for m in members {
        m.sharding.shutdown().await;
    }
}
