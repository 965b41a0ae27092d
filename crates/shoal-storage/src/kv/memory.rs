//! [`MemoryEntityKv`]: entity KV in process memory, fenced by a [`MemoryRunnerStorage`].

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use shoal_protocol::{EntityAddress, EntityId, EntityType};

use super::limits::{check_fence, check_keys, check_put, check_query, check_range};
use super::query::{KvEntry, KvQuery};
use super::storage::EntityKv;
use crate::error::StorageError;
use crate::memory::MemoryRunnerStorage;
use crate::messages::Fence;

type Map = BTreeMap<Bytes, Bytes>;

/// Entity KV held in process memory, with the same limits, ordering and fencing as the SQL
/// backends. Writes are fenced by the leases of the [`MemoryRunnerStorage`] it is built with:
/// the epoch check and the write happen while no lease can change hands.
#[derive(Debug)]
pub struct MemoryEntityKv {
    runners: Arc<MemoryRunnerStorage>,
    entities: Mutex<HashMap<(EntityType, EntityId), Map>>,
}

impl MemoryEntityKv {
    /// Empty storage fenced by the leases of `runners`.
    pub fn new(runners: Arc<MemoryRunnerStorage>) -> Self {
        Self {
            runners,
            entities: Mutex::new(HashMap::new()),
        }
    }

    /// The runner storage whose leases fence writes.
    pub fn runner_storage(&self) -> &Arc<MemoryRunnerStorage> {
        &self.runners
    }

    /// Runs `write` on the entity's map if `fence` is current, atomically with the check.
    fn write(
        &self,
        entity: &EntityAddress,
        fence: &Fence,
        write: impl FnOnce(&mut Map),
    ) -> Result<(), StorageError> {
        self.runners.with_epochs(|epoch_of| {
            if let Some(current) = epoch_of(&fence.shard)
                && current > fence.epoch
            {
                return Err(StorageError::Fenced {
                    shard: fence.shard.clone(),
                    epoch: fence.epoch.0,
                    current: current.0,
                });
            }
            let mut entities = self.entities.lock();
            let key = (entity.entity_type.clone(), entity.entity_id.clone());
            let map = entities.entry(key.clone()).or_default();
            write(map);
            if map.is_empty() {
                entities.remove(&key);
            }
            Ok(())
        })
    }
}

#[async_trait]
impl EntityKv for MemoryEntityKv {
    async fn get(
        &self,
        entity: &EntityAddress,
        keys: &[Bytes],
    ) -> Result<Vec<Option<Bytes>>, StorageError> {
        check_keys("kv_get", keys)?;
        let entities = self.entities.lock();
        let map = entities.get(&(entity.entity_type.clone(), entity.entity_id.clone()));
        Ok(keys
            .iter()
            .map(|key| map.and_then(|m| m.get(key).cloned()))
            .collect())
    }

    async fn list(
        &self,
        entity: &EntityAddress,
        query: &KvQuery,
    ) -> Result<Vec<KvEntry>, StorageError> {
        check_query("kv_list", query)?;
        let limit = query.effective_limit();
        let Some(bounds) = super::query::bounds(query).filter(|_| limit > 0) else {
            return Ok(Vec::new());
        };
        let entities = self.entities.lock();
        let Some(map) = entities.get(&(entity.entity_type.clone(), entity.entity_id.clone()))
        else {
            return Ok(Vec::new());
        };
        let end = match &bounds.end {
            Some(end) => Bound::Excluded(end.clone()),
            None => Bound::Unbounded,
        };
        let range = map.range((Bound::Included(bounds.start.clone()), end));
        let entry = |(k, v): (&Bytes, &Bytes)| KvEntry {
            key: k.clone(),
            value: v.clone(),
        };
        Ok(if query.reverse {
            range.rev().take(limit).map(entry).collect()
        } else {
            range.take(limit).map(entry).collect()
        })
    }

    async fn put(
        &self,
        entity: &EntityAddress,
        entries: &[KvEntry],
        fence: &Fence,
    ) -> Result<(), StorageError> {
        check_fence("kv_put", entity, fence)?;
        check_put("kv_put", entries)?;
        self.write(entity, fence, |map| {
            for entry in entries {
                map.insert(entry.key.clone(), entry.value.clone());
            }
        })
    }

    async fn delete(
        &self,
        entity: &EntityAddress,
        keys: &[Bytes],
        fence: &Fence,
    ) -> Result<(), StorageError> {
        check_fence("kv_delete", entity, fence)?;
        check_keys("kv_delete", keys)?;
        self.write(entity, fence, |map| {
            for key in keys {
                map.remove(key);
            }
        })
    }

    async fn delete_range(
        &self,
        entity: &EntityAddress,
        start: &[u8],
        end: &[u8],
        fence: &Fence,
    ) -> Result<(), StorageError> {
        check_fence("kv_delete_range", entity, fence)?;
        check_range("kv_delete_range", start, end)?;
        self.write(entity, fence, |map| {
            if start < end {
                let doomed: Vec<Bytes> = map
                    .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in doomed {
                    map.remove(&key);
                }
            }
        })
    }

    async fn drop_all(&self, entity: &EntityAddress, fence: &Fence) -> Result<(), StorageError> {
        check_fence("kv_drop", entity, fence)?;
        self.write(entity, fence, Map::clear)
    }
}
