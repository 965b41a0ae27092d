//! Shard lease values.

use std::fmt;
use std::time::Duration;

use shoal_protocol::{Incarnation, MachineId, RunnerAddress, ShardId};

/// A shard lease's fencing token. Every time a lease is granted to a runner that did not hold it
/// (a new owner, or the same runner after its lease lapsed or was released), the shard's epoch
/// grows. Writes made on behalf of a shard carry the epoch under which they were made, and storage
/// refuses them once a newer epoch exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A shard this runner holds a live lease on, with the lease's epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HeldShard {
    /// The shard.
    pub shard: ShardId,
    /// The epoch under which it is held.
    pub epoch: Epoch,
}

/// A live lease as anyone can see it: which runner holds a shard, under which epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShardLease {
    /// The shard.
    pub shard: ShardId,
    /// The runner holding it.
    pub owner: RunnerAddress,
    /// The incarnation of the process that took it (a lease is its holder's only for that
    /// incarnation).
    pub incarnation: Incarnation,
    /// The epoch under which it is held.
    pub epoch: Epoch,
    /// How long the lease had left when storage read it, by storage's clock (never zero: an
    /// expired lease is not listed). Keepers wake when it runs out, so a shard whose owner
    /// stopped refreshing moves as soon as its lease lapses rather than at the next poll.
    pub expires_in: Duration,
}

/// A machine id leased to one process, with the range of milliseconds its ids may carry.
///
/// No other live process holds the machine id while the lease lasts, and the process makes ids
/// with timestamps after `floor` (the end of the previous holder's reservation) and up to
/// `reserved_until`; a later holder starts after the last reservation this one stored. So two
/// processes never make the same id, even if one is frozen past its lease or their clocks
/// disagree. Times are milliseconds since the Unix epoch on the holder's wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineLease {
    /// The machine id.
    pub machine_id: MachineId,
    /// Ids must carry timestamps after this.
    pub floor: u64,
    /// Ids may carry timestamps up to this.
    pub reserved_until: u64,
}

/// A live machine-id lease as anyone can see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineIdLease {
    /// The machine id.
    pub machine_id: MachineId,
    /// The process holding it.
    pub incarnation: Incarnation,
}
