//! # shoal-protocol
//!
//! The vocabulary every Shoal crate shares: identifiers ([`ShardId`], [`EntityType`],
//! [`EntityId`], [`EntityAddress`], [`RunnerAddress`], [`MachineId`]), the [`Runner`] description
//! that runners register in storage, [`Snowflake`] ids, the message envelopes exchanged between
//! runners ([`Request`], [`Reply`], [`Notification`]), and the gRPC code generated from the
//! `.proto` files in the repository's `proto/` folder ([`proto`]), with checked conversions
//! between the two ([`WireError`] on bad wire data, never a panic).
//!
//! It knows nothing of storage, tasks or sockets.
//!
//! ```
//! use shoal_protocol::{EntityAddress, EntityId, EntityType, ShardId};
//!
//! let address = EntityAddress::new(
//!     "default:42".parse::<ShardId>()?,
//!     EntityType::new("counter")?,
//!     EntityId::new("user-7")?,
//! );
//! assert_eq!(address.to_string(), "counter/user-7@default:42");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod backoff;
mod convert;
mod entity;
pub mod kv;
mod message;
mod name;
pub mod proto;
mod runner;
mod shard;
mod snowflake;

pub use backoff::{Attempts, Backoff};
pub use convert::WireError;
pub use entity::EntityAddress;
pub use message::{
    AckChunk, Chunk, ErrorCode, Failure, Headers, Interrupt, Notification, Reply, ReplyFrame,
    Request,
};
pub use name::{EntityId, EntityType, InvalidName, ShardGroup, Tag};
pub use runner::{
    Incarnation, MachineId, ParseRunnerAddressError, Runner, RunnerAddress, RunnerEndpoint,
    RunnerId,
};
pub use shard::{ParseShardIdError, ShardId};
pub use snowflake::{EPOCH_MILLIS, IdsExhausted, Snowflake, SnowflakeGenerator};
