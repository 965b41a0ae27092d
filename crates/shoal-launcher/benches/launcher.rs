//! `cargo xtask bench launcher`: launcher latencies with real worker processes.
//!
//! - cold launch: lock, probe (nothing there), write `.meta`, spawn the worker, wait for its
//!   `UNIX:` line, release, GC — a new tuple every time;
//! - warm launch: lock, probe a live worker, release — the path every caller takes once a worker
//!   runs (target: ≤ 1 ms);
//! - one gRPC request (health check) over the socket, on an open channel and with a fresh
//!   connection each time.
//!
//! Prints p50/p99/max; asserts nothing about timings.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use shoal_launcher::{LaunchConfig, LaunchOutcome, connect_unix, launch};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const HELPER: &str = env!("CARGO_BIN_EXE_shoal-launcher-test-helper");
const COLD: usize = 40;
const WARM: usize = 3000;
const REQUESTS: usize = 5000;
const CONNECTS: usize = 500;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

fn record(h: &mut Histogram<u64>, elapsed: Duration) {
    h.record(elapsed.as_micros().max(1) as u64).unwrap();
}

fn report(name: &str, h: &Histogram<u64>) {
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "{name:<36} n={:>5}  p50={:>8.3} ms  p99={:>8.3} ms  max={:>8.3} ms  ({:.0}/s at p50)",
        h.len(),
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max()),
        1_000_000.0 / h.value_at_quantile(0.5) as f64,
    );
}

fn config(state_dir: &Path, cwd: &Path, tag: &str) -> LaunchConfig {
    LaunchConfig::new([HELPER, "serve", "--grace", "0", "--log", tag])
        .state_dir(state_dir)
        .cwd(cwd)
        .idle_timeout(Duration::from_secs(120))
}

fn terminate(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

async fn health(client: &mut HealthClient<tonic::transport::Channel>) {
    client.check(HealthCheckRequest::default()).await.unwrap();
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let root = tempfile::Builder::new()
        .prefix("sb")
        .tempdir_in("/tmp")
        .unwrap();
    let state_dir = root.path().join("state");
    let cwd = root.path().to_path_buf();
    let log = root.path().join("workers.log");
    let log = log.to_str().unwrap();
    println!("shoal-launcher bench (worker: {HELPER})");

    // Cold: a new tuple each time (the tag changes the argv, hence the hash).
    let mut cold = histogram();
    for i in 0..COLD {
        let config = config(&state_dir, &cwd, &format!("{log}.{i}"));
        let start = Instant::now();
        let launched = launch(&config).await.unwrap();
        record(&mut cold, start.elapsed());
        let LaunchOutcome::Spawned { pid } = launched.outcome else {
            panic!("cold launch reused a worker");
        };
        terminate(pid);
    }
    report("cold launch (spawn to UNIX: line)", &cold);

    // Warm: one live worker, launched over and over.
    let config = config(&state_dir, &cwd, log);
    let first = launch(&config).await.unwrap();
    let LaunchOutcome::Spawned { pid } = first.outcome else {
        panic!("expected a spawn");
    };
    let mut warm = histogram();
    for _ in 0..WARM {
        let start = Instant::now();
        let launched = launch(&config).await.unwrap();
        record(&mut warm, start.elapsed());
        assert_eq!(launched.outcome, LaunchOutcome::Reused);
    }
    report("warm launch (lock + probe + return)", &warm);

    // One request on an open channel.
    let mut client = HealthClient::new(connect_unix(&first.socket).await.unwrap());
    for _ in 0..100 {
        health(&mut client).await;
    }
    let mut request = histogram();
    let start = Instant::now();
    for _ in 0..REQUESTS {
        let t = Instant::now();
        health(&mut client).await;
        record(&mut request, t.elapsed());
    }
    let rate = REQUESTS as f64 / start.elapsed().as_secs_f64();
    report("request on an open channel", &request);
    println!("{:<36} {rate:.0} requests/s (sequential)", "");

    // Connect (HTTP/2 handshake) + one request.
    let mut connected = histogram();
    for _ in 0..CONNECTS {
        let t = Instant::now();
        let mut client = HealthClient::new(connect_unix(&first.socket).await.unwrap());
        health(&mut client).await;
        record(&mut connected, t.elapsed());
    }
    report("connect + request", &connected);

    // Warm launch + connect + request: what a caller pays end to end with a warm worker.
    let mut end_to_end = histogram();
    for _ in 0..CONNECTS {
        let t = Instant::now();
        let launched = launch(&config).await.unwrap();
        let mut client = HealthClient::new(connect_unix(&launched.socket).await.unwrap());
        health(&mut client).await;
        record(&mut end_to_end, t.elapsed());
    }
    report("warm launch + connect + request", &end_to_end);

    terminate(pid);
}
