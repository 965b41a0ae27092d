//! # shoal-worker
//!
//! Entities implemented by **worker processes**, in any language: the runner side. A worker is a
//! separate process that serves the `shoal.worker.v1` gRPC protocol
//! (`proto/shoal/worker/v1/worker.proto`) on a Unix socket: it describes the entity types it
//! implements, then handles their calls over one bidirectional session per runner, and reads and
//! writes each entity's durable key-value storage through the runner.
//!
//! [`WorkerHost`] launches the worker with `shoal-launcher` (spawn-or-reuse: one process per
//! command line on a machine, shared by its runners) or connects to its socket, checks its
//! `Describe` answer, and turns each entity type into a
//! [`DynamicDefinition`](shoal_sharding::DynamicDefinition) for the sharding runtime. Entity KV
//! requests are served from an [`EntityKv`](shoal_storage::EntityKv), fenced by the shard's lease
//! epoch. A worker that exits, breaks the session or stops answering heartbeats is started again
//! with backoff: persisted requests in flight are delivered again to the new process, volatile
//! ones fail (see [`is_worker_unavailable`]).
//!
//! The worker side is not here: a worker written in Rust links `shoal-worker-sdk` (no sharding
//! runtime, no storage). Other languages generate a server from the proto; `examples/python` is
//! a worker in Python on grpcio. `docs/workers.md` describes the protocol for writers of workers
//! in other languages.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use bytes::Bytes;
//! use shoal_sharding::{CallOptions, InProcessNetwork, Sharding, ShardingConfig};
//! use shoal_storage::{MemoryEntityKv, MemoryRunnerStorage};
//! use shoal_worker::{WorkerHost, WorkerOptions, WorkerSpec};
//!
//! // The runner side: host the Python example worker...
//! let runners = Arc::new(MemoryRunnerStorage::new());
//! let kv = Arc::new(MemoryEntityKv::new(runners.clone()));
//! let spec = WorkerSpec::command([".venv/bin/python", "examples/python/counter_worker.py"])
//!     .options(WorkerOptions::new().request_timeout(Duration::from_secs(5)));
//! let (host, definitions) = WorkerHost::start(spec, kv).await?;
//!
//! // ... register its entity types with a runner, and call them.
//! let mut builder = Sharding::builder(ShardingConfig::default())
//!     .storage(runners)
//!     .in_process(&InProcessNetwork::new())
//!     .runner("127.0.0.1:34431".parse()?);
//! for definition in definitions {
//!     builder = builder.entity(definition);
//! }
//! let sharding = builder.start().await?;
//! let counters = sharding.dynamic_client_for(&"py_counter".parse()?).expect("registered");
//! let value = counters
//!     .call("a", "increment", Bytes::from_static(br#"{"by":2}"#), CallOptions::default())
//!     .await?;
//! assert_eq!(&value[..], b"2");
//! sharding.shutdown().await;
//! host.shutdown().await;
//! # Ok(()) }
//! ```

mod describe;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod host;
mod spec;

pub use describe::{WorkerEntityType, WorkerTag};
pub use error::WorkerError;
pub use host::{WorkerHost, is_worker_unavailable};
pub use spec::{WorkerOptions, WorkerSource, WorkerSpec};

// Shared with the worker side (`shoal-worker-sdk`), hence defined in `shoal-protocol`: the
// protocol version this crate speaks, and the default of [`WorkerOptions::max_kv_in_flight`].
pub use shoal_protocol::proto::worker::{DEFAULT_MAX_KV_IN_FLIGHT, PROTOCOL_VERSION};
