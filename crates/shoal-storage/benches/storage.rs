//! `cargo xtask bench storage`: lease and membership call latency on SQLite and Postgres.
//!
//! For each SQL backend: register, acquire of 300 shards taking them over (they were just
//! released by another runner, so every row changes owner and epoch), acquire of 300 shards the
//! runner already holds (renew), and refresh of 300 held shards. Prints p50/p99/mean latency and
//! calls per second; asserts nothing about time. Postgres comes from `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) under a throw-away table prefix.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use shoal_protocol::{Incarnation, Runner, RunnerAddress, RunnerId, ShardGroup, ShardId};
use shoal_storage::{
    PostgresRunnerStorage, RunnerStorage, SqliteRunnerStorage, StorageOptions, TablePrefix,
};
use sqlx::{Connection, Executor};

const SHARDS: u32 = 300;
const TTL: Duration = Duration::from_secs(30);
/// How long each figure is measured (after a short warm-up).
const MEASURE: Duration = Duration::from_secs(3);
const WARMUP: Duration = Duration::from_millis(300);

fn runner(port: u16) -> Runner {
    Runner::new(
        RunnerAddress::tcp("127.0.0.1", port).unwrap(),
        [ShardGroup::default_group()],
        NonZeroU32::MIN,
    )
}

/// Runs `op` repeatedly for [`WARMUP`] then [`MEASURE`], timing only what `op` reports as the
/// measured part, and prints one line.
async fn figure<F, Fut>(label: &str, mut op: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Duration>,
{
    let warm_until = Instant::now() + WARMUP;
    while Instant::now() < warm_until {
        op().await;
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut busy = Duration::ZERO;
    let until = Instant::now() + MEASURE;
    while Instant::now() < until {
        let took = op().await;
        busy += took;
        hist.record(took.as_micros().max(1) as u64).unwrap();
    }
    let calls = hist.len();
    println!(
        "  {label:<38} {calls:>6} calls  p50 {:>8.3} ms  p99 {:>8.3} ms  mean {:>8.3} ms  {:>8.0} calls/s",
        hist.value_at_quantile(0.50) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.mean() / 1000.0,
        calls as f64 / busy.as_secs_f64(),
    );
}

async fn timed<T>(fut: impl Future<Output = T>) -> (Duration, T) {
    let started = Instant::now();
    let value = fut.await;
    (started.elapsed(), value)
}

async fn bench(backend: &str, storage: &dyn RunnerStorage) {
    println!("{backend}:");
    let shards: Vec<ShardId> = (1..=SHARDS)
        .map(|i| format!("default:{i}").parse().unwrap())
        .collect();
    let (a, b) = (runner(1), runner(2));
    let (a_id, b_id) = (
        RunnerId::new(a.address.clone(), Incarnation::random()),
        RunnerId::new(b.address.clone(), Incarnation::random()),
    );

    figure("register", || async {
        let (took, done) = timed(storage.register(&a, a_id.incarnation, true, TTL)).await;
        done.unwrap();
        took
    })
    .await;
    storage
        .register(&b, b_id.incarnation, true, TTL)
        .await
        .unwrap();

    // Takeover: b holds all shards and releases them (untimed); a takes all 300.
    let mut flip = false;
    figure("acquire 300 (takeover)", || {
        flip = !flip;
        let (from, to) = if flip { (&b_id, &a_id) } else { (&a_id, &b_id) };
        let shards = &shards;
        async move {
            storage.release_all(from).await.unwrap();
            let (took, held) = timed(storage.acquire(to, shards, TTL)).await;
            assert_eq!(held.unwrap().len(), shards.len());
            took
        }
    })
    .await;

    storage.release_all(&b_id).await.unwrap();
    storage.acquire(&a_id, &shards, TTL).await.unwrap();
    figure("acquire 300 (again, already held)", || async {
        let (took, held) = timed(storage.acquire(&a_id, &shards, TTL)).await;
        assert_eq!(held.unwrap().len(), shards.len());
        took
    })
    .await;

    figure("refresh 300 (+ heartbeat)", || async {
        let (took, held) = timed(storage.refresh(&a_id, &shards, TTL)).await;
        assert_eq!(held.unwrap().len(), shards.len());
        took
    })
    .await;

    figure("leases (300 live rows)", || async {
        let (took, leases) = timed(storage.leases()).await;
        assert_eq!(leases.unwrap().len(), shards.len());
        took
    })
    .await;
}

fn bench_prefix() -> TablePrefix {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    TablePrefix::new(&format!(
        "bench_{}_{:x}",
        std::process::id(),
        nanos & 0xff_ffff
    ))
    .unwrap()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!("shoal-storage bench: {SHARDS} shards, {MEASURE:?} per figure, one caller");

        let dir = tempfile::tempdir().unwrap();
        let sqlite =
            SqliteRunnerStorage::open_file(dir.path().join("bench.db"), StorageOptions::new())
                .await
                .unwrap();
        bench("sqlite (file, WAL, synchronous=NORMAL)", &sqlite).await;

        let memory = SqliteRunnerStorage::in_memory(StorageOptions::new())
            .await
            .unwrap();
        bench("sqlite (in memory)", &memory).await;

        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let prefix = bench_prefix();
        let postgres = PostgresRunnerStorage::connect(
            &url,
            StorageOptions::new().with_table_prefix(prefix.clone()),
        )
        .await
        .unwrap_or_else(|e| panic!("Postgres at DATABASE_URL is unreachable: {e}"));
        bench("postgres", &postgres).await;
        drop(postgres);
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        conn.execute(sqlx::AssertSqlSafe(prefix.substitute(
            "DROP TABLE IF EXISTS {prefix}_messages, {prefix}_replies, {prefix}_leases, \
             {prefix}_runners, {prefix}_migrations CASCADE",
        )))
        .await
        .unwrap();
    });
}
