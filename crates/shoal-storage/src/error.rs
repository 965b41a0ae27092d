//! Storage errors.

use std::time::Duration;

/// A boxed error from a storage backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The call did not finish within its deadline. The connection it used has been discarded.
    /// A write that timed out may still land: its outcome is unknown.
    #[error("storage call `{operation}` did not finish within {timeout:?}")]
    Timeout {
        /// The storage operation (for example `acquire`).
        operation: &'static str,
        /// The deadline it was given.
        timeout: Duration,
    },
    /// The call did not start within its deadline (it waited in a queue), and nothing was
    /// written: it is safe to retry. Unlike [`StorageError::Timeout`], whose outcome is unknown.
    #[error("storage call `{operation}` did not start within {timeout:?}; nothing was written")]
    NotStarted {
        /// The storage operation.
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
    /// The write conflicts with what storage holds, and nothing was written: for example a
    /// request saved under an id that another request already has (two processes minted the same
    /// id), whose entity, message or payload differ.
    #[error("storage call `{operation}` refused: {detail}; nothing was written")]
    Conflict {
        /// The storage operation.
        operation: &'static str,
        /// What conflicts with what.
        detail: String,
    },
    /// Storage refused the operation because of what it holds: for example an interrupt of an
    /// uninterruptible request, or one that names another entity than its request's.
    #[error("storage call `{operation}` refused: {reason}")]
    Refused {
        /// The storage operation.
        operation: &'static str,
        /// Why.
        reason: String,
    },
    /// A runner cannot register: a live process of another incarnation is registered at its
    /// address (two processes given the same advertised address, or a restart while the old
    /// process still runs or is frozen).
    #[error(
        "runner address {address} is in use by another live process (incarnation {holder}, \
         heartbeat valid for another {expires_in:?}): give each runner its own advertised \
         address (advertise_host / listen port), or stop the other process first"
    )]
    AddressInUse {
        /// The address.
        address: shoal_protocol::RunnerAddress,
        /// The incarnation registered there.
        holder: shoal_protocol::Incarnation,
        /// How long its heartbeat stays valid unless renewed.
        expires_in: Duration,
    },
    /// Every machine id (0 to 1023) is leased by a live process.
    #[error("no machine id is free: 1024 live processes hold one each")]
    NoMachineId,
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
        matches!(
            self,
            Self::Timeout { .. } | Self::Backend { .. } | Self::NotStarted { .. }
        )
    }

    /// Whether a write that failed this way may have been applied all the same (a time-out
    /// once the write was under way, a connection lost mid-statement): its caller must not
    /// report "not stored". Errors about the data, and [`StorageError::NotStarted`], mean
    /// nothing was written.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::Backend { .. })
    }
}
