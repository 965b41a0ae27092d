//! A worker with one entity type, `counter`, that keeps its value in entity KV — so the value
//! survives the worker being restarted, the entity being passivated, or its shard moving to
//! another runner.
//!
//! Messages are plain decimal text:
//!
//! | tag | payload | reply |
//! |---|---|---|
//! | `increment` | the amount (empty: 1) | the new value |
//! | `get` | — | the value (0 when never set) |
//! | `reset` | — | `0` (the key is deleted) |
//! | `ticks` (stream) | `n` | `1`, `2`, … `n`, one every 20 ms |
//!
//! Run by a runner (`[[entity]] worker = ["counter_worker"]`) or by hand:
//! `cargo run -p shoal-worker --example counter_worker -- --unix /tmp/counter.sock`.

use std::time::Duration;

use bytes::Bytes;
use shoal_worker::sdk::{CallContext, ChunkWriter, EntityType, Failure, Worker};

const KEY: &str = "value";

fn number(payload: &[u8], default: i64) -> Result<i64, Failure> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| Failure::malformed("the payload is not UTF-8"))?
        .trim();
    if text.is_empty() {
        return Ok(default);
    }
    text.parse()
        .map_err(|_| Failure::malformed(format!("{text:?} is not a decimal integer")))
}

async fn current(ctx: &CallContext) -> Result<i64, Failure> {
    match ctx.kv().get_one(KEY).await? {
        Some(stored) => number(&stored, 0)
            .map_err(|_| Failure::fatal("the stored counter value is not a number")),
        None => Ok(0),
    }
}

async fn increment(ctx: CallContext, payload: Bytes) -> Result<Bytes, Failure> {
    let by = number(&payload, 1)?;
    let next = current(&ctx)
        .await?
        .checked_add(by)
        .ok_or_else(|| Failure::application("the counter would overflow"))?;
    ctx.kv().put_one(KEY, next.to_string()).await?;
    Ok(Bytes::from(next.to_string()))
}

async fn get(ctx: CallContext, _payload: Bytes) -> Result<Bytes, Failure> {
    Ok(Bytes::from(current(&ctx).await?.to_string()))
}

async fn reset(ctx: CallContext, _payload: Bytes) -> Result<Bytes, Failure> {
    ctx.kv().delete([KEY]).await?;
    Ok(Bytes::from_static(b"0"))
}

async fn ticks(_ctx: CallContext, payload: Bytes, out: ChunkWriter) -> Result<(), Failure> {
    let n = number(&payload, 10)?;
    for i in 1..=n {
        out.send(i.to_string())?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let counter = EntityType::new("counter")
        .unary("increment", increment)
        .unary("get", get)
        .unary("reset", reset)
        .stream("ticks", ticks);
    Worker::new("counter-worker").entity(counter).run().await?;
    Ok(())
}
