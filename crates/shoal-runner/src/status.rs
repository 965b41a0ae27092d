//! The cluster as storage shows it: runners, leases and the shard distribution. This is what
//! `shoal status` prints; it reads storage only and needs no running runner.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use shoal_protocol::ShardGroup;
use shoal_storage::{RunnerStorage, StorageError};

/// One registered runner.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RunnerRow {
    /// Its address (`host:port` or `unix:/path`).
    pub address: String,
    /// The incarnation of the process registered at it (hex).
    pub incarnation: String,
    /// The machine id that process leased (`None`: its lease lapsed).
    pub machine_id: Option<i64>,
    /// Whether health checks consider it alive.
    pub healthy: bool,
    /// Its weight.
    pub weight: u32,
    /// The groups it serves.
    pub groups: Vec<String>,
    /// Live leases it holds.
    pub shards: usize,
}

/// One live lease.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LeaseRow {
    /// The shard (`group:id`).
    pub shard: String,
    /// The holder.
    pub owner: String,
    /// The fencing epoch.
    pub epoch: u64,
    /// Whether the holder is a registered runner (a crashed runner's leases outlive its
    /// heartbeat briefly).
    pub owner_registered: bool,
}

/// One live process of the cluster (runner or client-only) with its machine id.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ProcessRow {
    /// The machine id it stamps into the ids it makes.
    pub machine_id: i64,
    /// Its incarnation (hex).
    pub incarnation: String,
    /// Its runner address; `None` for a client-only process.
    pub runner: Option<String>,
}

/// The shards of one group.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GroupRow {
    /// The group.
    pub group: String,
    /// Shards in the group.
    pub shards: u32,
    /// Shards with a live lease.
    pub leased: usize,
    /// Shards nobody holds.
    pub unowned: usize,
}

/// Totals over all groups.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ShardTotals {
    /// Shards in the cluster.
    pub total: u64,
    /// Shards with a live lease.
    pub leased: usize,
    /// Shards nobody holds.
    pub unowned: usize,
    /// Leases held by runners that are not registered (crashed, or left without releasing).
    pub orphaned: usize,
}

/// What storage says about the cluster.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClusterStatus {
    /// Registered runners, by address.
    pub runners: Vec<RunnerRow>,
    /// Per group.
    pub groups: Vec<GroupRow>,
    /// Totals.
    pub shards: ShardTotals,
    /// Every live lease, by shard.
    pub leases: Vec<LeaseRow>,
    /// Every live process (runners and client-only processes) by machine id.
    pub processes: Vec<ProcessRow>,
}

impl ClusterStatus {
    /// Reads runners and leases (each read bounded by `deadline`) and summarizes them for a
    /// cluster of `groups` with `shards_per_group` shards each.
    pub async fn read(
        storage: &dyn RunnerStorage,
        shards_per_group: u32,
        groups: &[ShardGroup],
        deadline: Duration,
    ) -> Result<Self, StorageError> {
        let bounded = |operation: &'static str| StorageError::Timeout {
            operation,
            timeout: deadline,
        };
        let runners = tokio::time::timeout(deadline, storage.runners())
            .await
            .map_err(|_| bounded("runners"))??;
        let leases = tokio::time::timeout(deadline, storage.leases())
            .await
            .map_err(|_| bounded("leases"))??;
        let machines = tokio::time::timeout(deadline, storage.machine_ids())
            .await
            .map_err(|_| bounded("machine_ids"))??;
        let machine_of: BTreeMap<u64, i64> = machines
            .iter()
            .map(|m| (m.incarnation.raw(), m.machine_id.0))
            .collect();
        let runner_of: BTreeMap<u64, String> = runners
            .iter()
            .map(|r| (r.incarnation.raw(), r.runner.address.to_string()))
            .collect();
        let processes: Vec<ProcessRow> = machines
            .iter()
            .map(|m| ProcessRow {
                machine_id: m.machine_id.0,
                incarnation: m.incarnation.to_string(),
                runner: runner_of.get(&m.incarnation.raw()).cloned(),
            })
            .collect();

        let registered: HashSet<String> = runners
            .iter()
            .map(|r| r.runner.address.to_string())
            .collect();
        let mut held: BTreeMap<String, usize> = BTreeMap::new();
        let mut leased_by_group: BTreeMap<String, usize> = BTreeMap::new();
        let mut lease_rows: Vec<LeaseRow> = leases
            .iter()
            .map(|lease| {
                let owner = lease.owner.to_string();
                *held.entry(owner.clone()).or_default() += 1;
                *leased_by_group
                    .entry(lease.shard.group().to_string())
                    .or_default() += 1;
                LeaseRow {
                    shard: lease.shard.to_string(),
                    owner_registered: registered.contains(&owner),
                    owner,
                    epoch: lease.epoch.0,
                }
            })
            .collect();
        lease_rows.sort_by(|a, b| shard_order(&a.shard).cmp(&shard_order(&b.shard)));

        let mut runner_rows: Vec<RunnerRow> = runners
            .iter()
            .map(|r| {
                let address = r.runner.address.to_string();
                RunnerRow {
                    incarnation: r.incarnation.to_string(),
                    machine_id: machine_of.get(&r.incarnation.raw()).copied(),
                    shards: held.get(&address).copied().unwrap_or(0),
                    healthy: r.healthy,
                    weight: r.runner.weight.get(),
                    groups: r.runner.groups.iter().map(ToString::to_string).collect(),
                    address,
                }
            })
            .collect();
        runner_rows.sort_by(|a, b| a.address.cmp(&b.address));

        let mut group_names: Vec<String> = groups.iter().map(ToString::to_string).collect();
        for group in leased_by_group.keys() {
            if !group_names.contains(group) {
                group_names.push(group.clone());
            }
        }
        let group_rows: Vec<GroupRow> = group_names
            .into_iter()
            .map(|group| {
                let leased = leased_by_group.get(&group).copied().unwrap_or(0);
                GroupRow {
                    shards: shards_per_group,
                    unowned: (shards_per_group as usize).saturating_sub(leased),
                    leased,
                    group,
                }
            })
            .collect();
        let totals = ShardTotals {
            total: group_rows.iter().map(|g| u64::from(g.shards)).sum(),
            leased: lease_rows.len(),
            unowned: group_rows.iter().map(|g| g.unowned).sum(),
            orphaned: lease_rows.iter().filter(|l| !l.owner_registered).count(),
        };
        Ok(Self {
            runners: runner_rows,
            groups: group_rows,
            shards: totals,
            leases: lease_rows,
            processes,
        })
    }

    /// A human-readable table.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "RUNNERS ({})", self.runners.len());
        if self.runners.is_empty() {
            let _ = writeln!(out, "  (none registered)");
        } else {
            let width = self
                .runners
                .iter()
                .map(|r| r.address.len())
                .max()
                .unwrap_or(0)
                .max("ADDRESS".len());
            let _ = writeln!(
                out,
                "  {:<width$}  {:<7}  {:>6}  {:>6}  {:>7}  {:<16}  GROUPS",
                "ADDRESS", "HEALTHY", "WEIGHT", "SHARDS", "MACHINE", "INCARNATION"
            );
            for r in &self.runners {
                let _ = writeln!(
                    out,
                    "  {:<width$}  {:<7}  {:>6}  {:>6}  {:>7}  {:<16}  {}",
                    r.address,
                    if r.healthy { "yes" } else { "no" },
                    r.weight,
                    r.shards,
                    r.machine_id
                        .map_or_else(|| "-".to_owned(), |m| m.to_string()),
                    r.incarnation,
                    r.groups.join(",")
                );
            }
        }
        let _ = writeln!(
            out,
            "\nSHARDS: {} total, {} leased, {} unowned{}",
            self.shards.total,
            self.shards.leased,
            self.shards.unowned,
            if self.shards.orphaned > 0 {
                format!(
                    ", {} held by runners no longer registered (they expire with their lease)",
                    self.shards.orphaned
                )
            } else {
                String::new()
            }
        );
        for g in &self.groups {
            let _ = writeln!(
                out,
                "  {}: {} shards, {} leased, {} unowned",
                g.group, g.shards, g.leased, g.unowned
            );
        }
        let clients = self.processes.iter().filter(|p| p.runner.is_none()).count();
        let _ = writeln!(
            out,
            "\nPROCESSES: {} with a machine id ({} runners, {} client-only)",
            self.processes.len(),
            self.processes.len() - clients,
            clients
        );
        out
    }
}

/// Sorts `group:id` by group, then by numeric id.
fn shard_order(shard: &str) -> (&str, u64) {
    match shard.rsplit_once(':') {
        Some((group, id)) => (group, id.parse().unwrap_or(u64::MAX)),
        None => (shard, 0),
    }
}
