//! Storage errors.

use std::time::Duration;

/// A boxed error from a storage backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The call did not finish within its deadline. The connection it used has been discarded.
    #[error("storage call `{operation}` did not finish within {timeout:?}")]
    Timeout {
        /// The storage operation (for example `acquire`).
        operation: &'static str,
        /// The deadline it was given.
        timeout: Duration,
    },
    /// The backend reported an error (connection refused, SQL error, ...).
    #[error("storage call `{operation}` failed: {source}")]
    Backend {
        /// The storage operation.
        operation: &'static str,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
    /// Stored data could not be decoded. The message names the row so an operator can fix it.
    #[error("malformed data in storage ({what}): {detail}")]
    Malformed {
        /// Which row or value (for example `runner row for address 10.0.0.1:34431`).
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// An argument the storage cannot accept (for example an empty address).
    #[error("invalid argument to storage call `{operation}`: {detail}")]
    InvalidArgument {
        /// The storage operation.
        operation: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A write for a shard was refused: the shard's lease has a newer epoch than the writer's
    /// (another runner owns it now).
    #[error(
        "write for shard {shard} under epoch {epoch} refused: the shard has a newer owner (epoch {current})"
    )]
    Fenced {
        /// The shard.
        shard: shoal_protocol::ShardId,
        /// The writer's epoch.
        epoch: u64,
        /// The shard's current epoch.
        current: u64,
    },
    /// Applying the schema migrations failed.
    #[error("applying storage migrations failed: {0}")]
    Migration(#[source] BoxError),
}

impl StorageError {
    /// A backend error for `operation`.
    pub fn backend(operation: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            operation,
            source: source.into(),
        }
    }

    /// Whether the failure is about reaching the storage (time-out or backend error) rather than
    /// about the data: callers treat these as "storage unhealthy".
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::Backend { .. })
    }
}
