//! The cluster as storage shows it, read with `shoal status --json`, and the lease sampler that
//! checks epochs during the run.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// One live lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lease {
    pub(crate) owner: String,
    pub(crate) epoch: u64,
}

/// One reading of storage.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    /// Registered runners.
    pub(crate) runners: HashSet<String>,
    /// Shard -> live lease.
    pub(crate) leases: BTreeMap<String, Lease>,
    /// Shards in the cluster.
    pub(crate) total: u64,
}

impl Snapshot {
    /// Shards whose lease holder is in `live`.
    pub(crate) fn held_by(&self, live: &HashSet<String>) -> usize {
        self.leases
            .values()
            .filter(|l| live.contains(&l.owner))
            .count()
    }

    /// Leases held by `owner`.
    pub(crate) fn held_by_one(&self, owner: &str) -> usize {
        self.leases.values().filter(|l| l.owner == owner).count()
    }
}

/// Reads storage through the `shoal` binary.
#[derive(Debug, Clone)]
pub(crate) struct StatusReader {
    pub(crate) binary: PathBuf,
    pub(crate) storage_url: String,
}

impl StatusReader {
    /// What `shoal status --json` printed.
    pub(crate) fn read_json(&self) -> Result<serde_json::Value> {
        let out = Command::new(&self.binary)
            .args(["status", "--json", "--storage", &self.storage_url])
            .env_remove("SHOAL_CONFIG")
            .output()
            .context("could not run shoal status")?;
        if !out.status.success() {
            bail!(
                "shoal status failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    pub(crate) fn read(&self) -> Result<Snapshot> {
        let json = self.read_json()?;
        let runners = json["runners"]
            .as_array()
            .context("no runners")?
            .iter()
            .filter_map(|r| r["address"].as_str().map(str::to_owned))
            .collect();
        let mut leases = BTreeMap::new();
        for lease in json["leases"].as_array().context("no leases")? {
            let shard = lease["shard"].as_str().context("lease without shard")?;
            let previous = leases.insert(
                shard.to_owned(),
                Lease {
                    owner: lease["owner"].as_str().unwrap_or_default().to_owned(),
                    epoch: lease["epoch"].as_u64().unwrap_or(0),
                },
            );
            if previous.is_some() {
                bail!("storage lists two live leases for shard {shard}");
            }
        }
        Ok(Snapshot {
            runners,
            leases,
            total: json["shards"]["total"].as_u64().unwrap_or(0),
        })
    }
}

/// What the sampler saw.
#[derive(Debug, Default)]
pub(crate) struct SamplerReport {
    pub(crate) samples: u64,
    pub(crate) read_errors: u64,
    /// Invariant violations (epochs going back, owner changes without a new epoch).
    pub(crate) violations: Vec<String>,
}

/// Samples the leases every `every` until stopped, checking that no shard's epoch goes back and
/// that a shard never changes owner without a new epoch.
pub(crate) struct LeaseSampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<SamplerReport>,
}

impl LeaseSampler {
    pub(crate) fn start(reader: StatusReader, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut report = SamplerReport::default();
            let mut last: BTreeMap<String, Lease> = BTreeMap::new();
            while !flag.load(Ordering::Acquire) {
                match reader.read() {
                    Ok(snapshot) => {
                        report.samples += 1;
                        check_epochs(&mut last, &snapshot, &mut report.violations);
                    }
                    Err(_) => report.read_errors += 1,
                }
                std::thread::sleep(every);
            }
            report
        });
        Self { stop, handle }
    }

    pub(crate) fn finish(self) -> SamplerReport {
        self.stop.store(true, Ordering::Release);
        self.handle.join().unwrap_or_default()
    }
}

/// Compares a new snapshot with the last lease seen for each shard.
pub(crate) fn check_epochs(
    last: &mut BTreeMap<String, Lease>,
    snapshot: &Snapshot,
    violations: &mut Vec<String>,
) {
    for (shard, lease) in &snapshot.leases {
        if let Some(before) = last.get(shard) {
            if lease.epoch < before.epoch {
                violations.push(format!(
                    "shard {shard}: epoch went back from {} to {}",
                    before.epoch, lease.epoch
                ));
            } else if lease.epoch == before.epoch && lease.owner != before.owner {
                violations.push(format!(
                    "shard {shard}: owner changed from {} to {} under the same epoch {}",
                    before.owner, lease.owner, lease.epoch
                ));
            }
        }
        last.insert(shard.clone(), lease.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(leases: &[(&str, &str, u64)]) -> Snapshot {
        Snapshot {
            runners: HashSet::new(),
            total: 2,
            leases: leases
                .iter()
                .map(|(s, o, e)| {
                    (
                        (*s).to_owned(),
                        Lease {
                            owner: (*o).to_owned(),
                            epoch: *e,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn flags_epochs_that_go_back_or_owners_that_change_without_one() {
        let mut last = BTreeMap::new();
        let mut violations = Vec::new();
        check_epochs(
            &mut last,
            &snapshot(&[("default:1", "a", 1), ("default:2", "a", 3)]),
            &mut violations,
        );
        check_epochs(
            &mut last,
            &snapshot(&[("default:1", "b", 2), ("default:2", "a", 3)]),
            &mut violations,
        );
        assert!(violations.is_empty(), "{violations:?}");
        check_epochs(
            &mut last,
            &snapshot(&[("default:1", "c", 2), ("default:2", "a", 2)]),
            &mut violations,
        );
        assert_eq!(violations.len(), 2, "{violations:?}");
    }
}
