//! A worker for the integration tests of `shoal-worker` (real processes): an entity type `probe`
//! whose tags exercise concurrency, failures, crashes, time-outs and entity KV. Not a product.
//!
//! Extra arguments: `--exit-at-once` (exit before serving), `--silent` (never announce the
//! socket), `--bad-describe` (declare a type without tags), `--probe-concurrency N`.
#![allow(
    clippy::print_stderr,
    reason = "a test worker reports why it exits on stderr"
)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use shoal_storage::kv::{KvEntry, KvQuery};
use shoal_worker::sdk::{CallContext, ChunkWriter, EntityType, Failure, KvError, Worker};

#[derive(Default)]
struct Gauge {
    now: u32,
    max: u32,
}

type Gauges = Arc<Mutex<HashMap<String, Gauge>>>;

fn text(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

fn kv_failure(error: KvError) -> Failure {
    Failure::application(format!("{:?}: {}", error.kind(), error.message()))
}

async fn kv_command(ctx: CallContext, payload: Bytes) -> Result<Bytes, Failure> {
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
        other => return Err(Failure::malformed(format!("unknown KV command {other:?}"))),
    };
    Ok(Bytes::from(reply))
}

fn probe(gauges: Gauges, concurrency: u32) -> EntityType {
    let hold_gauges = gauges.clone();
    EntityType::new("probe")
        .concurrency(concurrency)
        .unary("hold", move |ctx: CallContext, payload: Bytes| {
            let gauges = hold_gauges.clone();
            async move {
                let millis: u64 = text(&payload).trim().parse().unwrap_or(50);
                let id = ctx.entity_id().to_owned();
                {
                    let mut all = gauges.lock().map_err(|_| Failure::fatal("poisoned"))?;
                    let gauge = all.entry(id.clone()).or_default();
                    gauge.now += 1;
                    gauge.max = gauge.max.max(gauge.now);
                }
                tokio::time::sleep(Duration::from_millis(millis)).await;
                let mut all = gauges.lock().map_err(|_| Failure::fatal("poisoned"))?;
                let gauge = all.entry(id).or_default();
                gauge.now -= 1;
                Ok(Bytes::from(gauge.max.to_string()))
            }
        })
        .unary("max", move |ctx: CallContext, _payload: Bytes| {
            let gauges = gauges.clone();
            async move {
                let all = gauges.lock().map_err(|_| Failure::fatal("poisoned"))?;
                let max = all.get(ctx.entity_id()).map_or(0, |g| g.max);
                Ok(Bytes::from(max.to_string()))
            }
        })
        .unary("pid", |_ctx: CallContext, _payload: Bytes| async move {
            Ok(Bytes::from(std::process::id().to_string()))
        })
        .unary("echo", |ctx: CallContext, payload: Bytes| async move {
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
        .unary("exit", |_ctx: CallContext, _payload: Bytes| async move {
            std::process::exit(9);
        })
        .unary("fail", |_ctx: CallContext, payload: Bytes| async move {
            Err(Failure::application(text(&payload)))
        })
        .unary("fatal", |_ctx: CallContext, payload: Bytes| async move {
            Err(Failure::fatal(text(&payload)))
        })
        .unary("forever", |_ctx: CallContext, _payload: Bytes| async move {
            std::future::pending::<()>().await;
            Ok(Bytes::new())
        })
        .unary(
            "keep_alive",
            |ctx: CallContext, payload: Bytes| async move {
                ctx.keep_alive(text(&payload) == "on");
                Ok(Bytes::new())
            },
        )
        .unary("kv", kv_command)
        .stream(
            "ticks",
            |_ctx: CallContext, payload: Bytes, out: ChunkWriter| async move {
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
    if rest.iter().any(|a| a == "--silent") {
        std::future::pending::<()>().await;
    }
    let concurrency = rest
        .iter()
        .position(|a| a == "--probe-concurrency")
        .and_then(|i| rest.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let mut worker = Worker::new("test-worker");
    if rest.iter().any(|a| a == "--bad-describe") {
        worker = worker.entity(EntityType::new("tagless"));
    } else {
        worker = worker.entity(probe(Gauges::default(), concurrency));
    }
    worker.run_with(&args).await?;
    Ok(())
}
