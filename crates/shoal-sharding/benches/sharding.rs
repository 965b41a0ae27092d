//! `cargo xtask bench sharding`: local call throughput and latency, and the cost of computing
//! shard assignments. Prints figures; asserts nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use shoal_protocol::{Runner, ShardGroup};
use shoal_sharding::{
    Entity, EntityContext, EntityDefinition, Handler, HandlerError, InProcessNetwork, Message,
    ShardAssignment, Sharding, ShardingConfig,
};
use shoal_storage::{Epoch, MemoryRunnerStorage, RunnerStatus, ShardLease};

struct Counter {
    value: i64,
}

impl Entity for Counter {
    const TYPE: &'static str = "counter";
    type State = ();
    async fn activate(_: &EntityContext, _: &Arc<()>) -> Result<Self, HandlerError> {
        Ok(Counter { value: 0 })
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct Increment {
    by: i64,
}

impl Message for Increment {
    const TAG: &'static str = "increment";
    type Reply = i64;
}

impl Handler<Increment> for Counter {
    async fn handle(&mut self, msg: Increment, _: &EntityContext) -> Result<i64, HandlerError> {
        self.value += msg.by;
        Ok(self.value)
    }
}

const CALLERS: usize = 64;
const WARMUP: Duration = Duration::from_millis(500);
const MEASURE: Duration = Duration::from_secs(3);

async fn local_calls(entities: usize, simulate_serialization: bool) -> (f64, Histogram<u64>) {
    let config = ShardingConfig::builder()
        .simulate_remote_serialization(simulate_serialization)
        .build()
        .unwrap();
    let sharding = Sharding::builder(config)
        .storage(Arc::new(MemoryRunnerStorage::new()))
        .in_process(&InProcessNetwork::new())
        .runner("127.0.0.1:1".parse().unwrap())
        .entity(EntityDefinition::<Counter>::new().handle::<Increment>())
        .start()
        .await
        .unwrap();
    while sharding.active_shards().len() < 300 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ids: Arc<Vec<String>> = Arc::new((0..entities).map(|i| format!("counter-{i}")).collect());
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for caller in 0..CALLERS {
        let client = sharding.client::<Counter>();
        let (ids, measuring, stop) = (ids.clone(), measuring.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).unwrap();
            let mut count = 0u64;
            let mut i = caller;
            while !stop.load(Ordering::Relaxed) {
                let id = &ids[i % ids.len()];
                i += CALLERS;
                let started = Instant::now();
                client.call(id, Increment { by: 1 }).await.unwrap();
                if measuring.load(Ordering::Relaxed) {
                    hist.record(started.elapsed().as_nanos() as u64).unwrap();
                    count += 1;
                }
            }
            (count, hist)
        }));
    }
    tokio::time::sleep(WARMUP).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(MEASURE).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut hist = Histogram::<u64>::new(3).unwrap();
    for t in tasks {
        let (count, h) = t.await.unwrap();
        total += count;
        hist.add(h).unwrap();
    }
    sharding.shutdown().await;
    (total as f64 / elapsed.as_secs_f64(), hist)
}

fn micros(nanos: u64) -> f64 {
    nanos as f64 / 1000.0
}

fn runtime(kind: &str) -> tokio::runtime::Runtime {
    match kind {
        "current_thread" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        _ => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    }
}

fn assignment_cost(shards: u32, runners: usize) {
    let statuses: Vec<RunnerStatus> = (0..runners)
        .map(|i| RunnerStatus {
            runner: Runner::new(
                format!("10.0.{}.{}:34431", i / 256, i % 256)
                    .parse()
                    .unwrap(),
                [ShardGroup::default_group()],
                NonZeroU32::MIN,
            ),
            incarnation: shoal_protocol::Incarnation::from_raw(i as u64 + 1),
            healthy: true,
            unreachable: Vec::new(),
        })
        .collect();
    let groups = [ShardGroup::default_group()];
    let n = NonZeroU32::new(shards).unwrap();
    let rounds = 20;
    let started = Instant::now();
    let mut cold = None;
    for _ in 0..rounds {
        cold = Some(ShardAssignment::compute(n, &groups, &statuses, &[]));
    }
    let cold_time = started.elapsed() / rounds;
    let leases: Vec<ShardLease> = cold
        .unwrap()
        .iter()
        .filter_map(|(shard, owner)| {
            owner.map(|owner| ShardLease {
                shard,
                owner: owner.clone(),
                incarnation: shoal_protocol::Incarnation::from_raw(1),
                epoch: Epoch(1),
                expires_in: std::time::Duration::from_secs(1),
            })
        })
        .collect();
    let started = Instant::now();
    for _ in 0..rounds {
        let _ = ShardAssignment::compute(n, &groups, &statuses, &leases);
    }
    let warm_time = started.elapsed() / rounds;
    println!(
        "  {shards:>5} shards / {runners} runners: from scratch {:>8.2} ms, steady state {:>8.2} ms",
        cold_time.as_secs_f64() * 1000.0,
        warm_time.as_secs_f64() * 1000.0
    );
}

fn main() {
    println!("shoal-sharding benchmarks ({CALLERS} concurrent callers, {MEASURE:?} per figure)");
    println!("\nlocal calls (typed, in process):");
    println!(
        "  {:<16} {:<14} {:>10} {:>12} {:>10} {:>10}",
        "runtime", "entities", "serialize", "calls/s", "p50 us", "p99 us"
    );
    for kind in ["multi_thread(2)", "current_thread"] {
        for (entities, simulate) in [(1, false), (10_000, false), (10_000, true)] {
            let (rate, hist) = runtime(kind).block_on(local_calls(entities, simulate));
            println!(
                "  {:<16} {:<14} {:>10} {:>12.0} {:>10.1} {:>10.1}",
                kind,
                entities,
                if simulate { "json" } else { "none" },
                rate,
                micros(hist.value_at_quantile(0.50)),
                micros(hist.value_at_quantile(0.99))
            );
        }
    }
    println!("\nassignment computation:");
    assignment_cost(300, 100);
    assignment_cost(3000, 100);
}
