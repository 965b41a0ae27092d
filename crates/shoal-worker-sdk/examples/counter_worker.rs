//! A worker in Rust with one entity type, `rust_counter` (or the name given with
//! `--entity-type`), that keeps its value in entity KV — so the value survives the worker being
//! restarted, the entity being passivated, or its shard moving to another runner.
//!
//! Messages are JSON, as the HTTP gateway passes them:
//!
//! | tag | payload | reply |
//! |---|---|---|
//! | `increment` (persisted) | `{"by": n}` or `{}` (n = 1) | the new value |
//! | `get` | anything | the value (0 when never set) |
//! | `reset` | anything | `0` (the keys are deleted) |
//! | `ticks` (stream) | `{"n": n}` | `1`, `2`, … `n`, one every 20 ms |
//!
//! Run by a runner:
//!
//! ```toml
//! [[entity]]
//! type = "rust_counter"
//! worker = ["target/debug/examples/counter_worker"]
//! ```
//!
//! or by hand: `cargo run -p shoal-worker-sdk --example counter_worker -- --unix /tmp/counter.sock`.

use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use shoal_worker_sdk::{ChunkWriter, EntityType, HandlerContext, HandlerFailure, KvEntry, Worker};

const VALUE: &str = "value";
/// The last increment applied, `<request id> <value>`, written with the value: a persisted
/// request redelivered after a crash finds its id here and is answered, not applied twice (an
/// entity's persisted requests run one at a time, in order, so one key is enough).
const LAST: &str = "last_increment";

/// The payload as a JSON object (empty: `{}`).
fn decode(payload: &[u8]) -> Result<serde_json::Map<String, Value>, HandlerFailure> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice(payload) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(HandlerFailure::malformed("expected a JSON object")),
        Err(e) => Err(HandlerFailure::malformed(format!(
            "the payload is not JSON: {e}"
        ))),
    }
}

/// An integer field of the payload, `default` when absent.
fn integer(payload: &[u8], field: &str, default: i64) -> Result<i64, HandlerFailure> {
    match decode(payload)?.get(field) {
        None => Ok(default),
        Some(value) => value
            .as_i64()
            .ok_or_else(|| HandlerFailure::malformed(format!("{field:?} must be an integer"))),
    }
}

async fn current(ctx: &HandlerContext) -> Result<i64, HandlerFailure> {
    match ctx.kv().get_one(VALUE).await? {
        None => Ok(0),
        Some(stored) => std::str::from_utf8(&stored)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| HandlerFailure::fatal("the stored counter value is not a number")),
    }
}

async fn increment(ctx: HandlerContext, payload: Bytes) -> Result<Bytes, HandlerFailure> {
    let by = integer(&payload, "by", 1)?;
    if let Some(last) = ctx.kv().get_one(LAST).await?
        && let Some((id, value)) = std::str::from_utf8(&last)
            .ok()
            .and_then(|text| text.split_once(' '))
        && id == ctx.request_id().to_string()
    {
        return Ok(Bytes::from(value.to_owned()));
    }
    let next = current(&ctx)
        .await?
        .checked_add(by)
        .ok_or_else(|| HandlerFailure::application("the counter would overflow"))?;
    let last = format!("{} {next}", ctx.request_id());
    ctx.kv()
        .put([
            KvEntry::new(VALUE, next.to_string()),
            KvEntry::new(LAST, last),
        ])
        .await?;
    Ok(Bytes::from(next.to_string()))
}

async fn get(ctx: HandlerContext, _payload: Bytes) -> Result<Bytes, HandlerFailure> {
    Ok(Bytes::from(current(&ctx).await?.to_string()))
}

async fn reset(ctx: HandlerContext, _payload: Bytes) -> Result<Bytes, HandlerFailure> {
    ctx.kv().delete([VALUE, LAST]).await?;
    Ok(Bytes::from_static(b"0"))
}

async fn ticks(
    _ctx: HandlerContext,
    payload: Bytes,
    out: ChunkWriter,
) -> Result<(), HandlerFailure> {
    let n = integer(&payload, "n", 3)?;
    for i in 1..=n {
        out.send(i.to_string())?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The launcher appends `--unix PATH --idle-timeout SECS`; anything else is ours.
    let args = shoal_launcher::WorkerArgs::from_env()?;
    let name = args
        .rest
        .iter()
        .position(|a| a == "--entity-type")
        .and_then(|i| args.rest.get(i + 1))
        .map_or_else(
            || "rust_counter".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        );
    let counter = EntityType::new(name)
        .persisted_unary("increment", increment)
        .unary("get", get)
        .unary("reset", reset)
        .stream("ticks", ticks);
    Worker::new("rust-counter-worker")
        .entity(counter)
        .run_with(&args)
        .await?;
    Ok(())
}
