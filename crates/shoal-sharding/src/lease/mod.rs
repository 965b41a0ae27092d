//! Leases: which shards this runner serves, and the task that keeps it so.
//!
//! - [`keeper`](self::keeper): reads the cluster from storage, computes the assignment and the
//!   routes, acquires, refreshes and releases leases, and stops entities before a lease could
//!   expire under them.
//! - [`shards`](self::shards): the shards this runner serves, with their epochs (written by the
//!   keeper, read on every delivery).
//! - [`reachability`](self::reachability): which runners the others cannot reach.
//! - [`view`](self::view): the cluster as last read.

pub(crate) mod keeper;
pub(crate) mod reachability;
pub(crate) mod shards;
pub(crate) mod view;
