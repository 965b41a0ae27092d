//! # shoal-worker-sdk
//!
//! Write a Shoal **worker process** in Rust. A worker implements entity types for Shoal runners
//! in a process of its own: it serves the `shoal.worker.v1` gRPC protocol
//! (`proto/shoal/worker/v1/worker.proto`) on a Unix socket, describes its entity types, handles
//! their calls over one session per runner, and reads and writes each entity's durable key-value
//! storage through the runner ([`Kv`]).
//!
//! Declare [`EntityType`]s and their handlers, then serve them with [`Worker::run`], which takes
//! the launcher's arguments (`--unix PATH --idle-timeout SECS`) from `argv`: the runner's side
//! (`shoal-worker`'s `WorkerHost`, or `shoal run` with an `[[entity]]` section) starts the process
//! and talks to it. This crate depends on neither the sharding runtime nor storage; the protocol
//! itself is described in `docs/workers.md` for writers of workers in other languages.
//!
//! ```no_run
//! use bytes::Bytes;
//! use shoal_worker_sdk::{EntityType, HandlerContext, HandlerFailure, Worker};
//!
//! async fn increment(ctx: HandlerContext, payload: Bytes) -> Result<Bytes, HandlerFailure> {
//!     let by: i64 = std::str::from_utf8(&payload)
//!         .ok()
//!         .and_then(|text| text.trim().parse().ok())
//!         .ok_or_else(|| HandlerFailure::malformed("expected a decimal number"))?;
//!     let current: i64 = match ctx.kv().get_one("value").await? {
//!         Some(bytes) => String::from_utf8_lossy(&bytes).parse().unwrap_or(0),
//!         None => 0,
//!     };
//!     let next = current + by;
//!     ctx.kv().put_one("value", next.to_string()).await?;
//!     Ok(Bytes::from(next.to_string()))
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     Worker::new("counter-worker")
//!         .entity(EntityType::new("counter").unary("increment", increment))
//!         .run() // --unix PATH --idle-timeout SECS from argv; announces UNIX:PATH
//!         .await?;
//!     Ok(())
//! }
//! ```

mod context;
mod entity_type;
mod failure;
mod kv;
mod service;
mod session;
mod worker;

pub use context::{ChunkWriter, HandlerContext};
pub use entity_type::EntityType;
pub use failure::HandlerFailure;
pub use kv::{Kv, KvError, KvErrorKind};
pub use shoal_protocol::kv::{KvEntry, KvQuery, KvSelection};
pub use shoal_protocol::proto::worker::{DEFAULT_MAX_KV_IN_FLIGHT, PROTOCOL_VERSION};
pub use worker::{Worker, WorkerRunError};
