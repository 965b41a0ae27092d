//! # shoal-storage
//!
//! The storage seams of a Shoal cluster and their backends.
//!
//! - [`RunnerStorage`]: runner membership (register, heartbeat, health), shard **leases** with a
//!   fencing [`Epoch`], and process identity (an incarnation per process start, leased machine
//!   ids, the [`ClusterParameters`] every process must share). [`EncodedRunnerStorage`] is the same seam over text, adapted to the typed
//!   trait by [`Typed`].
//! - Backends: [`MemoryRunnerStorage`] (real lease semantics, no durability; for tests and
//!   single-process use), [`SqliteRunnerStorage`] (feature `sqlite`, a file or in-memory
//!   database) and [`PostgresRunnerStorage`] (feature `postgres`). The SQL backends keep all
//!   times on the database clock, bound every call by [`StorageOptions::call_timeout`], and
//!   prefix their tables with a [`TablePrefix`] so clusters can share a database.
//! - [`MessageStorage`]: durable requests, replies, stream chunks and interrupts, with
//!   deduplication, claims, scheduled delivery, fencing by the shard epoch, wake-up events and
//!   retention. Backends: [`MemoryMessageStorage`] (fenced by a [`MemoryRunnerStorage`]),
//!   [`SqliteMessageStorage`] and [`PostgresMessageStorage`] (in the database and under the table
//!   prefix of their runner storage; concurrent saves are group-committed in batches).
//! - [`connect_runner_storage`] picks the backend from a URL (`memory:`, `sqlite:…`,
//!   `postgres://…`); [`connect_storage`] opens both seams over one database.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! use std::num::NonZeroU32;
//! use std::time::Duration;
//! use shoal_protocol::{Incarnation, Runner, RunnerId, ShardGroup};
//! use shoal_storage::{MemoryRunnerStorage, RunnerStorage};
//!
//! let storage = MemoryRunnerStorage::new();
//! let runner = Runner::new("127.0.0.1:34431".parse()?, [ShardGroup::default_group()], NonZeroU32::MIN);
//! // A runner is its address and the incarnation of the process serving it.
//! let me = RunnerId::new(runner.address.clone(), Incarnation::random());
//! storage.register(&runner, me.incarnation, true, Duration::from_secs(30)).await?;
//! let shards = ["default:1".parse()?, "default:2".parse()?];
//! let held = storage.acquire(&me, &shards, Duration::from_secs(30)).await?;
//! assert_eq!(held.len(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! The tables, the lease protocol and operating advice are in `docs/storage.md`.

mod cluster;
mod connect;
mod encoded;
mod error;
pub mod kv;
mod lease;
pub mod memory;
mod messages;
mod options;
#[cfg(feature = "postgres")]
pub mod postgres;
mod prefix;
mod runner_storage;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod sql;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod testing;

pub use cluster::{ClusterParameters, ParameterDifference};
pub use connect::{Storage, connect, connect_runner_storage, connect_storage};
pub use encoded::{EncodedLease, EncodedRunner, EncodedRunnerStorage, Typed};
pub use error::{BoxError, StorageError};
pub use kv::{EntityKv, KvEntry, KvQuery, MemoryEntityKv};
pub use lease::{Epoch, HeldShard, MachineIdLease, MachineLease, ShardLease};
pub use memory::{MemoryMessageStorage, MemoryRunnerStorage};
pub use messages::{
    Claim, ClaimedMessage, DeliverAt, EnvelopeKind, Fence, MessageEvent, MessageStorage,
    PersistedEnvelope, PersistedRequest, SaveResult, StoredReply, StoredReplyKind, message_key,
};
pub use options::StorageOptions;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresMessageStorage, PostgresRunnerStorage};
pub use prefix::{InvalidTablePrefix, TablePrefix};
pub use runner_storage::{RunnerStatus, RunnerStorage};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteLocation, SqliteMessageStorage, SqliteRunnerStorage};
