//! Which shards this runner holds, readable without locks on every message, and until when its
//! leases are confirmed.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use shoal_protocol::{ShardGroup, ShardId};

use crate::clock::Clock;

const NOT_HELD: u8 = 0;
const ACTIVE: u8 = 1;
const RELEASING: u8 = 2;

/// The local state of one shard: whether it is held, and the epoch of its lease.
#[derive(Debug, Default)]
struct Slot {
    state: AtomicU8,
    epoch: AtomicU64,
}

/// The local state of every shard of every available group.
#[derive(Debug)]
pub(crate) struct ShardStates {
    groups: HashMap<ShardGroup, Vec<Slot>>,
    /// Until when (milliseconds of [`Clock`]) this runner's leases are confirmed: the local time
    /// at which the last successful refresh (or acquisition) was sent, plus the lease TTL, minus
    /// the safety margin. Past it, entities are not delivered to until a refresh succeeds, even
    /// if the watchdog has not run yet (after a freeze: SIGSTOP, a VM pause).
    confirmed_until: AtomicU64,
    clock: Clock,
}

impl ShardStates {
    pub(crate) fn new(groups: &[ShardGroup], shards_per_group: NonZeroU32, clock: Clock) -> Self {
        let groups = groups
            .iter()
            .map(|g| {
                let states = (0..shards_per_group.get())
                    .map(|_| Slot::default())
                    .collect();
                (g.clone(), states)
            })
            .collect();
        Self {
            groups,
            confirmed_until: AtomicU64::new(0),
            clock,
        }
    }

    fn slot(&self, shard: &ShardId) -> Option<&Slot> {
        self.groups.get(shard.group())?.get(shard.id() as usize - 1)
    }

    /// Whether entities of `shard` may run here now.
    pub(crate) fn is_active(&self, shard: &ShardId) -> bool {
        self.slot(shard)
            .is_some_and(|s| s.state.load(Ordering::Acquire) == ACTIVE)
    }

    /// Whether entities of `shard` may be delivered to now: the shard is active and this
    /// runner's leases are confirmed by its own monotonic clock.
    pub(crate) fn is_serving(&self, shard: &ShardId) -> bool {
        self.is_active(shard) && self.clock.now_ms() < self.confirmed_until.load(Ordering::Acquire)
    }

    /// The leases are confirmed until `instant` (a refresh sent then succeeded, minus margins).
    pub(crate) fn confirm_until(&self, instant: tokio::time::Instant) {
        self.confirmed_until
            .store(self.clock.ms_at(instant), Ordering::Release);
    }

    /// The leases are no longer confirmed (the watchdog fired).
    pub(crate) fn unconfirm(&self) {
        self.confirmed_until.store(0, Ordering::Release);
    }

    /// The epoch of the lease under which `shard` is held here (active or releasing).
    pub(crate) fn epoch(&self, shard: &ShardId) -> Option<shoal_storage::Epoch> {
        let slot = self.slot(shard)?;
        (slot.state.load(Ordering::Acquire) != NOT_HELD)
            .then(|| shoal_storage::Epoch(slot.epoch.load(Ordering::Acquire)))
    }

    pub(crate) fn set_active(&self, shard: &ShardId, epoch: shoal_storage::Epoch) {
        if let Some(s) = self.slot(shard) {
            s.epoch.store(epoch.0, Ordering::Release);
            s.state.store(ACTIVE, Ordering::Release);
        }
    }

    pub(crate) fn set_releasing(&self, shard: &ShardId) {
        if let Some(s) = self.slot(shard) {
            s.state.store(RELEASING, Ordering::Release);
        }
    }

    pub(crate) fn clear(&self, shard: &ShardId) {
        if let Some(s) = self.slot(shard) {
            s.state.store(NOT_HELD, Ordering::Release);
        }
    }

    /// The shards currently active here.
    pub(crate) fn active(&self) -> Vec<ShardId> {
        let mut out = Vec::new();
        for (group, states) in &self.groups {
            for (i, s) in states.iter().enumerate() {
                if s.state.load(Ordering::Acquire) == ACTIVE
                    && let Some(shard) = ShardId::try_new(group.clone(), i as u32 + 1)
                {
                    out.push(shard);
                }
            }
        }
        out.sort();
        out
    }
}
