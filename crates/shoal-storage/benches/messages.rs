//! `cargo xtask bench messages`: durable-message throughput and latency on SQLite and Postgres.
//!
//! For each SQL backend:
//! - **pairs**: 64 concurrent tasks, each saving a request and then its final reply (under a
//!   live fence) in a loop: pairs per second, p50/p99 of each call. Group commit turns the
//!   concurrent calls into multi-row statements; one caller alone is shown for comparison.
//! - **claims**: a backlog of unprocessed requests claimed 100 at a time and answered (claim,
//!   then a final reply for each claimed request) by one claimer, then by four concurrent
//!   claimers: rows per second, p50/p99 per claim call.
//!
//! Prints figures; asserts nothing about time. Postgres comes from `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) under a throw-away table prefix.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use shoal_protocol::{
    EntityAddress, Headers, Incarnation, MachineId, ReplyFrame, RunnerAddress, RunnerId, ShardId,
    SnowflakeGenerator,
};
use shoal_storage::{
    Claim, ClaimedMessage, Fence, MessageStorage, PersistedRequest, PostgresMessageStorage,
    PostgresRunnerStorage, RunnerStorage, SqliteMessageStorage, SqliteRunnerStorage,
    StorageOptions, StoredReply, StoredReplyKind, TablePrefix,
};
use sqlx::{Connection, Executor};

const TASKS: usize = 64;
const SHARDS: u32 = 16;
/// How long each throughput figure is measured (after a short warm-up).
const MEASURE: Duration = Duration::from_secs(4);
const WARMUP: Duration = Duration::from_millis(500);
const CLAIM_BATCH: usize = 100;
const PAYLOAD: &[u8] = &[b'x'; 200];

fn shard(i: u32) -> ShardId {
    format!("default:{}", i % SHARDS + 1).parse().unwrap()
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

fn line(label: &str, count: u64, elapsed: Duration, unit: &str, calls: &[(&str, &Histogram<u64>)]) {
    let mut text = format!(
        "  {label:<34} {:>9.0} {unit}/s",
        count as f64 / elapsed.as_secs_f64()
    );
    for (name, hist) in calls {
        text.push_str(&format!(
            "   {name} p50 {:>7.3} ms p99 {:>7.3} ms",
            hist.value_at_quantile(0.50) as f64 / 1000.0,
            hist.value_at_quantile(0.99) as f64 / 1000.0,
        ));
    }
    println!("{text}");
}

struct Fixture {
    messages: Arc<dyn MessageStorage>,
    fences: Vec<Fence>,
    ids: Arc<SnowflakeGenerator>,
    entity: AtomicU64,
}

impl Fixture {
    async fn new(messages: Arc<dyn MessageStorage>, runners: &dyn RunnerStorage) -> Self {
        let me = RunnerId::new(
            RunnerAddress::tcp("127.0.0.1", 4000).unwrap(),
            Incarnation::random(),
        );
        let shards: Vec<ShardId> = (0..SHARDS).map(shard).collect();
        let held = runners
            .acquire(&me, &shards, Duration::from_secs(3600))
            .await
            .unwrap();
        let mut fences: Vec<Fence> = held
            .into_iter()
            .map(|h| Fence {
                shard: h.shard,
                epoch: h.epoch,
            })
            .collect();
        fences.sort_by_key(|f| f.shard.id());
        Self {
            messages,
            fences,
            ids: Arc::new(SnowflakeGenerator::new(MachineId(1))),
            entity: AtomicU64::new(0),
        }
    }

    fn request(&self) -> PersistedRequest {
        let n = self.entity.fetch_add(1, Ordering::Relaxed);
        PersistedRequest {
            id: self.ids.next_id().unwrap(),
            address: EntityAddress::new(
                shard(n as u32),
                "counter".parse().unwrap(),
                format!("e{}", n % 1000).parse().unwrap(),
            ),
            tag: "increment".parse().unwrap(),
            payload: Bytes::from_static(PAYLOAD),
            headers: Headers::new(),
            key: None,
            deliver_at: None,
            streaming: false,
            uninterruptible: false,
        }
    }

    fn fence(&self, request: &PersistedRequest) -> &Fence {
        &self.fences[(request.address.shard.id() - 1) as usize]
    }

    /// `tasks` callers saving request + final reply pairs for `warmup + measure`.
    async fn pairs(self: &Arc<Self>, label: &str, tasks: usize) {
        let saves = Arc::new(Mutex::new(histogram()));
        let replies = Arc::new(Mutex::new(histogram()));
        let done = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let measure_from = started + WARMUP;
        let until = measure_from + MEASURE;
        let mut handles = Vec::new();
        for _ in 0..tasks {
            let (fx, saves, replies, done) =
                (self.clone(), saves.clone(), replies.clone(), done.clone());
            handles.push(tokio::spawn(async move {
                let (mut my_saves, mut my_replies, mut my_done) = (histogram(), histogram(), 0);
                loop {
                    let request = fx.request();
                    let t0 = Instant::now();
                    fx.messages.save_request(&request, None).await.unwrap();
                    let t1 = Instant::now();
                    let reply = StoredReply {
                        id: fx.ids.next_id().unwrap(),
                        request_id: request.id,
                        kind: StoredReplyKind::Final(ReplyFrame::Value(Bytes::from_static(b"1"))),
                    };
                    fx.messages
                        .save_reply(&reply, fx.fence(&request))
                        .await
                        .unwrap();
                    let t2 = Instant::now();
                    if t2 >= until {
                        break;
                    }
                    if t0 >= measure_from {
                        my_saves.record(micros(t1 - t0)).unwrap();
                        my_replies.record(micros(t2 - t1)).unwrap();
                        my_done += 1;
                    }
                }
                saves.lock().add(&my_saves).unwrap();
                replies.lock().add(&my_replies).unwrap();
                done.fetch_add(my_done, Ordering::Relaxed);
            }));
        }
        for handle in handles {
            handle.await.unwrap();
        }
        line(
            label,
            done.load(Ordering::Relaxed),
            MEASURE,
            "pairs",
            &[
                ("save_request", &saves.lock()),
                ("save_reply", &replies.lock()),
            ],
        );
    }

    /// Saves `count` unprocessed requests (64 concurrent savers); prints the rate.
    async fn backlog(self: &Arc<Self>, count: u64) {
        let left = Arc::new(AtomicU64::new(count));
        let started = Instant::now();
        let mut handles = Vec::new();
        for _ in 0..TASKS {
            let (fx, left) = (self.clone(), left.clone());
            handles.push(tokio::spawn(async move {
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    fx.messages.save_request(&fx.request(), None).await.unwrap();
                }
            }));
        }
        for handle in handles {
            handle.await.unwrap();
        }
        line(
            &format!("save_request x{count} (backlog)"),
            count,
            started.elapsed(),
            "requests",
            &[],
        );
    }

    /// `claimers` concurrent claimers empty the backlog, `CLAIM_BATCH` per call, each claimed
    /// request then answered with a final reply (as a runner delivers and completes them; claimed
    /// rows that stay unprocessed would be read again by every later claim).
    async fn claims(self: &Arc<Self>, claimers: usize, expect: u64) {
        let shards: Arc<Vec<ShardId>> =
            Arc::new(self.fences.iter().map(|f| f.shard.clone()).collect());
        let calls = Arc::new(Mutex::new(histogram()));
        let claimed = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut handles = Vec::new();
        for c in 0..claimers {
            let (fx, shards, calls, claimed) =
                (self.clone(), shards.clone(), calls.clone(), claimed.clone());
            handles.push(tokio::spawn(async move {
                let claim = Claim {
                    by: RunnerAddress::tcp("127.0.0.1", 5000 + c as u16).unwrap(),
                    duration: Duration::from_secs(3600),
                };
                let mut mine = histogram();
                loop {
                    let t0 = Instant::now();
                    let got = fx
                        .messages
                        .claim_unprocessed(&shards, CLAIM_BATCH, &claim)
                        .await
                        .unwrap();
                    mine.record(micros(t0.elapsed())).unwrap();
                    if got.is_empty() {
                        break;
                    }
                    claimed.fetch_add(got.len() as u64, Ordering::Relaxed);
                    let replies: Vec<_> = got
                        .into_iter()
                        .map(|message| {
                            let fx = fx.clone();
                            tokio::spawn(async move {
                                let ClaimedMessage::Request { request, .. } = message else {
                                    return;
                                };
                                let reply = StoredReply {
                                    id: fx.ids.next_id().unwrap(),
                                    request_id: request.id,
                                    kind: StoredReplyKind::Final(ReplyFrame::Value(
                                        Bytes::from_static(b"1"),
                                    )),
                                };
                                fx.messages
                                    .save_reply(&reply, fx.fence(&request))
                                    .await
                                    .unwrap();
                            })
                        })
                        .collect();
                    for reply in replies {
                        reply.await.unwrap();
                    }
                }
                calls.lock().add(&mine).unwrap();
            }));
        }
        for handle in handles {
            handle.await.unwrap();
        }
        let elapsed = started.elapsed();
        let claimed = claimed.load(Ordering::Relaxed);
        assert_eq!(claimed, expect, "every backlog row is claimed exactly once");
        line(
            &format!("claim {CLAIM_BATCH} + reply, {claimers} claimer(s)"),
            claimed,
            elapsed,
            "rows",
            &[("claim", &calls.lock())],
        );
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().max(1) as u64
}

async fn bench(
    backend: &str,
    messages: Arc<dyn MessageStorage>,
    runners: &dyn RunnerStorage,
    backlog: u64,
) {
    println!("{backend}:");
    let fx = Arc::new(Fixture::new(messages, runners).await);
    fx.pairs("save_request + save_reply, 1 task", 1).await;
    fx.pairs(&format!("save_request + save_reply, {TASKS} tasks"), TASKS)
        .await;
    // The pairs above left only processed requests: a backlog is all that is claimable.
    fx.backlog(backlog).await;
    fx.claims(1, backlog).await;
    fx.backlog(backlog).await;
    fx.claims(4, backlog).await;
}

fn bench_prefix() -> TablePrefix {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    TablePrefix::new(&format!(
        "benchm_{}_{:x}",
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
        println!(
            "shoal-storage messages bench: {MEASURE:?} per figure, {SHARDS} shards, \
             {}-byte payloads",
            PAYLOAD.len()
        );

        let dir = tempfile::tempdir().unwrap();
        let sqlite =
            SqliteRunnerStorage::open_file(dir.path().join("bench.db"), StorageOptions::new())
                .await
                .unwrap();
        let messages = Arc::new(SqliteMessageStorage::new(sqlite.inner()).await.unwrap());
        bench(
            "sqlite (file, WAL, synchronous=NORMAL)",
            messages,
            &sqlite,
            20_000,
        )
        .await;

        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let prefix = bench_prefix();
        let postgres = PostgresRunnerStorage::connect(
            &url,
            StorageOptions::new()
                .with_table_prefix(prefix.clone())
                .with_call_timeout(Duration::from_secs(30)),
        )
        .await
        .expect("Postgres at DATABASE_URL is unreachable");
        let messages = Arc::new(PostgresMessageStorage::new(postgres.inner()).await.unwrap());
        bench("postgres", messages.clone(), &postgres, 50_000).await;
        drop(messages);
        drop(postgres);
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        conn.execute(sqlx::AssertSqlSafe(prefix.substitute(
            "DROP TABLE IF EXISTS {prefix}_messages, {prefix}_replies, {prefix}_leases, \
             {prefix}_runners, {prefix}_migrations CASCADE",
        )))
        .await
        .unwrap();
        conn.close().await.unwrap();
    });
}
