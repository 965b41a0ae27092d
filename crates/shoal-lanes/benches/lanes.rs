//! `cargo xtask bench lanes`: RPC lane round trips over gRPC (loopback, one process serving, one
//! calling) and event lane throughput over the Postgres and memory queues. Prints figures; asserts
//! nothing about timing.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use shoal_lanes::*;

const ED_PRIVATE: &[u8] = include_bytes!("../tests/keys/ed25519-private.pem");
const ED_PUBLIC: &[u8] = include_bytes!("../tests/keys/ed25519-public.pem");
const SECRET: &[u8] = b"bench-only-hmac-secret-0123456789abcdef";

const ECHO: TaskDef<Vec<u64>, u64> = TaskDef::new("bench:sum");
const TICK: EventDef<u64> = EventDef::new("bench:tick");

async fn rpc_pair(server_auth: LaneAuth, caller_auth: LaneAuth) -> (Lanes, Lanes) {
    let mut registry = Registry::new();
    registry.task(ECHO, |v: Vec<u64>, _cx| async move {
        Ok::<_, TaskFailure<NoError>>(v.iter().sum())
    });
    let lane = || RpcLane::new("bench").apply_to([ECHO]);
    let server = Lanes::builder(
        registry,
        Topology::new()
            .rpc_lane(lane())
            .profile("server", Profile::new().serve("bench"))
            .bind_rpc(RpcBinding::new("bench").auth(server_auth)),
        "server",
    )
    .exposure(ExposureConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        EdgeAuth::Tokens(vec!["edge".into()]),
    ))
    .start()
    .await
    .unwrap();
    let communicator =
        GrpcCommunicator::lazy(&format!("http://{}", server.exposure_addr().unwrap()))
            .unwrap()
            .edge_token("edge")
            .unwrap();
    let mut registry = Registry::new();
    registry.declare_task(ECHO);
    let caller = Lanes::builder(
        registry,
        Topology::new()
            .rpc_lane(lane())
            .profile("caller", Profile::new())
            .bind_rpc(
                RpcBinding::new("bench")
                    .auth(caller_auth)
                    .communicator(Arc::new(communicator)),
            ),
        "caller",
    )
    .start()
    .await
    .unwrap();
    (server, caller)
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

async fn bench_rpc(name: &str, server_auth: LaneAuth, caller_auth: LaneAuth) {
    let (server, caller) = rpc_pair(server_auth, caller_auth).await;
    let caller = Arc::new(caller);
    let input: Vec<u64> = (0..16).collect();
    for _ in 0..300 {
        caller.run_task(ECHO, input.clone()).await.unwrap();
    }
    let calls = 3000;
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let started = Instant::now();
    for _ in 0..calls {
        let t = Instant::now();
        let sum = caller.run_task(ECHO, input.clone()).await.unwrap();
        hist.record(t.elapsed().as_nanos() as u64).unwrap();
        assert_eq!(sum, 120);
    }
    let elapsed = started.elapsed();
    println!(
        "rpc  {name:<8} sequential   {calls:>6} calls  {:>9.0} round trips/s  p50 {:>7.1} µs  p99 {:>7.1} µs",
        calls as f64 / elapsed.as_secs_f64(),
        us(&hist, 0.50),
        us(&hist, 0.99)
    );

    let workers = 32;
    let per_worker = 300;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let caller = Arc::clone(&caller);
        let input = input.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).unwrap();
            for _ in 0..per_worker {
                let t = Instant::now();
                caller.run_task(ECHO, input.clone()).await.unwrap();
                hist.record(t.elapsed().as_nanos() as u64).unwrap();
            }
            hist
        }));
    }
    let mut all = Histogram::<u64>::new(3).unwrap();
    for t in tasks {
        all.add(t.await.unwrap()).unwrap();
    }
    let elapsed = started.elapsed();
    let total = workers * per_worker;
    println!(
        "rpc  {name:<8} {workers} in flight  {total:>6} calls  {:>9.0} round trips/s  p50 {:>7.1} µs  p99 {:>7.1} µs",
        total as f64 / elapsed.as_secs_f64(),
        us(&all, 0.50),
        us(&all, 0.99)
    );
    Arc::try_unwrap(caller).unwrap().shutdown().await;
    server.shutdown().await;
}

async fn bench_events(name: &str, queue: Arc<dyn EventQueue>, events: u64, prefetch: usize) {
    let producers = 16;
    let events = events / producers * producers;
    let handled = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let mut registry = Registry::new();
    {
        let (handled, done) = (handled.clone(), done.clone());
        registry.on(TICK, "count", move |_n: u64, _cx| {
            let (handled, done) = (handled.clone(), done.clone());
            async move {
                if handled.fetch_add(1, Ordering::SeqCst) + 1 == events {
                    done.notify_one();
                }
                Ok(())
            }
        });
    }
    let auth = LaneAuth::hmac(SECRET).unwrap();
    let topology = |queue: Arc<dyn EventQueue>, auth: LaneAuth| {
        Topology::new()
            .event_lane(EventLane::new("ticks").apply_to([TICK]))
            .profile("producer", Profile::new())
            .profile("worker", Profile::new().consume("ticks"))
            .bind_event(
                EventBinding::new("ticks", queue)
                    .prefetch(prefetch)
                    .max_attempts(3)
                    .auth(auth),
            )
    };
    let mut producer_registry = Registry::new();
    producer_registry.declare_event(TICK);
    let producer = Arc::new(
        Lanes::builder(
            producer_registry,
            topology(queue.clone(), auth.clone()),
            "producer",
        )
        .start()
        .await
        .unwrap(),
    );

    // Enqueue with the worker stopped: the enqueue rate alone.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..producers {
        let producer = Arc::clone(&producer);
        tasks.push(tokio::spawn(async move {
            for i in 0..events / producers {
                producer.emit(TICK, p * 1_000_000 + i).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let enqueue = started.elapsed();
    // Then drain the backlog.
    let started = Instant::now();
    let worker = Lanes::builder(registry, topology(queue.clone(), auth), "worker")
        .start()
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(300), done.notified())
        .await
        .expect("drained");
    let drain = started.elapsed();
    println!(
        "events {name:<9} {events:>6} events  enqueue {:>8.0}/s ({producers} producers)  consume {:>8.0}/s (prefetch {prefetch}, HMAC-signed, acked)",
        events as f64 / enqueue.as_secs_f64(),
        events as f64 / drain.as_secs_f64(),
    );
    worker.shutdown().await;
    Arc::try_unwrap(producer).unwrap().shutdown().await;
}

/// `cargo xtask bench lanes -- rpc` (or `events`, `postgres`...) runs only the matching parts.
fn wanted(section: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    filters.is_empty() || filters.iter().any(|f| section.contains(f.as_str()))
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!(
            "# shoal-lanes bench (2 tokio workers, loopback gRPC, {} cores)",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        if wanted("rpc none") {
            bench_rpc("none", LaneAuth::none(), LaneAuth::none()).await;
        }
        if wanted("rpc hmac") {
            let hmac = || LaneAuth::hmac(SECRET).unwrap();
            bench_rpc("hmac", hmac(), hmac()).await;
        }
        if wanted("rpc eddsa") {
            bench_rpc(
                "eddsa",
                LaneAuth::eddsa().with_public_key_pem(ED_PUBLIC).unwrap(),
                LaneAuth::eddsa().with_private_key_pem(ED_PRIVATE).unwrap(),
            )
            .await;
        }
        if wanted("events memory") {
            bench_events("memory", Arc::new(MemoryQueue::new("bench")), 20_000, 64).await;
        }
        if !wanted("events postgres") {
            return;
        }
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let prefix = format!("lb_bench_{}", std::process::id());
        let pg = Arc::new(
            PostgresQueue::new(PostgresQueueOptions::new(url, prefix).max_connections(16)).unwrap(),
        );
        bench_events("postgres", pg.clone(), 5_000, 64).await;
        pg.drop_tables().await.unwrap();
    });
}
