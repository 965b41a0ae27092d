//! # shoal-lanes
//!
//! Routes typed **tasks** (request → response) and **events** (fire-and-forget) between the
//! processes of a deployment, without changing the code that calls them:
//!
//! - **Event lanes** carry events through a queue ([`MemoryQueue`], [`PostgresQueue`]) to the
//!   processes whose profile consumes the lane: at-least-once, with retries that wait in the
//!   queue, dead letters, and prefetch.
//! - **RPC lanes** run tasks (and events) in the processes whose profile serves the lane; the
//!   others call them through a [`Communicator`] ([`GrpcCommunicator`], served by the exposure
//!   configured with [`ExposureConfig`]).
//! - A **topology** ([`Topology`]) lists the lanes, the **profiles** (what a kind of process
//!   consumes and serves) and the **bindings** (which queue or communicator backs a lane, with
//!   its retry policy and [`LaneAuth`]). Every process shares it and picks its profile at start.
//! - **Modes** ([`Mode`]): `network`, `transparent` (everything local) and `local-simulated`
//!   (serialize, sign and verify as if remote, in one process).
//! - **Lane JWTs** bind each call or event to its lane, kind, target and payload hash.
//!
//! Mistakes in the topology are refused at start with typed errors ([`LanesConfigError`], each
//! with a stable [`LanesConfigError::id`]); a task call or an emission that fails for another
//! reason than the task's own error reports a [`LanesCallError`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use shoal_lanes::*;
//!
//! #[derive(Debug, serde::Serialize, serde::Deserialize)]
//! enum QuoteError { UnknownSku }
//! const QUOTE: TaskDef<String, u64, QuoteError> = TaskDef::new("pricing:quote");
//!
//! let mut registry = Registry::new();
//! registry.task(QUOTE, |sku, _cx| async move {
//!     match sku.as_str() {
//!         "tea" => Ok(350),
//!         _ => Err(QuoteError::UnknownSku.into()),
//!     }
//! });
//! let topology = Topology::new()
//!     .rpc_lane(RpcLane::new("pricing").apply_to([QUOTE]))
//!     .profile("monolith", Profile::new().serve("pricing"))
//!     .bind_rpc(RpcBinding::new("pricing"));
//!
//! let lanes = Lanes::builder(registry, topology, "monolith").start().await?;
//! assert_eq!(lanes.run_task(QUOTE, "tea".to_owned()).await?, 350);
//! assert!(matches!(
//!     lanes.run_task(QUOTE, "gold".to_owned()).await,
//!     Err(RunError::Task(QuoteError::UnknownSku))
//! ));
//! lanes.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod auth;
mod communicator;
mod context;
pub mod diagnostics;
mod envelope;
mod error;
mod exposure;
pub mod id;
mod lane;
mod mode;
mod plan;
mod queue;
mod registry;
mod runtime;
mod topology;

pub use auth::{
    Algorithm, AuthError, DEFAULT_MAX_TOKEN_LIFETIME, DEFAULT_REPLAY_CAPACITY, KeyError, LaneAuth,
    LaneClaims, MIN_HMAC_SECRET_LEN, Subject, TargetKind, Unauthorized, context_hash, payload_hash,
};
pub use communicator::{Communicator, GrpcCommunicator, RemoteCall, RemoteError};
pub use context::CallContext;
pub use envelope::{DeadLetter, Envelope, NewEnvelope, StoredEnvelope};
pub use error::{LanesCallError, LanesConfigError, LanesStartError, RunError};
pub use exposure::{CONTEXT_HEADER, EDGE_TOKEN_HEADER, ERROR_ID_HEADER, EdgeAuth, ExposureConfig};
pub use id::IdKind;
pub use lane::{ApplyTo, EventLane, RpcLane, TargetInfo};
pub use mode::Mode;
pub use queue::{
    EventQueue, MemoryQueue, PostgresQueue, PostgresQueueOptions, QueueError, QueueStats,
};
pub use registry::{
    BoxError, EventContext, EventDef, NoError, Registry, Source, Target, TaskContext, TaskDef,
    TaskFailure,
};
pub use runtime::{EmitOptions, Lanes, LanesBuilder};
pub use topology::{ConsumeEntry, EventBinding, Profile, RpcBinding, Topology};
