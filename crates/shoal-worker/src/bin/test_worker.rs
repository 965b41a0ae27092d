//! A worker for the integration tests of `shoal-worker` (real processes): an entity type `probe`
//! whose tags exercise concurrency, failures, crashes, time-outs and entity KV. Not a product.
//!
//! Extra arguments: `--exit-at-once` (exit before serving), `--silent` (never announce the
//! socket), `--bad-describe` (declare a type without tags), `--probe-concurrency N`,
//! `--start-marker FILE` (exit at once when FILE exists, else create it and serve: a worker that
//! starts only once until the test removes FILE), `--extra-tag-if FILE` (declare the tag `extra`
//! too when FILE exists: a worker whose description changes between starts).
#![allow(
    clippy::print_stderr,
    reason = "a test worker reports why it exits on stderr"
)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use shoal_worker_sdk::{
    ChunkWriter, EntityType, HandlerContext, HandlerFailure, KvEntry, KvError, KvQuery, Worker,
};

#[derive(Default)]
struct Gauge {
    now: u32,
    max: u32,
}

type Gauges = Arc<Mutex<HashMap<String, Gauge>>>;

/// `forever` calls running now (a cancelled call stops running).
static BUSY: AtomicU32 = AtomicU32::new(0);

/// Counts a `forever` call while its handler future lives.
struct Busy;

impl Busy {
    fn enter() -> Self {
        BUSY.fetch_add(1, Ordering::SeqCst);
        Self
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Calls waiting at a rendezvous, by name: the count that arrived and a notifier.
type Rendezvous = Arc<Mutex<HashMap<String, Arc<tokio::sync::watch::Sender<u32>>>>>;

/// `rendezvous NAME N`: waits until N calls named NAME are in the handler at once (at most 10 s),
/// proving that they run concurrently.
async fn rendezvous(points: Rendezvous, payload: Bytes) -> Result<Bytes, HandlerFailure> {
    let command = text(&payload);
    let mut words = command.split_whitespace();
    let name = words.next().unwrap_or_default().to_owned();
    let expected: u32 = words.next().and_then(|n| n.parse().ok()).unwrap_or(2);
    let arrived = {
        let mut all = points
            .lock()
            .map_err(|_| HandlerFailure::fatal("poisoned"))?;
        all.entry(name)
            .or_insert_with(|| Arc::new(tokio::sync::watch::Sender::new(0)))
            .clone()
    };
    arrived.send_modify(|n| *n += 1);
    let mut seen = arrived.subscribe();
    match tokio::time::timeout(Duration::from_secs(10), seen.wait_for(|n| *n >= expected)).await {
        Ok(Ok(_)) => Ok(Bytes::from_static(b"met")),
        _ => Err(HandlerFailure::application(format!(
            "only {} of {expected} calls met",
            *arrived.borrow()
        ))),
    }
}

fn text(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

fn kv_failure(error: KvError) -> HandlerFailure {
    HandlerFailure::application(format!("{:?}: {}", error.kind(), error.message()))
}

async fn kv_command(ctx: HandlerContext, payload: Bytes) -> Result<Bytes, HandlerFailure> {
    let command = text(&payload);
    let mut words = command.split_whitespace();
    let verb = words.next().unwrap_or_default();
    let rest: Vec<&str> = words.collect();
    let kv = ctx.kv();
    let reply = match verb {
        "put" => {
            let entries = rest.iter().map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                KvEntry::new(k.to_owned(), v.to_owned())
            });
            kv.put(entries).await.map_err(kv_failure)?;
            "ok".to_owned()
        }
        "put_big" => {
            let size: usize = rest.first().and_then(|s| s.parse().ok()).unwrap_or(0);
            kv.put_one("big", vec![b'x'; size])
                .await
                .map_err(kv_failure)?;
            "ok".to_owned()
        }
        "get" => {
            let values = kv
                .get(rest.iter().map(|k| (*k).to_owned()))
                .await
                .map_err(kv_failure)?;
            values
                .into_iter()
                .map(|v| v.map_or("<none>".to_owned(), |v| text(&v)))
                .collect::<Vec<_>>()
                .join(",")
        }
        "list" => {
            let mut query = match rest.first().copied() {
                Some("prefix") => KvQuery::prefix(rest.get(1).copied().unwrap_or("").to_owned()),
                Some("range") => KvQuery::range(
                    rest.get(1).copied().unwrap_or("").to_owned(),
                    rest.get(2).copied().unwrap_or("").to_owned(),
                ),
                _ => KvQuery::all(),
            };
            if rest.contains(&"reverse") {
                query = query.reverse();
            }
            if let Some(at) = rest.iter().position(|w| *w == "limit")
                && let Some(limit) = rest.get(at + 1).and_then(|n| n.parse().ok())
            {
                query = query.limit(limit);
            }
            kv.list(query)
                .await
                .map_err(kv_failure)?
                .into_iter()
                .map(|e| format!("{}={}", text(&e.key), text(&e.value)))
                .collect::<Vec<_>>()
                .join(";")
        }
        "delete" => {
            kv.delete(rest.iter().map(|k| (*k).to_owned()))
                .await
                .map_err(kv_failure)?;
            "ok".to_owned()
        }
        "delete_range" => {
            let start = rest.first().copied().unwrap_or("").to_owned();
            let end = rest.get(1).copied().unwrap_or("").to_owned();
            kv.delete_range(start, end).await.map_err(kv_failure)?;
            "ok".to_owned()
        }
        "drop" => {
            kv.drop_all().await.map_err(kv_failure)?;
            "ok".to_owned()
        }
        "burst" => {
            // `burst N`: N gets at once, without waiting for one before sending the next.
            let n: usize = rest.first().and_then(|s| s.parse().ok()).unwrap_or(0);
            let gets = (0..n).map(|i| kv.get_one(format!("burst-{i}")));
            let answered = futures::future::join_all(gets)
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
                .map_err(kv_failure)?;
            format!("answered {}", answered.len())
        }
        other => {
            return Err(HandlerFailure::malformed(format!(
                "unknown KV command {other:?}"
            )));
        }
    };
    Ok(Bytes::from(reply))
}

fn probe(gauges: Gauges, concurrency: u32, extra_tag: bool) -> EntityType {
    let hold_gauges = gauges.clone();
    let points = Rendezvous::default();
    let mut probe = EntityType::new("probe");
    if extra_tag {
        probe = probe.unary(
            "extra",
            |_ctx: HandlerContext, _payload: Bytes| async move { Ok(Bytes::from_static(b"extra")) },
        );
    }
    probe
        .concurrency(concurrency)
        .unary("rendezvous", move |_ctx: HandlerContext, payload: Bytes| {
            rendezvous(points.clone(), payload)
        })
        .unary("hold", move |ctx: HandlerContext, payload: Bytes| {
            let gauges = hold_gauges.clone();
            async move {
                let millis: u64 = text(&payload).trim().parse().unwrap_or(50);
                let id = ctx.entity_id().to_owned();
                {
                    let mut all = gauges
                        .lock()
                        .map_err(|_| HandlerFailure::fatal("poisoned"))?;
                    let gauge = all.entry(id.clone()).or_default();
                    gauge.now += 1;
                    gauge.max = gauge.max.max(gauge.now);
                }
                tokio::time::sleep(Duration::from_millis(millis)).await;
                let mut all = gauges
                    .lock()
                    .map_err(|_| HandlerFailure::fatal("poisoned"))?;
                let gauge = all.entry(id).or_default();
                gauge.now -= 1;
                Ok(Bytes::from(gauge.max.to_string()))
            }
        })
        .unary("max", move |ctx: HandlerContext, _payload: Bytes| {
            let gauges = gauges.clone();
            async move {
                let all = gauges
                    .lock()
                    .map_err(|_| HandlerFailure::fatal("poisoned"))?;
                let max = all.get(ctx.entity_id()).map_or(0, |g| g.max);
                Ok(Bytes::from(max.to_string()))
            }
        })
        .unary("pid", |_ctx: HandlerContext, _payload: Bytes| async move {
            Ok(Bytes::from(std::process::id().to_string()))
        })
        .unary("echo", |ctx: HandlerContext, payload: Bytes| async move {
            let headers: Vec<String> = ctx
                .headers()
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            Ok(Bytes::from(format!(
                "{}/{} {} [{}]",
                ctx.entity_type(),
                ctx.entity_id(),
                text(&payload),
                headers.join(",")
            )))
        })
        .unary("exit", |_ctx: HandlerContext, _payload: Bytes| async move {
            std::process::exit(9);
        })
        .unary("fail", |_ctx: HandlerContext, payload: Bytes| async move {
            Err(HandlerFailure::application(text(&payload)))
        })
        .unary("fatal", |_ctx: HandlerContext, payload: Bytes| async move {
            Err(HandlerFailure::fatal(text(&payload)))
        })
        .unary(
            "freeze",
            |_ctx: HandlerContext, _payload: Bytes| async move {
                // Blocks the worker's only thread: it stops answering anything, heartbeats included,
                // while its socket stays open.
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            },
        )
        .unary(
            "forever",
            |_ctx: HandlerContext, _payload: Bytes| async move {
                let _busy = Busy::enter();
                std::future::pending::<()>().await;
                Ok(Bytes::new())
            },
        )
        .unary("busy", |_ctx: HandlerContext, _payload: Bytes| async move {
            Ok(Bytes::from(BUSY.load(Ordering::SeqCst).to_string()))
        })
        .unary(
            "keep_alive",
            |ctx: HandlerContext, payload: Bytes| async move {
                ctx.keep_alive(text(&payload) == "on");
                Ok(Bytes::new())
            },
        )
        .unary("kv", kv_command)
        .persisted_unary(
            "crash_once",
            |ctx: HandlerContext, payload: Bytes| async move {
                // `crash_once MARKER`: the first delivery records its request id in MARKER and
                // crashes the worker; a redelivery answers with the id it recorded and its own.
                let marker = text(&payload);
                match std::fs::read_to_string(&marker) {
                    Ok(first) => Ok(Bytes::from(format!("{first} {}", ctx.request_id()))),
                    Err(_) => {
                        std::fs::write(&marker, ctx.request_id().to_string())
                            .map_err(|e| HandlerFailure::application(format!("{marker}: {e}")))?;
                        std::process::exit(9);
                    }
                }
            },
        )
        .stream(
            "ticks",
            |_ctx: HandlerContext, payload: Bytes, out: ChunkWriter| async move {
                let n: u64 = text(&payload).trim().parse().unwrap_or(3);
                for i in 1..=n {
                    out.send(i.to_string())?;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(())
            },
        )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = shoal_launcher::WorkerArgs::from_env()?;
    let rest: Vec<String> = args
        .rest
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if rest.iter().any(|a| a == "--exit-at-once") {
        eprintln!("test worker: exiting at once as asked");
        std::process::exit(3);
    }
    let flag_value = |flag: &str| {
        rest.iter()
            .position(|a| a == flag)
            .and_then(|i| rest.get(i + 1))
            .cloned()
    };
    if let Some(marker) = flag_value("--start-marker") {
        if std::path::Path::new(&marker).exists() {
            eprintln!("test worker: {marker} exists; exiting at once");
            std::process::exit(4);
        }
        std::fs::write(&marker, b"started")?;
    }
    if rest.iter().any(|a| a == "--silent") {
        std::future::pending::<()>().await;
    }
    let concurrency = flag_value("--probe-concurrency")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let extra_tag =
        flag_value("--extra-tag-if").is_some_and(|file| std::path::Path::new(&file).exists());
    let mut worker = Worker::new("test-worker");
    if rest.iter().any(|a| a == "--bad-describe") {
        worker = worker.entity(EntityType::new("tagless"));
    } else {
        worker = worker.entity(probe(Gauges::default(), concurrency, extra_tag));
    }
    worker.run_with(&args).await?;
    Ok(())
}
