//! `cargo xtask bench persisted`: persisted request/reply between two processes, on Postgres and
//! on SQLite.
//!
//! A `shoal run` process (the release binary) hosts the built-in `counter`, whose `increment` is
//! persisted and keeps its value in entity KV; this bench process is a client-only runner with
//! message storage that sends persisted increments to 1,000 counter ids from 64 concurrent
//! callers over the socket transport. Each increment is stored by the caller, pushed to the
//! owner, applied (value saved in KV) and its reply stored before the caller gets it — three
//! durable writes per request. It prints requests per second with p50/p99, then the lateness of
//! scheduled messages (`deliver_at` 200 ms ahead: how long after their time their reply
//! arrived). Nothing is asserted about time.
//!
//! Options (after `--` with `cargo xtask bench persisted -- …`, or as environment variables):
//!
//! | Argument | Variable | Default | Meaning |
//! |---|---|---|---|
//! | `--secs S` | `SHOAL_BENCH_SECS` | 5 | measured seconds per storage |
//! | `--callers N` | `SHOAL_BENCH_CALLERS` | 64 | concurrent callers |
//! | `--storage postgres,sqlite` | `SHOAL_BENCH_STORAGE` | postgres,sqlite | backends |
//! | `--database-url URL` | `DATABASE_URL` | `postgres://postgres@127.0.0.1:5432/test` | Postgres |

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    unreachable_pub,
    missing_debug_implementations
)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hdrhistogram::Histogram;
use shoal_runner::entities::counter::{Counter, Increment};
use shoal_sharding::{CallOptions, GroupSelector, ShardingConfig};
use shoal_socket::{SocketConfig, SocketRunner};
use shoal_storage::{StorageOptions, TablePrefix, connect};

const IDS: usize = 1000;

struct Options {
    secs: u64,
    callers: usize,
    storages: Vec<String>,
    database_url: String,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, var: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
            .or_else(|| std::env::var(var).ok())
    };
    Options {
        secs: arg("--secs", "SHOAL_BENCH_SECS")
            .and_then(|s| s.parse().ok())
            .unwrap_or(5),
        callers: arg("--callers", "SHOAL_BENCH_CALLERS")
            .and_then(|s| s.parse().ok())
            .unwrap_or(64),
        storages: arg("--storage", "SHOAL_BENCH_STORAGE")
            .unwrap_or_else(|| "postgres,sqlite".to_owned())
            .split(',')
            .map(str::to_owned)
            .collect(),
        database_url: arg("--database-url", "DATABASE_URL")
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned()),
    }
}

/// The runner process; killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(url: &str, prefix: &str) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args([
            "run",
            "--storage",
            url,
            "--table-prefix",
            prefix,
            "--listen",
            "127.0.0.1:0",
            "--gateway",
            "off",
            "--metrics",
            "off",
            "--log-level",
            "warn",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start `shoal run`");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let runner = loop {
        let line = lines
            .next()
            .expect("`shoal run` exited before it started")
            .expect("read `shoal run` output");
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if event["event"] == "started" {
            break event["runner"].as_str().expect("runner address").to_owned();
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (Server(child), runner)
}

fn ms(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

async fn bench(storage: &str, options: &Options) {
    let prefix = format!("bench{}_{}", std::process::id(), storage);
    let (url, _dir) = match storage {
        "postgres" => (options.database_url.clone(), None),
        "sqlite" => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("sqlite://{}", dir.path().join("bench.db").display());
            (url, Some(dir))
        }
        other => panic!("unknown storage {other:?} (postgres or sqlite)"),
    };
    let stores = connect(
        &url,
        StorageOptions::new().with_table_prefix(TablePrefix::new(&prefix).expect("prefix")),
    )
    .await
    .unwrap_or_else(|e| panic!("cannot open {storage} storage: {e}"));
    let (server, runner) = start_server(&url, &prefix);
    let messages = stores.messages.clone();
    let client = SocketRunner::client_only_with(
        ShardingConfig::default(),
        SocketConfig::default(),
        stores.runners.clone(),
        move |builder| builder.message_storage(messages),
    )
    .await
    .expect("client starts");
    let sharding = client.sharding().clone();
    let counters = sharding.client::<Counter>();
    // Wait until the runner holds the shards and answers.
    let ready = Instant::now();
    while counters
        .call_with(
            "warm",
            Increment {
                by: 1,
                served_by: false,
            },
            CallOptions::timeout(Duration::from_secs(2)),
        )
        .await
        .is_err()
    {
        assert!(
            ready.elapsed() < Duration::from_secs(60),
            "the runner {runner} never answered"
        );
    }
    // Warm up every id (activation loads KV).
    let mut warm = Vec::new();
    for caller in 0..options.callers {
        let counters = counters.clone();
        let callers = options.callers;
        warm.push(tokio::spawn(async move {
            for id in (caller..IDS).step_by(callers) {
                let _ = counters
                    .call(
                        &id.to_string(),
                        Increment {
                            by: 1,
                            served_by: false,
                        },
                    )
                    .await;
            }
        }));
    }
    for task in warm {
        task.await.unwrap();
    }

    let until = Instant::now() + Duration::from_secs(options.secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..options.callers {
        let counters = counters.clone();
        let callers = options.callers;
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).unwrap();
            let mut errors = 0u64;
            let mut i = caller;
            while Instant::now() < until {
                let id = (i % IDS).to_string();
                i += callers;
                let sent = Instant::now();
                match counters
                    .call(
                        &id,
                        Increment {
                            by: 1,
                            served_by: false,
                        },
                    )
                    .await
                {
                    Ok(_) => {
                        let _ = histogram.record(sent.elapsed().as_nanos() as u64);
                    }
                    Err(_) => errors += 1,
                }
            }
            (histogram, errors)
        }));
    }
    let mut histogram = Histogram::<u64>::new(3).unwrap();
    let mut errors = 0;
    for task in tasks {
        let (h, e) = task.await.unwrap();
        histogram.add(h).unwrap();
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{storage:<9} {:>7} callers {:>10.0} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms   errors {errors}",
        options.callers,
        histogram.len() as f64 / elapsed,
        ms(histogram.value_at_quantile(0.5)),
        ms(histogram.value_at_quantile(0.99)),
    );

    // Scheduled messages: reply arrival after `deliver_at`.
    let dynamic = sharding.dynamic_client(
        "counter".parse().unwrap(),
        GroupSelector::fixed(shoal_protocol::ShardGroup::default_group()),
    );
    let mut lateness = Histogram::<u64>::new(3).unwrap();
    for n in 0..10 {
        let at = SystemTime::now() + Duration::from_millis(200);
        let options = CallOptions::default()
            .with_persisted(true)
            .with_deliver_at(at)
            .with_timeout(Some(Duration::from_secs(10)));
        dynamic
            .call(
                &format!("scheduled-{n}"),
                "increment",
                Bytes::from_static(b"{\"by\":1}"),
                options,
            )
            .await
            .expect("scheduled call");
        let late = SystemTime::now().duration_since(at).unwrap_or_default();
        let _ = lateness.record(late.as_nanos() as u64);
    }
    println!(
        "{storage:<9} scheduled messages (10, 200 ms ahead): reply p50 {:.1} ms, max {:.1} ms after their time",
        ms(lateness.value_at_quantile(0.5)),
        ms(lateness.max()),
    );
    client.shutdown().await;
    drop(server);
    if storage == "postgres" {
        drop_tables(&url, &prefix).await;
    }
}

/// Drops the bench's tables (`{prefix}_*`) so runs leave nothing behind in the database.
async fn drop_tables(url: &str, prefix: &str) {
    use sqlx::{Connection, Executor};
    let Ok(mut conn) = sqlx::PgConnection::connect(url).await else {
        eprintln!("could not connect to drop the tables {prefix}_*");
        return;
    };
    let drop = format!(
        "DO $$ DECLARE t text; BEGIN \
           FOR t IN SELECT tablename FROM pg_tables \
             WHERE schemaname = current_schema() AND starts_with(tablename, '{prefix}_') LOOP \
             EXECUTE format('DROP TABLE IF EXISTS %I CASCADE', t); \
           END LOOP; END $$"
    );
    if let Err(error) = conn.execute(sqlx::AssertSqlSafe(drop)).await {
        eprintln!("could not drop the tables {prefix}_*: {error}");
    }
}

fn main() {
    let options = options();
    if std::env::args().any(|a| a == "--list") {
        // `cargo bench -- --list` (run by some tools): nothing to list.
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "persisted request/reply: counter `increment` (persisted, value in entity KV), {IDS} ids, two processes over TCP, {} s per row",
        options.secs
    );
    for storage in &options.storages {
        runtime.block_on(bench(storage, &options));
    }
}
