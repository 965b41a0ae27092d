//! Choosing a backend from a URL.

use std::sync::Arc;

use crate::error::StorageError;
use crate::kv::{EntityKv, MemoryEntityKv};
use crate::memory::{MemoryMessageStorage, MemoryRunnerStorage};
use crate::messages::MessageStorage;
use crate::options::StorageOptions;
use crate::runner_storage::RunnerStorage;

/// Opens the [`RunnerStorage`] a URL names:
///
/// | URL | Backend |
/// |---|---|
/// | `memory:` | [`MemoryRunnerStorage`] (this process only) |
/// | `sqlite::memory:` | SQLite, a private in-memory database |
/// | `sqlite:path/to/file.db`, `sqlite:///abs/path.db` | SQLite, a database file |
/// | `postgres://…`, `postgresql://…` | Postgres |
///
/// SQL backends apply their migrations unless `options` say not to. Anything else is refused
/// with [`StorageError::InvalidArgument`] (the message never echoes the URL's password).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use shoal_storage::{StorageError, StorageOptions, connect_runner_storage};
///
/// let storage = connect_runner_storage("sqlite::memory:", StorageOptions::new()).await?;
/// assert!(storage.runners().await?.is_empty());
/// let refused = connect_runner_storage("mysql://db/shoal", StorageOptions::new()).await;
/// assert!(matches!(refused, Err(StorageError::InvalidArgument { .. })));
/// # Ok::<(), StorageError>(())
/// # }).unwrap();
/// ```
#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres")),
    allow(unused_variables)
)]
pub async fn connect_runner_storage(
    url: &str,
    options: StorageOptions,
) -> Result<Arc<dyn RunnerStorage>, StorageError> {
    let scheme = url.split_once(':').map(|(scheme, _)| scheme);
    match scheme {
        Some("memory") if url == "memory:" || url == "memory://" => {
            Ok(Arc::new(MemoryRunnerStorage::new()))
        }
        #[cfg(feature = "sqlite")]
        Some("sqlite") => Ok(Arc::new(
            crate::sqlite::SqliteRunnerStorage::connect(url, options).await?,
        )),
        #[cfg(feature = "postgres")]
        Some("postgres" | "postgresql") => Ok(Arc::new(
            crate::postgres::PostgresRunnerStorage::connect(url, options).await?,
        )),
        #[cfg(not(feature = "sqlite"))]
        Some("sqlite") => Err(missing_backend("sqlite")),
        #[cfg(not(feature = "postgres"))]
        Some("postgres" | "postgresql") => Err(missing_backend("postgres")),
        Some("memory") => Err(StorageError::InvalidArgument {
            operation: "connect",
            detail: "the memory backend takes no path or parameters: use `memory:`".to_owned(),
        }),
        _ => Err(StorageError::InvalidArgument {
            operation: "connect",
            detail: format!(
                "unsupported storage URL scheme {:?}; expected `memory:`, `sqlite:…` or \
                 `postgres://…`",
                scheme.unwrap_or("")
            ),
        }),
    }
}

/// Opens the [`RunnerStorage`] and the [`MessageStorage`] a URL names (see
/// [`connect_runner_storage`] for the URLs), sharing one database and one
/// table prefix: replies saved in the message storage are fenced by the runner storage's leases.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use shoal_storage::{StorageError, StorageOptions, connect_storage};
///
/// let (runners, messages) = connect_storage("sqlite::memory:", StorageOptions::new()).await?;
/// assert!(runners.runners().await?.is_empty());
/// assert!(messages.replies_for(&[]).await?.is_empty());
/// # Ok::<(), StorageError>(())
/// # }).unwrap();
/// ```
pub async fn connect_storage(
    url: &str,
    options: StorageOptions,
) -> Result<(Arc<dyn RunnerStorage>, Arc<dyn MessageStorage>), StorageError> {
    let storage = connect(url, options).await?;
    Ok((storage.runners, storage.messages))
}

#[cfg(not(all(feature = "sqlite", feature = "postgres")))]
fn missing_backend(feature: &str) -> StorageError {
    StorageError::InvalidArgument {
        operation: "connect",
        detail: format!(
            "this build of shoal-storage has no {feature} backend (enable the `{feature}` cargo \
             feature)"
        ),
    }
}

/// Every storage seam over one database: what a runner process needs.
#[derive(Clone)]
pub struct Storage {
    /// Membership and shard leases.
    pub runners: Arc<dyn RunnerStorage>,
    /// Durable messages and replies.
    pub messages: Arc<dyn MessageStorage>,
    /// Entity key-value storage.
    pub kv: Arc<dyn EntityKv>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").finish_non_exhaustive()
    }
}

/// Connections of the pool that serves only leases and membership on Postgres (the keeper's
/// calls are sequential; probes, machine-id renewals and status calls share the rest).
#[cfg(feature = "postgres")]
const RUNNER_POOL_CONNECTIONS: u32 = 3;

/// Opens runner storage, message storage and entity KV over the database a URL names (the URLs
/// of [`connect_runner_storage`]). Migrations are applied unless `options` say not to.
///
/// On Postgres the runner storage (leases, membership) has a pool of three connections of its
/// own, and messages and entity KV share a pool of [`StorageOptions::max_connections`].
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use shoal_storage::{StorageOptions, connect};
///
/// let storage = connect("sqlite::memory:", StorageOptions::new()).await?;
/// assert!(storage.runners.runners().await?.is_empty());
/// # Ok::<(), shoal_storage::StorageError>(())
/// # }).unwrap();
/// ```
#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres")),
    allow(unused_variables)
)]
pub async fn connect(url: &str, options: StorageOptions) -> Result<Storage, StorageError> {
    let scheme = url.split_once(':').map(|(scheme, _)| scheme);
    match scheme {
        Some("memory") if url == "memory:" || url == "memory://" => {
            let runners = Arc::new(MemoryRunnerStorage::new());
            let messages = Arc::new(MemoryMessageStorage::new(runners.clone()));
            let kv = Arc::new(MemoryEntityKv::new(runners.clone()));
            Ok(Storage {
                runners,
                messages,
                kv,
            })
        }
        #[cfg(feature = "sqlite")]
        Some("sqlite") => {
            let runners = crate::sqlite::SqliteRunnerStorage::connect(url, options).await?;
            let messages = crate::sqlite::SqliteMessageStorage::new(runners.inner()).await?;
            let kv = crate::kv::SqliteEntityKv::new(runners.inner());
            Ok(Storage {
                runners: Arc::new(runners),
                messages: Arc::new(messages),
                kv: Arc::new(kv),
            })
        }
        #[cfg(feature = "postgres")]
        Some("postgres" | "postgresql") => {
            use crate::postgres::{PostgresMessageStorage, PostgresRunnerStorage};
            // Leases and membership get a small pool of their own: a lease refresh never waits
            // for a connection behind message traffic, which matters most when connections
            // come back after an outage and every caller wants one at once.
            let runners = PostgresRunnerStorage::connect(
                url,
                options
                    .clone()
                    .with_max_connections(RUNNER_POOL_CONNECTIONS),
            )
            .await?;
            let data = PostgresRunnerStorage::connect(url, options.with_migrate(false)).await?;
            let messages = PostgresMessageStorage::new(data.inner()).await?;
            let kv = crate::kv::PostgresEntityKv::new(data.inner());
            Ok(Storage {
                runners: Arc::new(runners),
                messages: Arc::new(messages),
                kv: Arc::new(kv),
            })
        }
        // Everything else is refused exactly as `connect_runner_storage` refuses it.
        _ => connect_runner_storage(url, options).await.and_then(|_| {
            Err(StorageError::InvalidArgument {
                operation: "connect",
                detail: "this storage URL has no message storage".to_owned(),
            })
        }),
    }
}
