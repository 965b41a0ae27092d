//! Options shared by the SQL backends.

use std::time::Duration;

use crate::prefix::TablePrefix;

/// How a SQL [`RunnerStorage`](crate::RunnerStorage) connects and behaves.
///
/// ```
/// use std::time::Duration;
/// use shoal_storage::{StorageOptions, TablePrefix};
///
/// let options = StorageOptions::new()
///     .with_table_prefix("billing".parse::<TablePrefix>()?)
///     .with_call_timeout(Duration::from_secs(2));
/// assert_eq!(options.table_prefix.as_str(), "billing");
/// assert!(options.migrate);
/// # Ok::<(), shoal_storage::InvalidTablePrefix>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StorageOptions {
    /// Prefix of every table (default `shoal`), so that clusters can share one database.
    pub table_prefix: TablePrefix,
    /// The deadline of every storage call, including the wait for a pooled connection
    /// (default 5 s). A call that misses it fails with
    /// [`StorageError::Timeout`](crate::StorageError::Timeout) and its connection is closed
    /// rather than returned to the pool. Keep it well under the shard lease TTL.
    pub call_timeout: Duration,
    /// Apply the embedded migrations when connecting (default `true`). When `false`, connecting
    /// only checks that the database answers; call `migrate()` yourself.
    pub migrate: bool,
    /// The deadline of applying migrations, including waiting for another process that is
    /// migrating the same database (default 60 s).
    pub migration_timeout: Duration,
    /// Largest number of pooled connections (default 8).
    pub max_connections: u32,
    /// How long after its heartbeat lapsed a runner row is kept (default 1 h). Rows older than
    /// that are deleted by the next `unregister`; younger ones stay so that a runner whose
    /// heartbeat lapsed briefly reappears as soon as it refreshes again.
    pub forget_dead_runners_after: Duration,
}

impl StorageOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`StorageOptions::table_prefix`].
    pub fn with_table_prefix(mut self, prefix: TablePrefix) -> Self {
        self.table_prefix = prefix;
        self
    }

    /// Sets [`StorageOptions::call_timeout`].
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Sets [`StorageOptions::migrate`].
    pub fn with_migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// Sets [`StorageOptions::migration_timeout`].
    pub fn with_migration_timeout(mut self, timeout: Duration) -> Self {
        self.migration_timeout = timeout;
        self
    }

    /// Sets [`StorageOptions::max_connections`] (at least 1).
    pub fn with_max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Sets [`StorageOptions::forget_dead_runners_after`].
    pub fn with_forget_dead_runners_after(mut self, after: Duration) -> Self {
        self.forget_dead_runners_after = after;
        self
    }
}

impl Default for StorageOptions {
    fn default() -> Self {
        Self {
            table_prefix: TablePrefix::default(),
            call_timeout: Duration::from_secs(5),
            migrate: true,
            migration_timeout: Duration::from_secs(60),
            max_connections: 8,
            forget_dead_runners_after: Duration::from_secs(3600),
        }
    }
}
