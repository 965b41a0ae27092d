//! An entity's view of its durable key-value storage.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use shoal_storage::kv::{EntityKv, KvEntry, KvQuery};
use shoal_storage::{Fence, StorageError};

use super::context::EntityContext;

/// The durable key-value storage of one entity (from [`EntityContext::kv`]). Reads see every
/// write the entity made; writes carry the lease epoch the instance started under
/// ([`EntityContext::epoch`]) and are refused ([`StorageError::Fenced`]) once the shard has a
/// newer one, so neither a runner that lost the shard nor a task left over from an earlier
/// instance can overwrite the current instance's state.
#[derive(Clone)]
pub struct EntityKvHandle {
    kv: Arc<dyn EntityKv>,
    ctx: EntityContext,
}

impl fmt::Debug for EntityKvHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntityKvHandle")
            .field("address", self.ctx.address())
            .finish_non_exhaustive()
    }
}

impl EntityKvHandle {
    pub(crate) fn new(kv: Arc<dyn EntityKv>, ctx: EntityContext) -> Self {
        Self { kv, ctx }
    }

    fn fence(&self) -> Result<Fence, StorageError> {
        let shard = self.ctx.address().shard.clone();
        let epoch = self.ctx.epoch();
        match self.ctx.shard_epoch() {
            Some(current) if current == epoch => Ok(Fence { shard, epoch }),
            // The shard is no longer held here under the instance's epoch (released, lost, or
            // taken again under a newer one): refused here, before storage would refuse it.
            current => Err(StorageError::Fenced {
                shard,
                epoch: epoch.0,
                current: current.map_or(0, |e| e.0),
            }),
        }
    }

    /// The value of `key`.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>, StorageError> {
        let values = self.kv.get(self.ctx.address(), &[key.into()]).await?;
        Ok(values.into_iter().next().flatten())
    }

    /// The values of `keys`, in order.
    pub async fn get_many(&self, keys: &[Bytes]) -> Result<Vec<Option<Bytes>>, StorageError> {
        self.kv.get(self.ctx.address(), keys).await
    }

    /// The entries `query` selects.
    pub async fn list(&self, query: &KvQuery) -> Result<Vec<KvEntry>, StorageError> {
        self.kv.list(self.ctx.address(), query).await
    }

    /// Sets `key` to `value`.
    pub async fn put(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<(), StorageError> {
        self.put_many(&[KvEntry::new(key, value)]).await
    }

    /// Sets every entry, all or nothing.
    pub async fn put_many(&self, entries: &[KvEntry]) -> Result<(), StorageError> {
        let fence = self.fence()?;
        self.kv.put(self.ctx.address(), entries, &fence).await
    }

    /// Removes `keys`.
    pub async fn delete(&self, keys: &[Bytes]) -> Result<(), StorageError> {
        let fence = self.fence()?;
        self.kv.delete(self.ctx.address(), keys, &fence).await
    }

    /// Removes every key of the entity.
    pub async fn clear(&self) -> Result<(), StorageError> {
        let fence = self.fence()?;
        self.kv.drop_all(self.ctx.address(), &fence).await
    }
}
