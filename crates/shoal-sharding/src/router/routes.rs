//! Where to send a message for each shard.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use shoal_protocol::{RunnerAddress, ShardGroup, ShardId};
use shoal_storage::ShardLease;
use tokio::sync::watch;

use crate::assignment::ShardAssignment;

/// Per shard, the runner to send to: the holder of its live lease, else the runner it is
/// assigned to (which is about to acquire it).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct RouteTable {
    groups: HashMap<ShardGroup, Vec<Option<RunnerAddress>>>,
}

impl RouteTable {
    pub(crate) fn build(assignment: &ShardAssignment, leases: &[ShardLease]) -> Self {
        let size = assignment.shards_per_group().get() as usize;
        let mut groups: HashMap<ShardGroup, Vec<Option<RunnerAddress>>> = HashMap::new();
        for (shard, target) in assignment.iter() {
            let slots = groups
                .entry(shard.group().clone())
                .or_insert_with(|| vec![None; size]);
            slots[shard.id() as usize - 1] = target.cloned();
        }
        for lease in leases {
            if let Some(slot) = groups
                .get_mut(lease.shard.group())
                .and_then(|slots| slots.get_mut(lease.shard.id() as usize - 1))
            {
                *slot = Some(lease.owner.clone());
            }
        }
        Self { groups }
    }

    pub(crate) fn owner(&self, shard: &ShardId) -> Option<&RunnerAddress> {
        self.groups
            .get(shard.group())?
            .get(shard.id() as usize - 1)?
            .as_ref()
    }
}

/// The current route table, swapped whole when recomputed.
#[derive(Debug)]
pub(crate) struct Routes {
    table: RwLock<Arc<RouteTable>>,
    /// Bumped whenever the table changes (not when it is recomputed the same).
    changed: watch::Sender<u64>,
}

impl Default for Routes {
    fn default() -> Self {
        Self {
            table: RwLock::default(),
            changed: watch::Sender::new(0),
        }
    }
}

impl Routes {
    pub(crate) fn owner(&self, shard: &ShardId) -> Option<RunnerAddress> {
        self.table.read().owner(shard).cloned()
    }

    pub(crate) fn replace(&self, table: RouteTable) {
        {
            let mut current = self.table.write();
            if **current == table {
                return;
            }
            *current = Arc::new(table);
        }
        self.changed.send_modify(|version| *version += 1);
    }

    /// Resolves with the new route once `shard` is routed to a runner other than `from` (another
    /// runner, or this one), for example when `from` stopped renewing its lease and the shard was
    /// taken over: a request in flight to `from` will then most likely never be answered.
    pub(crate) async fn moved_from(&self, shard: &ShardId, from: &RunnerAddress) -> RunnerAddress {
        let mut changes = self.changed.subscribe();
        loop {
            if let Some(owner) = self.owner(shard)
                && owner != *from
            {
                return owner;
            }
            if changes.changed().await.is_err() {
                // The table never changes again.
                std::future::pending::<()>().await;
            }
        }
    }
}
