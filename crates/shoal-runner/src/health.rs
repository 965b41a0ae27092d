//! Liveness and readiness, as `/healthz` and `/readyz` report them.
//!
//! - **Live** (`/healthz`): the process answers HTTP. Nothing else is checked, so an orchestrator
//!   restarts the process only when it is truly stuck.
//! - **Ready** (`/readyz`): the process can do its job now. A runner is ready when storage
//!   answers (both reads within `storage_timeout`), it is registered there, and it has held its
//!   share of shards at least once since it started (later rebalancing does not make it
//!   unready: its gateway serves every entity either way). A client-only process is ready when
//!   storage answers and at least one runner is registered. Nobody is ready once shutdown begins.
//!
//! Readiness checks read storage, so their result is cached for a short time: a flood of probes
//! costs storage at most two reads per [`CACHE_FOR`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;
use shoal_sharding::{ShardAssignment, Sharding};
use shoal_storage::RunnerStorage;
use tokio::time::{Instant, timeout};

/// How long a readiness result is reused.
pub const CACHE_FOR: Duration = Duration::from_millis(500);

/// What `/readyz` reports.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReadyReport {
    /// Whether the process is ready.
    pub ready: bool,
    /// `runner` or `client_only`.
    pub role: &'static str,
    /// `ok`, or why storage could not be read.
    pub storage: String,
    /// Whether this runner is registered in storage (runners only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registered: Option<bool>,
    /// Shards this runner holds and serves now.
    pub shards_held: usize,
    /// Shards the assignment gives this runner (runners only, when storage answered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards_target: Option<usize>,
    /// Registered runners (when storage answered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runners: Option<usize>,
    /// Why the process is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Decides readiness for one process.
pub struct Readiness {
    sharding: Sharding,
    storage: Arc<dyn RunnerStorage>,
    draining: AtomicBool,
    share_reached: AtomicBool,
    cache: tokio::sync::Mutex<Option<(Instant, ReadyReport)>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("draining", &self.draining)
            .field("share_reached", &self.share_reached)
            .finish_non_exhaustive()
    }
}

impl Readiness {
    /// Readiness of the process running `sharding` over `storage`.
    pub fn new(sharding: Sharding, storage: Arc<dyn RunnerStorage>) -> Arc<Self> {
        Arc::new(Self {
            sharding,
            storage,
            draining: AtomicBool::new(false),
            share_reached: AtomicBool::new(false),
            cache: tokio::sync::Mutex::new(None),
        })
    }

    /// Marks the process as shutting down: from now on it is not ready.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire) || self.sharding.is_shutting_down()
    }

    /// Checks readiness (reads storage at most once per [`CACHE_FOR`]).
    pub async fn check(&self) -> ReadyReport {
        let mut cache = self.cache.lock().await;
        if let Some((at, report)) = cache.as_ref()
            && at.elapsed() < CACHE_FOR
            && !(report.ready && self.is_draining())
        {
            return report.clone();
        }
        let report = self.evaluate().await;
        metrics::gauge!("shoal_ready").set(if report.ready { 1.0 } else { 0.0 });
        *cache = Some((Instant::now(), report.clone()));
        report
    }

    async fn evaluate(&self) -> ReadyReport {
        let me = self.sharding.runner_address().cloned();
        let held = self.sharding.active_shards().len();
        let mut report = ReadyReport {
            ready: false,
            role: if me.is_some() {
                "runner"
            } else {
                "client_only"
            },
            storage: "ok".to_owned(),
            registered: None,
            shards_held: held,
            shards_target: None,
            runners: None,
            reason: None,
        };
        if self.is_draining() {
            report.reason = Some("shutting down".to_owned());
            return report;
        }
        let deadline = self.sharding.config().storage_timeout();
        let read = async {
            let runners = self.storage.runners().await?;
            let leases = self.storage.leases().await?;
            Ok::<_, shoal_storage::StorageError>((runners, leases))
        };
        let (runners, leases) = match timeout(deadline * 2, read).await {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => {
                report.storage = e.to_string();
                report.reason = Some("storage is unreachable".to_owned());
                return report;
            }
            Err(_) => {
                report.storage = format!("no answer within {deadline:?}");
                report.reason = Some("storage is unreachable".to_owned());
                return report;
            }
        };
        report.runners = Some(runners.len());
        let Some(me) = me else {
            report.ready = !runners.is_empty();
            if !report.ready {
                report.reason = Some("no runner is registered".to_owned());
            }
            return report;
        };
        let registered = runners.iter().any(|r| r.runner.address == me);
        report.registered = Some(registered);
        let config = self.sharding.config();
        let assignment = ShardAssignment::compute(
            config.shards_per_group(),
            config.available_groups(),
            &runners,
            &leases,
        );
        let target = assignment.shards_of(&me).count();
        report.shards_target = Some(target);
        if registered && held >= target {
            self.share_reached.store(true, Ordering::Release);
        }
        if !registered {
            report.reason = Some("not registered in storage".to_owned());
        } else if !self.share_reached.load(Ordering::Acquire) {
            report.reason = Some(format!("taking its share of shards ({held} of {target})"));
        } else {
            report.ready = true;
        }
        report
    }
}
