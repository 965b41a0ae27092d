//! # shoal-sharding
//!
//! The sharding runtime of Shoal: stateful **entities** addressed by `(type, id)`, spread over
//! the runners of a cluster. Ids hash to shards; every runner computes the same shard assignment
//! from the runners and leases in storage ([`ShardAssignment`]); a runner serves a shard only
//! while it holds the shard's lease, refreshed well before it expires and fenced by an epoch.
//! Calls go to the local instance when this runner holds the shard and to the owner through a
//! [`Runners`] transport otherwise, retried while shards move.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use serde::{Deserialize, Serialize};
//! use shoal_sharding::{
//!     Entity, EntityContext, EntityDefinition, Handler, HandlerError, InProcessNetwork, Message,
//!     Sharding, ShardingConfig,
//! };
//! use shoal_storage::MemoryRunnerStorage;
//!
//! #[derive(Default)]
//! struct Counter { value: i64 }
//!
//! impl Entity for Counter {
//!     const TYPE: &'static str = "counter";
//!     async fn activate(_: &EntityContext) -> Result<Self, HandlerError> { Ok(Counter::default()) }
//! }
//!
//! #[derive(Clone, Serialize, Deserialize)]
//! struct Increment { by: i64 }
//! impl Message for Increment {
//!     const TAG: &'static str = "increment";
//!     type Reply = i64;
//! }
//!
//! impl Handler<Increment> for Counter {
//!     async fn handle(&mut self, msg: Increment, _: &EntityContext) -> Result<i64, HandlerError> {
//!         self.value += msg.by;
//!         Ok(self.value)
//!     }
//! }
//!
//! let sharding = Sharding::builder(ShardingConfig::default())
//!     .storage(Arc::new(MemoryRunnerStorage::new()))
//!     .in_process(&InProcessNetwork::new())
//!     .runner("127.0.0.1:34431".parse()?)
//!     .entity(EntityDefinition::<Counter>::new().handle::<Increment>())
//!     .start()
//!     .await?;
//! let counters = sharding.client::<Counter>();
//! assert_eq!(counters.call("a", Increment { by: 2 }).await?, 2);
//! assert_eq!(counters.call("a", Increment { by: 3 }).await?, 5);
//! sharding.shutdown().await;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

// Every `CallError` names the entity it concerns (so a user can act on it), which makes it larger
// than clippy's default threshold; it is moved only on the error path.
#![allow(clippy::result_large_err)]

pub mod assignment;
mod client;
mod clock;
mod config;
mod dispatch;
mod entity;
mod error;
mod hash;
mod health;
mod identity;
mod in_process;
mod instance;
mod keeper;
mod manager;
mod outgoing;
mod persist;
mod reachability;
mod residency;
mod routing;
mod runners;
mod server;
mod sharding;
mod shards;
mod singleton;

pub use assignment::ShardAssignment;
pub use client::{CallOptions, DynamicClient, EntityClient};
pub use config::{ConfigError, ShardingConfig, ShardingConfigBuilder};
pub use entity::{
    ChunkSink, DynamicDefinition, DynamicEntity, DynamicFactory, DynamicRequest, Entity,
    EntityContext, EntityDefinition, EntityKvHandle, EntityOptions, GroupSelector, Handler,
    HandlerError, Message, RawChunkSink, Registration, StreamClosed, StreamHandler, TagKind,
};
pub use error::{CallError, RegisterError};
pub use hash::shard_for;
pub use health::{NoopHealth, PingHealth, RunnerHealth};
pub use identity::MACHINE_ID_TTL;
pub use in_process::InProcessNetwork;
pub use persist::MessageSettings;
pub use runners::{ReplyFrames, Runners, TransportError};
pub use sharding::{ClusterView, Sharding, ShardingBuilder, StartError};
pub use singleton::SingletonContext;
