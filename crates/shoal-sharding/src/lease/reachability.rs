//! Which runners are cut off from the others.
//!
//! A runner that can still reach storage keeps renewing its leases, so leases alone never move
//! the shards of a runner the *other runners* cannot reach (a network partition, a firewall
//! rule, a half-dead network interface). Every runner therefore probes the others (through the
//! runner transport, see [`RunnerHealth`](crate::RunnerHealth)) and stores which ones it cannot
//! reach; every runner reads those reports with the cluster and judges, by quorum, which runners
//! are cut off. A cut-off runner counts as unhealthy: it gets no shards, so it hands its own off
//! (it reads the same reports), and the others take them.
//!
//! The quorum keeps a minority from evicting a majority: a runner is cut off only when a strict
//! majority of the *other* live runners report it, and never when that would leave no runner
//! healthy. With two runners, a partition cannot be decided either way and nothing moves.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;

use shoal_protocol::{RunnerAddress, RunnerId};
use shoal_storage::{RunnerStatus, RunnerStorage};
use tokio::time::{MissedTickBehavior, interval, timeout};
use tracing::Instrument;

use super::view::ClusterView;
use crate::config::ShardingConfig;
use crate::health::RunnerHealth;
use crate::lifecycle::Lifecycle;

/// Failed probes in a row before a runner is reported unreachable (one lost probe is noise).
pub(crate) const FAILURES_TO_REPORT: u32 = 2;

/// Marks as unhealthy every runner of `runners` that a strict majority of the other listed
/// runners report unreachable, unless that would leave no runner healthy; returns the runners it
/// marked. Reports about runners not listed, and a runner's report about itself, do not count.
pub(crate) fn judge(runners: &mut [RunnerStatus]) -> Vec<RunnerAddress> {
    let others = runners.len().saturating_sub(1);
    let listed: BTreeSet<&RunnerAddress> = runners.iter().map(|r| &r.runner.address).collect();
    let mut reports: HashMap<&RunnerAddress, usize> = HashMap::new();
    for reporter in runners.iter() {
        let targets: BTreeSet<&RunnerAddress> = reporter
            .unreachable
            .iter()
            .filter(|t| **t != reporter.runner.address && listed.contains(t))
            .collect();
        for target in targets {
            *reports.entry(target).or_default() += 1;
        }
    }
    let cut: Vec<RunnerAddress> = runners
        .iter()
        .filter(|r| reports.get(&r.runner.address).copied().unwrap_or(0) * 2 > others)
        .map(|r| r.runner.address.clone())
        .collect();
    let healthy_left = runners
        .iter()
        .filter(|r| r.healthy && !cut.contains(&r.runner.address))
        .count();
    if cut.is_empty() || healthy_left == 0 {
        return Vec::new();
    }
    for runner in runners.iter_mut() {
        if cut.contains(&runner.runner.address) {
            runner.healthy = false;
        }
    }
    cut
}

/// Starts probing the other runners (runners only; client-only processes are not judged and do
/// not judge).
pub(crate) fn start(parts: ProberParts) {
    let span = tracing::info_span!("reachability", runner = %parts.me.address);
    let lifecycle = parts.lifecycle.clone();
    let prober = Prober {
        parts,
        failures: HashMap::new(),
        reported: BTreeSet::new(),
    };
    lifecycle.spawn(tokio::spawn(prober.run().instrument(span)));
}

/// What the prober works with.
pub(crate) struct ProberParts {
    /// This runner.
    pub(crate) me: RunnerId,
    pub(crate) config: Arc<ShardingConfig>,
    /// How a runner is probed.
    pub(crate) health: Arc<dyn RunnerHealth>,
    /// Where it reports the runners it cannot reach.
    pub(crate) storage: Arc<dyn RunnerStorage>,
    /// The cluster as the lease keeper last read it.
    pub(crate) view: Arc<Mutex<ClusterView>>,
    pub(crate) lifecycle: Arc<Lifecycle>,
}

struct Prober {
    parts: ProberParts,
    /// Failed probes in a row, per runner.
    failures: HashMap<RunnerAddress, u32>,
    /// What this runner last stored as unreachable.
    reported: BTreeSet<RunnerAddress>,
}

impl Prober {
    async fn run(mut self) {
        let lifecycle = self.parts.lifecycle.clone();
        let every = self.parts.config.health_check_interval();
        let mut tick = interval(every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = lifecycle.cancel().cancelled() => return,
                _ = tick.tick() => {}
            }
            let (others, stored) = self.view();
            self.probe(&others).await;
            let unreachable: BTreeSet<RunnerAddress> = self
                .failures
                .iter()
                .filter(|(_, n)| **n >= FAILURES_TO_REPORT)
                .map(|(a, _)| a.clone())
                .collect();
            // Write when the report changes, and again whenever storage does not show it (a
            // write that failed, a registration written afresh).
            if unreachable != self.reported || stored.as_ref() != Some(&unreachable) {
                self.report(unreachable).await;
            }
        }
    }

    /// The other live runners, and what storage shows this runner reported.
    fn view(&self) -> (Vec<RunnerAddress>, Option<BTreeSet<RunnerAddress>>) {
        let view = self.parts.view.lock();
        let mut stored = None;
        let mut others = Vec::new();
        for status in &view.runners {
            if status.runner.address == self.parts.me.address {
                if status.incarnation == self.parts.me.incarnation {
                    stored = Some(status.unreachable.iter().cloned().collect());
                }
            } else {
                others.push(status.runner.address.clone());
            }
        }
        (others, stored)
    }

    /// Probes every runner of `others` at once, each within one probe interval.
    async fn probe(&mut self, others: &[RunnerAddress]) {
        let health = &self.parts.health;
        let within = self.parts.config.health_check_interval();
        let probes = others.iter().map(|address| async move {
            let alive = matches!(timeout(within, health.is_alive(address)).await, Ok(true));
            (address, alive)
        });
        let results = futures::future::join_all(probes).await;
        self.failures.retain(|a, _| others.contains(a));
        for (address, alive) in results {
            if alive {
                if self
                    .failures
                    .remove(address)
                    .is_some_and(|n| n >= FAILURES_TO_REPORT)
                {
                    tracing::info!(runner = %address, "runner reachable again");
                }
            } else {
                let n = self.failures.entry(address.clone()).or_default();
                *n += 1;
                if *n == FAILURES_TO_REPORT {
                    tracing::warn!(runner = %address, probes = *n, "runner does not answer probes; reporting it unreachable");
                }
            }
        }
    }

    async fn report(&mut self, unreachable: BTreeSet<RunnerAddress>) {
        let list: Vec<RunnerAddress> = unreachable.iter().cloned().collect();
        let within = self.parts.config.storage_timeout();
        let me = &self.parts.me;
        match timeout(within, self.parts.storage.report_unreachable(me, &list)).await {
            Ok(Ok(())) => {
                metrics::gauge!("shoal_runners_unreachable_reported").set(list.len() as f64);
                self.reported = unreachable;
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "storing unreachable runners failed; retrying")
            }
            Err(_) => tracing::debug!("storing unreachable runners timed out; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use shoal_protocol::{Incarnation, Runner, ShardGroup};

    use super::*;

    fn address(i: u16) -> RunnerAddress {
        RunnerAddress::tcp("10.0.0.1", 7000 + i).unwrap()
    }

    fn status(i: u16, unreachable: &[u16]) -> RunnerStatus {
        RunnerStatus {
            runner: Runner::new(address(i), [ShardGroup::default_group()], NonZeroU32::MIN),
            incarnation: Incarnation::from_raw(u64::from(i)),
            healthy: true,
            unreachable: unreachable.iter().map(|&t| address(t)).collect(),
        }
    }

    fn cut(runners: &mut [RunnerStatus]) -> Vec<u16> {
        let mut cut: Vec<u16> = judge(runners)
            .iter()
            .map(|a| {
                a.as_str()
                    .rsplit(':')
                    .next()
                    .unwrap()
                    .parse::<u16>()
                    .unwrap()
                    - 7000
            })
            .collect();
        cut.sort_unstable();
        for r in runners.iter() {
            let port = r.runner.address.as_str().rsplit(':').next().unwrap();
            let i = port.parse::<u16>().unwrap() - 7000;
            assert_eq!(r.healthy, !cut.contains(&i), "runner {i}");
        }
        cut
    }

    #[test]
    fn a_runner_the_majority_cannot_reach_is_cut_off() {
        // Runner 1 is partitioned: it cannot reach 2 and 3, and they cannot reach it.
        let mut runners = vec![status(1, &[2, 3]), status(2, &[1]), status(3, &[1])];
        assert_eq!(cut(&mut runners), [1]);
    }

    #[test]
    fn one_report_is_not_a_quorum() {
        let mut runners = vec![status(1, &[]), status(2, &[1]), status(3, &[])];
        assert!(cut(&mut runners).is_empty());
        // Nor are the reports of a cut-off minority about the majority.
        let mut runners = vec![
            status(1, &[3, 4, 5]),
            status(2, &[3, 4, 5]),
            status(3, &[1, 2]),
            status(4, &[1, 2]),
            status(5, &[1, 2]),
        ];
        assert_eq!(cut(&mut runners), [1, 2]);
    }

    #[test]
    fn nobody_is_cut_off_when_nobody_would_be_left() {
        // Two runners that cannot reach each other: undecidable.
        let mut runners = vec![status(1, &[2]), status(2, &[1])];
        assert!(cut(&mut runners).is_empty());
        // An even split of four: each side is reported by two of three.
        let mut runners = vec![
            status(1, &[3, 4]),
            status(2, &[3, 4]),
            status(3, &[1, 2]),
            status(4, &[1, 2]),
        ];
        assert!(cut(&mut runners).is_empty());
    }

    #[test]
    fn reports_about_unlisted_runners_and_self_do_not_count() {
        let mut runners = vec![status(1, &[1, 9]), status(2, &[9]), status(3, &[1])];
        assert!(cut(&mut runners).is_empty());
        // A repeated address counts once.
        let mut runners = vec![status(1, &[]), status(2, &[1, 1]), status(3, &[])];
        assert!(cut(&mut runners).is_empty());
    }

    #[test]
    fn a_single_runner_is_never_cut_off() {
        let mut runners = vec![status(1, &[1])];
        assert!(cut(&mut runners).is_empty());
    }
}
