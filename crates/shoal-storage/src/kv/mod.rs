//! Per-entity durable key-value storage: the [`EntityKv`] seam, its limits and its backends.
//!
//! Every entity address owns a private, byte-ordered map of byte keys to byte values. Reads are
//! free; writes carry the [`Fence`](crate::Fence) of the shard lease under which the runner
//! hosts the entity and are refused with [`StorageError::Fenced`](crate::StorageError::Fenced)
//! once another runner holds the shard under a newer epoch — checked in the same transaction as
//! the write, so a runner that lost its shard can never overwrite the new owner's state.
//!
//! | Limit | Value |
//! |---|---|
//! | key size | ≤ [`MAX_KEY_SIZE`] (2 KiB) |
//! | value size | 1 byte ..= [`MAX_VALUE_SIZE`] (128 KiB); empty values are refused |
//! | keys per `get` / `put` / `delete` | ≤ [`MAX_KEYS`] (128) |
//! | bytes per `put` (keys + values) | ≤ [`MAX_PUT_PAYLOAD`] (976 KiB) |
//! | entries per `list` without a limit | [`DEFAULT_LIST_LIMIT`] (16 384) |
//!
//! A request over a limit fails as a whole with
//! [`StorageError::InvalidArgument`](crate::StorageError::InvalidArgument) before anything is
//! read or written.

mod limits;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
mod postgres_puts;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod put_op;
mod query;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod rows;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "sqlite")]
mod sqlite_puts;
mod storage;

pub use limits::{DEFAULT_LIST_LIMIT, MAX_KEY_SIZE, MAX_KEYS, MAX_PUT_PAYLOAD, MAX_VALUE_SIZE};
pub use memory::MemoryEntityKv;
#[cfg(feature = "postgres")]
pub use postgres::PostgresEntityKv;
pub use query::{KvEntry, KvQuery, KvSelection};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteEntityKv;
pub use storage::EntityKv;
