//! `cargo xtask bench remote`: entity calls between two runner **processes** over loopback TCP
//! and a Unix socket, through the batch stream and through plain unary gRPC.
//!
//! The bench binary re-executes itself with `--serve` as a full runner that hosts a `counter`
//! entity and holds every shard; the parent process is a client-only runner calling `increment`
//! on 1,000 entity ids from 64 and 256 concurrent callers. Both share a SQLite runner storage in
//! a temporary file. For each row it prints requests per second with p50/p99 latency at full
//! load, then p50/p99 when the same callers are paced at half the measured rate. Nothing is
//! asserted about time.
//!
//! Options (after `--` with `cargo xtask bench remote -- …`, or as environment variables):
//!
//! | Argument | Variable | Default | Meaning |
//! |---|---|---|---|
//! | `--secs S` | `SHOAL_BENCH_SECS` | 3 | measured seconds per row |
//! | `--warmup-ms MS` | `SHOAL_BENCH_WARMUP_MS` | 500 | unmeasured warm-up per row |
//! | `--threads N` | `SHOAL_BENCH_THREADS` | 1 | tokio worker threads in each process (0: current-thread runtime) |
//! | `--callers 64,256` | `SHOAL_BENCH_CALLERS` | 64,256 | concurrent callers |
//! | `--net tcp,unix` | `SHOAL_BENCH_NET` | tcp,unix | transports |
//! | `--mode batch,unary` | `SHOAL_BENCH_MODE` | batch,unary | send modes |
//! | `--no-half` | `SHOAL_BENCH_NO_HALF=1` | off | skip the half-load rows |
//! | | `SHOAL_BENCH_MAX_BATCH` | 512 | frames per batch (`SocketConfig::max_batch`) |

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    unreachable_pub,
    missing_debug_implementations
)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use shoal_sharding::{
    Entity, EntityClient, EntityContext, EntityDefinition, Handler, HandlerError, Message,
    ShardingConfig,
};
use shoal_socket::{SendMode, ServeOptions, SocketConfig, SocketRunner};
use shoal_storage::{StorageOptions, connect_runner_storage};

const IDS: usize = 1000;

// ---------------------------------------------------------------------------------------------
// The entity.

pub struct Counter {
    value: i64,
}

impl Entity for Counter {
    const TYPE: &'static str = "counter";
    type State = ();
    async fn activate(_: &EntityContext, _: &Arc<()>) -> Result<Self, HandlerError> {
        Ok(Counter { value: 0 })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Increment {
    pub by: i64,
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

/// Transport settings; `SHOAL_BENCH_MAX_BATCH` overrides the batch size (both processes).
fn socket_config() -> SocketConfig {
    let mut config = SocketConfig::default();
    if let Some(max_batch) = std::env::var("SHOAL_BENCH_MAX_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.max_batch = max_batch;
    }
    config
}

fn sharding_config() -> ShardingConfig {
    ShardingConfig::builder()
        .default_call_timeout(Duration::from_secs(30))
        .build()
        .expect("sharding config")
}

// ---------------------------------------------------------------------------------------------
// Options.

#[derive(Debug, Clone)]
struct Options {
    secs: f64,
    warmup: Duration,
    threads: usize,
    callers: Vec<usize>,
    nets: Vec<String>,
    modes: Vec<SendMode>,
    half: bool,
}

fn arg_or_env(args: &[String], flag: &str, var: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var(var).ok())
}

impl Options {
    fn parse(args: &[String]) -> Self {
        let secs = arg_or_env(args, "--secs", "SHOAL_BENCH_SECS")
            .map(|s| s.parse().expect("--secs: a number of seconds"))
            .unwrap_or(3.0);
        let warmup = arg_or_env(args, "--warmup-ms", "SHOAL_BENCH_WARMUP_MS")
            .map(|s| Duration::from_millis(s.parse().expect("--warmup-ms: milliseconds")))
            .unwrap_or(Duration::from_millis(500));
        let threads = arg_or_env(args, "--threads", "SHOAL_BENCH_THREADS")
            .map(|s| s.parse().expect("--threads: a number"))
            .unwrap_or(1);
        let callers = arg_or_env(args, "--callers", "SHOAL_BENCH_CALLERS")
            .unwrap_or_else(|| "64,256".to_owned())
            .split(',')
            .map(|s| s.trim().parse().expect("--callers: numbers"))
            .collect();
        let nets = arg_or_env(args, "--net", "SHOAL_BENCH_NET")
            .unwrap_or_else(|| "tcp,unix".to_owned())
            .split(',')
            .map(|s| s.trim().to_owned())
            .collect();
        let modes = arg_or_env(args, "--mode", "SHOAL_BENCH_MODE")
            .unwrap_or_else(|| "batch,unary".to_owned())
            .split(',')
            .map(|s| match s.trim() {
                "batch" => SendMode::Batch,
                "unary" => SendMode::Unary,
                other => panic!("--mode: batch or unary, not {other:?}"),
            })
            .collect();
        let half = !args.iter().any(|a| a == "--no-half")
            && std::env::var("SHOAL_BENCH_NO_HALF").map_or(true, |v| v.is_empty() || v == "0");
        Self {
            secs,
            warmup,
            threads,
            callers,
            nets,
            modes,
            half,
        }
    }
}

/// A runtime with `threads` worker threads; 0 for a current-thread runtime.
fn runtime(threads: usize) -> tokio::runtime::Runtime {
    let mut builder = if threads == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    builder.enable_all().build().expect("tokio runtime")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        let listen = args.get(i + 1).expect("--serve LISTEN STORAGE_URL");
        let storage = args.get(i + 2).expect("--serve LISTEN STORAGE_URL");
        let threads = Options::parse(&args).threads;
        runtime(threads).block_on(serve(listen, storage));
        return;
    }
    let options = Options::parse(&args);
    runtime(options.threads).block_on(run(options));
}

// ---------------------------------------------------------------------------------------------
// The server process.

/// Runs a full runner until standard input closes (the parent exited or is done).
async fn serve(listen: &str, storage_url: &str) {
    let storage = connect_runner_storage(storage_url, StorageOptions::new())
        .await
        .expect("runner storage");
    let config = sharding_config();
    let shards = config.shards_per_group().get() as usize;
    let runner = SocketRunner::serve(
        ServeOptions {
            listen: listen.parse().expect("listen address"),
            advertise_host: None,
            advertise_port: None,
            sharding: config,
            socket: socket_config(),
        },
        storage,
        |builder| builder.entity(EntityDefinition::<Counter>::new().handle::<Increment>()),
    )
    .await
    .expect("start the runner");
    let started = Instant::now();
    while runner.sharding().active_shards().len() < shards {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the server runner did not take its shards"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let address = runner
        .sharding()
        .runner_address()
        .map(ToString::to_string)
        .unwrap_or_default();
    println!("READY {address}");
    // Standard input closes when the parent is done (or died).
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        let _ = tx.send(());
    });
    let _ = rx.await;
    runner.shutdown().await;
}

/// The child server process; killed when dropped.
struct Server {
    child: Child,
    address: String,
}

impl Server {
    fn spawn(listen: &str, storage_url: &str, threads: usize) -> Self {
        let exe = std::env::current_exe().expect("current exe");
        let mut child = Command::new(exe)
            .args([
                "--serve",
                listen,
                storage_url,
                "--threads",
                &threads.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the server process");
        let stdout = child.stdout.take().expect("server stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the server's address");
        let address = line
            .trim()
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("the server process said {line:?}"))
            .to_owned();
        Self { child, address }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Closing stdin asks for a graceful stop; kill after a while.
        drop(self.child.stdin.take());
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The client process.

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

#[derive(Default)]
struct Figures {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
    /// CPU time per request in the client and the server process (µs).
    cpu_us: (f64, f64),
}

/// User + system CPU time a process used so far, from `/proc/<pid>/stat` (Linux; zero
/// elsewhere).
fn cpu_time(pid: u32) -> Duration {
    const TICKS_PER_SEC: f64 = 100.0;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name: state is the first, utime the 12th, stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / TICKS_PER_SEC)
}

fn us(hist: &Histogram<u64>, q: f64) -> f64 {
    hist.value_at_quantile(q) as f64 / 1000.0
}

/// Runs `callers` concurrent callers for the warm-up and the measured period; with `rate`, the
/// callers together are paced at that many requests per second.
async fn load(
    server_pid: u32,
    counters: &EntityClient<Counter>,
    ids: &Arc<Vec<String>>,
    callers: usize,
    rate: Option<f64>,
    options: &Options,
) -> Figures {
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(callers);
    for caller in 0..callers {
        let counters = counters.clone();
        let ids = ids.clone();
        let phase = phase.clone();
        let errors = errors.clone();
        // Each caller waits this long between the starts of its requests when paced.
        let interval = rate.map(|r| Duration::from_secs_f64(callers as f64 / r));
        tasks.push(tokio::spawn(async move {
            // Latencies in ns, put in a histogram at the end (a per-caller histogram would
            // cost more cache misses than the request itself).
            let mut latencies: Vec<u64> = Vec::with_capacity(1 << 16);
            let mut i = caller;
            // Paced callers are spread evenly over one interval, not sent in bursts.
            let offset = interval.map_or(Duration::ZERO, |i| {
                i.mul_f64(caller as f64 / callers as f64)
            });
            let mut next = Instant::now() + offset;
            let mut last_phase = WARMUP;
            loop {
                let now_phase = phase.load(Ordering::Relaxed);
                if now_phase == STOP {
                    break;
                }
                if now_phase != last_phase {
                    // Pacing restarts with the measurement.
                    next = Instant::now() + offset;
                    last_phase = now_phase;
                }
                if let Some(interval) = interval {
                    if next > Instant::now() {
                        tokio::time::sleep_until(next.into()).await;
                    }
                    next += interval;
                }
                let id = &ids[i % ids.len()];
                i += callers;
                let started = Instant::now();
                let result = counters.call(id, Increment { by: 1 }).await;
                let took = started.elapsed();
                if phase.load(Ordering::Relaxed) == MEASURE {
                    match result {
                        Ok(_) => {
                            latencies.push(took.as_nanos().max(1) as u64);
                        }
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                                eprintln!("call failed: {e}");
                            }
                        }
                    }
                }
            }
            latencies
        }));
    }
    tokio::time::sleep(options.warmup).await;
    phase.store(MEASURE, Ordering::Relaxed);
    let started = Instant::now();
    let cpu_before = (cpu_time(std::process::id()), cpu_time(server_pid));
    tokio::time::sleep(Duration::from_secs_f64(options.secs)).await;
    phase.store(STOP, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let cpu_after = (cpu_time(std::process::id()), cpu_time(server_pid));
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    for task in tasks {
        for latency in task.await.unwrap() {
            total.saturating_record(latency);
        }
    }
    let requests = total.len().max(1) as f64;
    Figures {
        cpu_us: (
            (cpu_after.0 - cpu_before.0).as_secs_f64() * 1e6 / requests,
            (cpu_after.1 - cpu_before.1).as_secs_f64() * 1e6 / requests,
        ),
        rate: total.len() as f64 / elapsed.as_secs_f64(),
        p50_us: us(&total, 0.50),
        p99_us: us(&total, 0.99),
        errors: errors.load(Ordering::Relaxed),
    }
}

fn fmt_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

async fn run(options: Options) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids: Arc<Vec<String>> = Arc::new((0..IDS).map(|i| format!("counter-{i}")).collect());
    println!(
        "remote: two runner processes ({} tokio worker thread(s) each), {IDS} counter entities, \
         {:.1} s measured per row after {} ms warm-up",
        options.threads,
        options.secs,
        options.warmup.as_millis()
    );
    println!(
        "{:<6} {:<6} {:>7} | {:>10} {:>10} {:>10} {:>15} | {:>10} {:>10} {:>10}",
        "net",
        "mode",
        "callers",
        "req/s",
        "p50",
        "p99",
        "cpu µs/req c+s",
        "half req/s",
        "p50",
        "p99"
    );
    let mut summary = Vec::new();
    for net in &options.nets {
        let listen = match net.as_str() {
            "tcp" => "127.0.0.1:0".to_owned(),
            "unix" => format!("unix:{}", dir.path().join("runner.sock").display()),
            other => panic!("--net: tcp or unix, not {other:?}"),
        };
        let storage_url = format!(
            "sqlite://{}",
            dir.path().join(format!("{net}.db")).display()
        );
        let server = Server::spawn(&listen, &storage_url, options.threads);
        let storage = connect_runner_storage(&storage_url, StorageOptions::new())
            .await
            .expect("runner storage");
        for &mode in &options.modes {
            let socket = SocketConfig {
                mode,
                ..socket_config()
            };
            let client = SocketRunner::client_only(sharding_config(), socket, storage.clone())
                .await
                .expect("client-only runner");
            let counters = client.sharding().client::<Counter>();
            // Every entity exists and every route is known before measuring.
            for id in ids.iter() {
                counters
                    .call(id, Increment { by: 0 })
                    .await
                    .expect("warm-up call");
            }
            let mode_name = match mode {
                SendMode::Batch => "batch",
                SendMode::Unary => "unary",
            };
            for &callers in &options.callers {
                let pid = server.child.id();
                let full = load(pid, &counters, &ids, callers, None, &options).await;
                let half = if options.half {
                    Some(
                        load(
                            pid,
                            &counters,
                            &ids,
                            callers,
                            Some(full.rate / 2.0),
                            &options,
                        )
                        .await,
                    )
                } else {
                    None
                };
                let errors = full.errors + half.as_ref().map_or(0, |h| h.errors);
                let (hr, h50, h99) = half
                    .as_ref()
                    .map_or(("-".to_owned(), "-".to_owned(), "-".to_owned()), |h| {
                        (format!("{:.0}", h.rate), fmt_us(h.p50_us), fmt_us(h.p99_us))
                    });
                println!(
                    "{net:<6} {mode_name:<6} {callers:>7} | {:>10.0} {:>10} {:>10} {:>15} | {hr:>10} {h50:>10} {h99:>10}{}",
                    full.rate,
                    fmt_us(full.p50_us),
                    fmt_us(full.p99_us),
                    format!("{:.1}+{:.1}", full.cpu_us.0, full.cpu_us.1),
                    if errors > 0 {
                        format!("  ({errors} errors)")
                    } else {
                        String::new()
                    }
                );
                if let Some(h) = half {
                    summary.push(format!(
                        "p99 at half load ({net}, {mode_name}, {callers} callers, {:.0} req/s): {}",
                        h.rate,
                        fmt_us(h.p99_us)
                    ));
                }
            }
            client.shutdown().await;
        }
        println!(
            "  ({net}: the server runner listened on {})",
            server.address
        );
        drop(server);
    }
    for line in summary {
        println!("{line}");
    }
}
