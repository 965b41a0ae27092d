//! The [`EntityKv`] seam.

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use shoal_protocol::EntityAddress;

use super::query::{KvEntry, KvQuery};
use crate::error::StorageError;
use crate::messages::Fence;

/// Durable key-value storage private to each entity.
///
/// Entities are identified by type and id (the address's shard only names the lease that fences
/// writes: an entity keeps its data when its shard moves). Keys are compared as unsigned bytes.
/// Every operation is bounded by the backend's call deadline and checks the limits in
/// [`crate::kv`] before touching data; a request over a limit fails as a whole with
/// [`StorageError::InvalidArgument`].
///
/// Writes take the [`Fence`] under which the caller hosts the entity: the shard (which must be
/// `entity.shard`) and the epoch of its lease. The backend compares the fence with the shard's
/// lease in the runner storage **in the same transaction** as the write and refuses the write
/// with [`StorageError::Fenced`] when the lease has a newer epoch. A shard that was never leased
/// fences nothing.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use shoal_protocol::{EntityAddress, Incarnation, RunnerId};
/// use shoal_storage::kv::{EntityKv, KvEntry, KvQuery, MemoryEntityKv};
/// use shoal_storage::{Fence, MemoryRunnerStorage, RunnerStorage};
///
/// let runners = Arc::new(MemoryRunnerStorage::new());
/// let me = RunnerId::new("127.0.0.1:1".parse()?, Incarnation::random());
/// let shard = "default:3".parse()?;
/// let held = runners.acquire(&me, &[shard], Duration::from_secs(30)).await?;
/// let fence = Fence { shard: held[0].shard.clone(), epoch: held[0].epoch };
///
/// let kv = MemoryEntityKv::new(runners);
/// let counter = EntityAddress::new(fence.shard.clone(), "counter".parse()?, "a".parse()?);
/// kv.put(&counter, &[KvEntry::new("value", "41")], &fence).await?;
/// assert_eq!(kv.get(&counter, &["value".into(), "nope".into()]).await?, [Some("41".into()), None]);
/// assert_eq!(kv.list(&counter, &KvQuery::prefix("v")).await?.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[async_trait]
pub trait EntityKv: Send + Sync + fmt::Debug + 'static {
    /// The values of `keys`, in the same order: `None` for a key that is not set. At most
    /// [`MAX_KEYS`](super::MAX_KEYS) keys; none gives an empty answer.
    async fn get(
        &self,
        entity: &EntityAddress,
        keys: &[Bytes],
    ) -> Result<Vec<Option<Bytes>>, StorageError>;

    /// The entries `query` selects, in key order (descending when reversed), at most its limit.
    async fn list(
        &self,
        entity: &EntityAddress,
        query: &KvQuery,
    ) -> Result<Vec<KvEntry>, StorageError>;

    /// Sets every entry, all or nothing (a key given twice takes its last value). At most
    /// [`MAX_KEYS`](super::MAX_KEYS) entries and [`MAX_PUT_PAYLOAD`](super::MAX_PUT_PAYLOAD)
    /// bytes; values are 1 byte to [`MAX_VALUE_SIZE`](super::MAX_VALUE_SIZE).
    async fn put(
        &self,
        entity: &EntityAddress,
        entries: &[KvEntry],
        fence: &Fence,
    ) -> Result<(), StorageError>;

    /// Removes `keys` (keys that are not set are ignored). At most
    /// [`MAX_KEYS`](super::MAX_KEYS) keys.
    async fn delete(
        &self,
        entity: &EntityAddress,
        keys: &[Bytes],
        fence: &Fence,
    ) -> Result<(), StorageError>;

    /// Removes every key `k` with `start <= k < end` (nothing when `end <= start`).
    async fn delete_range(
        &self,
        entity: &EntityAddress,
        start: &[u8],
        end: &[u8],
        fence: &Fence,
    ) -> Result<(), StorageError>;

    /// Removes every key of the entity.
    async fn drop_all(&self, entity: &EntityAddress, fence: &Fence) -> Result<(), StorageError>;
}
