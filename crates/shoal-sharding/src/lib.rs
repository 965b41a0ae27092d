//! # shoal-sharding
//!
//! The sharding runtime of Shoal: stateful **entities** addressed by `(type, id)`, spread over
//! the runners of a cluster. Ids hash to shards; every runner computes the same shard assignment
//! from the runners and leases in storage ([`ShardAssignment`]); a runner serves a shard only
//! while it holds the shard's lease, refreshed well before it expires and fenced by an epoch.
//! Calls go to the local instance when this runner holds the shard and to the owner through a
//! [`Transport`] otherwise, retried while shards move.
//!
//! Each entity type is declared once: its messages, its handlers and the shared state its
//! instances get (`Entity::State`). The example below is `examples/bank.rs` (run it with
//! `cargo run -p shoal-sharding --example bank`): accounts whose balances live in entity
//! storage, a ledger handed to every account as state, two runners in one process and a
//! transfer between accounts wherever they live.
//!
//! ```
#![doc = include_str!("../examples/bank.rs")]
//! ```

pub mod assignment;
mod builder;
mod client;
mod clock;
mod config;
mod entity;
mod error;
mod hash;
mod health;
mod host;
mod identity;
mod in_process;
mod inbound;
mod lease;
mod lifecycle;
mod local;
mod network;
mod persist;
mod reply;
mod router;
mod serving;
mod sharding;
mod singleton;
mod transport;

pub use assignment::ShardAssignment;
pub use builder::{ShardingBuilder, StartError};
pub use client::{CallOptions, DynamicClient, EntityClient};
pub use config::{ShardingConfig, ShardingConfigBuilder, ShardingConfigError};
pub use entity::{
    ChunkSink, DynamicDefinition, DynamicEntity, DynamicFactory, DynamicRequest, Entity,
    EntityContext, EntityDefinition, EntityKvHandle, EntityOptions, GroupSelector, Handler,
    HandlerError, HandlerErrorKind, Handlers, Message, RawChunkSink, Registration, StreamClosed,
    StreamHandler, TagKind,
};
pub use error::{CallError, CallErrorKind, RegisterError};
pub use hash::shard_for;
pub use health::{NoopHealth, PingHealth, RunnerHealth};
pub use identity::MACHINE_ID_TTL;
pub use in_process::{InProcessEndpoint, InProcessNetwork};
pub use inbound::InboundHandler;
pub use lease::view::ClusterView;
pub use network::{Network, NetworkError};
pub use persist::MessageSettings;
pub use serving::Serving;
pub use sharding::Sharding;
pub use shoal_macros::handlers;
pub use singleton::SingletonContext;
pub use transport::{ReplyFrames, Transport, TransportError};
