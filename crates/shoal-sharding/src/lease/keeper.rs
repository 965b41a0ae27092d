//! The lease keeper: one task per runner that reads the cluster from storage, computes the
//! assignment, acquires, refreshes and releases shard leases, and stops entities before a lease
//! could expire under them.
//!
//! Safety rests on one rule: a runner only runs a shard's entities while it is sure its lease is
//! live. It tracks a conservative expiry — the *local* time at which it **sent** its last
//! successful refresh, plus the TTL (storage computes the real expiry from its own clock when it
//! executes the statement, which is later) — and a watchdog aborts every entity a safety margin
//! before that instant unless a refresh has succeeded meanwhile. Every storage call the keeper
//! awaits is bounded by that instant too, so a hung call cannot keep it from firing (Effect
//! #6508).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use shoal_protocol::{Runner, RunnerAddress, RunnerId, ShardId};
use shoal_storage::{Epoch, RunnerStorage, StorageError};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, interval, sleep_until, timeout_at};
use tracing::Instrument;

use super::view::ClusterView;
use crate::assignment::ShardAssignment;
use crate::host::EntityHost;
use crate::lifecycle::Lifecycle;
use crate::router::Router;
use crate::router::routes::RouteTable;
use crate::singleton::Singletons;

/// What the lease keeper works with.
pub(crate) struct KeeperParts {
    /// Where the shards this runner serves and the routes to the others are kept (the keeper
    /// writes both), and the transport whose connections to runners that left it drops.
    pub(crate) router: Router,
    /// This runner (`None` in client-only mode): registered again if its heartbeat lapsed.
    pub(crate) runner: Option<Runner>,
    pub(crate) storage: Arc<dyn RunnerStorage>,
    /// Whose entities it stops when a shard goes.
    pub(crate) host: Arc<EntityHost>,
    pub(crate) singletons: Arc<Singletons>,
    pub(crate) lifecycle: Arc<Lifecycle>,
    /// Where it publishes the last view of the cluster.
    pub(crate) view: Arc<Mutex<ClusterView>>,
}

/// Starts the keeper: one synchronous pass (so routes exist when `start` returns), then the loop.
pub(crate) async fn start(parts: KeeperParts) {
    let parts = Arc::new(parts);
    let (released_tx, released_rx) = mpsc::unbounded_channel();
    let mut keeper = Keeper {
        id: parts
            .router
            .me()
            .map(|address| RunnerId::new(address.clone(), parts.router.identity().incarnation())),
        parts: parts.clone(),
        outage: Outage::default(),
        held: BTreeMap::new(),
        releasing: BTreeMap::new(),
        unreleased: BTreeSet::new(),
        valid_until: None,
        known: HashSet::new(),
        cut_off: BTreeSet::new(),
        released_tx,
        released_rx,
        draining: None,
        next_lapse: None,
        rounds: 0,
    };
    keeper.sync().await;
    let span = tracing::info_span!("lease_keeper", runner = ?parts.router.me());
    let task = tokio::spawn(keeper.run().instrument(span));
    parts.lifecycle.spawn(task);
}

/// Logs a storage outage once when it starts and once when it ends, not on every retry.
#[derive(Debug, Default)]
struct Outage {
    since: Option<Instant>,
    failures: u64,
}

impl Outage {
    fn failed(&mut self, operation: &str, error: &StorageError) {
        self.failures += 1;
        if self.since.is_none() {
            self.since = Some(Instant::now());
            tracing::warn!(operation, error = %error, "storage call failed; retrying (further failures are logged at debug level until it recovers)");
        } else {
            tracing::debug!(operation, error = %error, "storage call failed again");
        }
    }

    fn succeeded(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                failures = self.failures,
                outage = ?since.elapsed(),
                "storage reachable again"
            );
            self.failures = 0;
        }
    }
}

struct Keeper {
    parts: Arc<KeeperParts>,
    /// This runner (its address and incarnation); `None` in client-only mode.
    id: Option<RunnerId>,
    outage: Outage,
    /// Shards held and active, with their lease epochs.
    held: BTreeMap<ShardId, Epoch>,
    /// Shards whose entities are being stopped before release (still refreshed).
    releasing: BTreeMap<ShardId, Epoch>,
    /// Shards whose entities stopped but whose release in storage has not succeeded yet.
    unreleased: BTreeSet<ShardId>,
    /// Conservative local expiry of the held leases.
    valid_until: Option<Instant>,
    /// Runners seen in the last view.
    known: HashSet<RunnerAddress>,
    /// Runners judged cut off from the others in the last view.
    cut_off: BTreeSet<RunnerAddress>,
    released_tx: mpsc::UnboundedSender<Vec<ShardId>>,
    released_rx: mpsc::UnboundedReceiver<Vec<ShardId>>,
    /// Set while shutting down: the deadline of the handoff.
    draining: Option<Instant>,
    /// When the first lease held by another runner lapses unless refreshed: the keeper syncs
    /// then, so a shard whose owner stopped (frozen, cut off, killed) moves as soon as its lease
    /// allows instead of at the next poll. Live owners refresh long before, and every sync
    /// pushes this later.
    next_lapse: Option<Instant>,
    /// Rounds that read the cluster so far ([`ClusterView::rounds`]).
    rounds: u64,
}

impl Keeper {
    fn me(&self) -> Option<&RunnerAddress> {
        self.parts.router.me()
    }

    fn config(&self) -> &crate::ShardingConfig {
        self.parts.router.config()
    }

    /// When entities must be stopped unless a refresh succeeds first.
    fn watchdog(&self) -> Option<Instant> {
        if self.held.is_empty() && self.releasing.is_empty() {
            return None;
        }
        self.valid_until.map(|t| {
            t.checked_sub(self.config().lease_safety_margin())
                .unwrap_or(t)
        })
    }

    /// Runs a storage call bounded by the storage timeout and by the watchdog.
    async fn call<T>(
        &self,
        operation: &'static str,
        fut: impl Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        let timeout = self.config().storage_timeout();
        let mut deadline = Instant::now() + timeout;
        if let Some(w) = self.watchdog() {
            deadline = deadline.min(w);
        }
        let started = Instant::now();
        let result = match timeout_at(deadline, fut).await {
            Ok(result) => result,
            Err(_) => Err(StorageError::Timeout { operation, timeout }),
        };
        metrics::histogram!("shoal_storage_call_seconds", "operation" => operation)
            .record(started.elapsed().as_secs_f64());
        if result.is_err() {
            metrics::counter!("shoal_storage_call_failures_total", "operation" => operation)
                .increment(1);
        }
        result
    }

    async fn run(mut self) {
        let parts = self.parts.clone();
        let is_runner = self.me().is_some();
        let mut poll = interval(self.config().assignment_refresh_interval());
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut refresh = interval(self.config().effective_refresh_interval());
        refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            if let Some(deadline) = self.draining {
                if self.held.is_empty() && self.releasing.is_empty() && self.unreleased.is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    tracing::warn!(
                        "handoff did not finish in time; aborting the remaining entities"
                    );
                    self.force_stop(self.all_shards(), "shutdown deadline");
                    break;
                }
            }
            let watchdog = self.watchdog();
            let far = Instant::now() + Duration::from_secs(3600);
            let drain_deadline = self.draining.unwrap_or(far);
            tokio::select! {
                biased;
                _ = parts.lifecycle.cancel().cancelled(), if self.draining.is_none() => {
                    if !is_runner {
                        break;
                    }
                    self.begin_drain().await;
                }
                _ = sleep_until(watchdog.unwrap_or(far)), if watchdog.is_some() => self.lease_expiring(),
                Some(shards) = self.released_rx.recv() => self.entities_stopped(shards).await,
                _ = refresh.tick(), if is_runner => self.refresh().await,
                _ = poll.tick(), if self.draining.is_none() => self.sync().await,
                _ = sleep_until(self.next_lapse.unwrap_or(far)), if self.draining.is_none() && self.next_lapse.is_some() => {
                    self.sync().await
                }
                _ = sleep_until(drain_deadline), if self.draining.is_some() => {}
            }
        }
        if let Some(me) = self.id.clone() {
            let _ = self
                .call("release_all", parts.storage.release_all(&me))
                .await;
            tracing::info!("handoff complete; leases released");
        }
        parts.lifecycle.stopped().cancel();
    }

    /// Publishes the cluster as this round read it.
    fn publish(&mut self, view: ClusterView) {
        self.rounds += 1;
        *self.parts.view.lock() = ClusterView {
            rounds: self.rounds,
            ..view
        };
    }

    fn all_shards(&self) -> Vec<ShardId> {
        self.held
            .keys()
            .chain(self.releasing.keys())
            .cloned()
            .collect()
    }

    /// Reads runners and leases, recomputes the assignment and routes, and moves shards.
    async fn sync(&mut self) {
        let parts = self.parts.clone();
        // Cleared until this sync reads the leases: a failing storage is not retried in a loop.
        self.next_lapse = None;
        let mut runners = match self.call("runners", parts.storage.runners()).await {
            Ok(r) => r,
            Err(e) => {
                self.outage.failed("runners", &e);
                return;
            }
        };
        let leases = match self.call("leases", parts.storage.leases()).await {
            Ok(l) => l,
            Err(e) => {
                self.outage.failed("leases", &e);
                return;
            }
        };
        self.outage.succeeded();
        self.next_lapse = next_lapse(self.id.as_ref(), &leases, Instant::now());

        // Runners that left: drop their connections.
        let now_known: HashSet<RunnerAddress> =
            runners.iter().map(|r| r.runner.address.clone()).collect();
        for gone in self.known.difference(&now_known) {
            tracing::info!(runner = %gone, "runner left the cluster");
            parts.router.transport().runner_left(gone);
        }
        for joined in now_known.difference(&self.known) {
            tracing::info!(runner = %joined, "runner joined the cluster");
        }
        self.known = now_known;
        self.judge_reachability(&mut runners);
        metrics::gauge!("shoal_runners").set(runners.len() as f64);
        metrics::gauge!("shoal_runners_healthy")
            .set(runners.iter().filter(|r| r.healthy).count() as f64);

        let assignment = ShardAssignment::compute(
            self.config().shards_per_group(),
            self.config().available_groups(),
            &runners,
            &leases,
        );
        parts
            .router
            .routes()
            .replace(RouteTable::build(&assignment, &leases));

        let Some(id) = self.id.clone() else {
            self.publish(ClusterView {
                runners,
                leases,
                rounds: 0,
            });
            return;
        };
        let me = id.address.clone();
        let ours = |lease: &shoal_storage::ShardLease| {
            lease.owner == id.address && lease.incarnation == id.incarnation
        };

        // Missing from storage (heartbeat lapsed while storage was unreachable): join again.
        let registered = runners
            .iter()
            .any(|r| r.runner.address == me && r.incarnation == id.incarnation);
        if !registered && !self.parts.lifecycle.is_closing() {
            tracing::warn!(
                "this runner is not registered in storage (its heartbeat lapsed?); registering again"
            );
            if let Some(runner) = parts.runner.clone() {
                let register = parts.storage.register(
                    &runner,
                    id.incarnation,
                    true,
                    self.config().lease_ttl(),
                );
                match self.call("register", register).await {
                    Ok(()) => {}
                    Err(error @ shoal_storage::StorageError::AddressInUse { .. }) => {
                        // Another process registered at this address while this one was away
                        // (frozen, cut off): it is the runner at this address now. This process
                        // must not serve anything any more.
                        tracing::error!(%error, "another process took this runner's address; stopping");
                        metrics::counter!("shoal_runner_superseded_total").increment(1);
                        let all = self.all_shards();
                        self.force_stop(all, "another process took this runner's address");
                        parts.lifecycle.cancel().cancel();
                        return;
                    }
                    Err(error) => tracing::warn!(%error, "registering again failed"),
                }
            }
        }

        // A held shard whose live lease shows another owner (another runner, or another process
        // at this address) was lost: stop at once.
        let stolen: Vec<ShardId> = leases
            .iter()
            .filter(|l| {
                !ours(l)
                    && (self.held.contains_key(&l.shard) || self.releasing.contains_key(&l.shard))
            })
            .map(|l| l.shard.clone())
            .collect();
        if !stolen.is_empty() {
            tracing::error!(
                shards = stolen.len(),
                "storage shows other owners for shards held here; stopping their entities"
            );
            self.force_stop(stolen, "lease taken by another runner");
        }

        let mine: BTreeSet<ShardId> = assignment.shards_of(&me).collect();
        let to_release: Vec<ShardId> = self
            .held
            .keys()
            .filter(|s| !mine.contains(*s))
            .cloned()
            .collect();
        if !to_release.is_empty() {
            self.begin_release(to_release);
        }

        let taken: HashSet<&ShardId> = leases
            .iter()
            .filter(|l| !ours(l))
            .map(|l| &l.shard)
            .collect();
        let to_acquire: Vec<ShardId> = mine
            .into_iter()
            .filter(|s| {
                !self.held.contains_key(s)
                    && !self.releasing.contains_key(s)
                    && !self.unreleased.contains(s)
                    && !taken.contains(s)
            })
            .collect();
        self.publish(ClusterView {
            runners,
            leases,
            rounds: 0,
        });
        if !to_acquire.is_empty() {
            self.acquire(&id, to_acquire).await;
        }
        if !self.unreleased.is_empty() {
            self.release_in_storage().await;
        }
    }

    /// Marks the runners a quorum of the others cannot reach unhealthy (see `reachability`),
    /// logging when that changes.
    fn judge_reachability(&mut self, runners: &mut [shoal_storage::RunnerStatus]) {
        let cut: BTreeSet<RunnerAddress> =
            super::reachability::judge(runners).into_iter().collect();
        if cut == self.cut_off {
            return;
        }
        for runner in cut.difference(&self.cut_off) {
            if Some(runner) == self.me() {
                tracing::error!(
                    "most other runners report they cannot reach this runner; handing its shards off"
                );
            } else {
                tracing::warn!(%runner, "most other runners report they cannot reach this runner; its shards move");
            }
        }
        for runner in self.cut_off.difference(&cut) {
            tracing::info!(%runner, "runner reachable by the others again");
        }
        metrics::gauge!("shoal_runners_cut_off").set(cut.len() as f64);
        self.cut_off = cut;
    }

    async fn acquire(&mut self, me: &RunnerId, shards: Vec<ShardId>) {
        let parts = self.parts.clone();
        let ttl = self.config().lease_ttl();
        let sent = Instant::now();
        match self
            .call("acquire", parts.storage.acquire(me, &shards, ttl))
            .await
        {
            Ok(acquired) => {
                if acquired.is_empty() {
                    return;
                }
                if self.held.is_empty() && self.releasing.is_empty() {
                    self.confirmed(sent + ttl);
                }
                let mut new = Vec::with_capacity(acquired.len());
                for held in acquired {
                    parts.router.shards().set_active(&held.shard, held.epoch);
                    self.held.insert(held.shard.clone(), held.epoch);
                    new.push(held.shard);
                }
                tracing::info!(
                    acquired = new.len(),
                    requested = shards.len(),
                    held = self.held.len(),
                    "acquired shards"
                );
                metrics::gauge!("shoal_shards_held").set(self.held.len() as f64);
                parts.singletons.sync(&parts.router);
                if let Some(persistence) = parts.router.persistence() {
                    crate::persist::on_shards_acquired(persistence, new);
                }
            }
            Err(e) => tracing::warn!(error = %e, shards = shards.len(), "acquiring shards failed"),
        }
    }

    /// The leases are confirmed until `valid_until` (by the local clock, conservatively).
    fn confirmed(&mut self, valid_until: Instant) {
        self.valid_until = Some(valid_until);
        let margin = self.config().lease_safety_margin();
        self.parts
            .router
            .shards()
            .confirm_until(valid_until.checked_sub(margin).unwrap_or(valid_until));
    }

    async fn refresh(&mut self) {
        let Some(me) = self.id.clone() else { return };
        let parts = self.parts.clone();
        let shards = self.all_shards();
        let ttl = self.config().lease_ttl();
        let sent = Instant::now();
        match self
            .call("refresh", parts.storage.refresh(&me, &shards, ttl))
            .await
        {
            Ok(still) => {
                if shards.is_empty() {
                    self.valid_until = None;
                } else {
                    self.confirmed(sent + ttl);
                }
                if still.len() < shards.len() {
                    let kept: HashSet<ShardId> = still.into_iter().map(|h| h.shard).collect();
                    let lost: Vec<ShardId> =
                        shards.into_iter().filter(|s| !kept.contains(s)).collect();
                    tracing::error!(
                        lost = lost.len(),
                        "shard leases were lost; stopping their entities"
                    );
                    self.force_stop(lost, "lease lost");
                }
                if !self.unreleased.is_empty() && self.draining.is_some() {
                    self.release_in_storage().await;
                }
            }
            Err(e) => {
                metrics::counter!("shoal_lease_refresh_failures_total").increment(1);
                self.outage.failed("refresh", &e);
            }
        }
    }

    /// The watchdog fired: no refresh succeeded in time. Stop everything before the leases can
    /// expire and be taken elsewhere.
    fn lease_expiring(&mut self) {
        metrics::counter!("shoal_lease_watchdog_stops_total").increment(1);
        tracing::error!(
            shards = self.held.len() + self.releasing.len(),
            "lease refresh did not succeed in time; stopping all entities before the leases expire"
        );
        let all = self.all_shards();
        self.force_stop(all, "lease storage unreachable");
        self.valid_until = None;
        self.parts.router.shards().unconfirm();
    }

    /// Aborts the entities of `shards` at once and forgets the shards.
    fn force_stop(&mut self, shards: Vec<ShardId>, reason: &str) {
        if shards.is_empty() {
            return;
        }
        let parts = self.parts.clone();
        let set: HashSet<ShardId> = shards.iter().cloned().collect();
        for shard in &shards {
            parts.router.shards().clear(shard);
            self.held.remove(shard);
            self.releasing.remove(shard);
            self.unreleased.remove(shard);
        }
        parts.host.abort_shards(&set);
        parts.singletons.sync_with(&parts.router, true);
        tracing::warn!(shards = shards.len(), reason, "stopped entities of shards");
        metrics::gauge!("shoal_shards_held").set(self.held.len() as f64);
    }

    /// Starts handing `shards` off: new messages are refused, entities finish their running
    /// request (up to the termination timeout), then the leases are released.
    fn begin_release(&mut self, shards: Vec<ShardId>) {
        let parts = self.parts.clone();
        for shard in &shards {
            if let Some(epoch) = self.held.remove(shard) {
                parts.router.shards().set_releasing(shard);
                self.releasing.insert(shard.clone(), epoch);
            }
        }
        let set: HashSet<ShardId> = shards.iter().cloned().collect();
        let mut stopping = parts.singletons.sync_with(&parts.router, false);
        stopping.extend(parts.host.stop_shards(&set));
        tracing::info!(
            shards = shards.len(),
            entities = stopping.len(),
            "releasing shards"
        );
        let termination = self.config().entity_termination_timeout();
        let done = self.released_tx.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + termination;
            for mut s in stopping {
                if timeout_at(deadline, &mut s.task).await.is_err() {
                    s.task.abort();
                }
            }
            let _ = done.send(shards);
        });
        metrics::gauge!("shoal_shards_held").set(self.held.len() as f64);
    }

    /// The entities of `shards` have stopped: release the leases.
    async fn entities_stopped(&mut self, shards: Vec<ShardId>) {
        for shard in shards {
            // A shard force-stopped meanwhile is already gone.
            if self.releasing.remove(&shard).is_some() {
                self.unreleased.insert(shard);
            }
        }
        self.release_in_storage().await;
    }

    async fn release_in_storage(&mut self) {
        let Some(me) = self.id.clone() else { return };
        if self.unreleased.is_empty() {
            return;
        }
        let parts = self.parts.clone();
        let shards: Vec<ShardId> = self.unreleased.iter().cloned().collect();
        match self
            .call("release", parts.storage.release(&me, &shards))
            .await
        {
            Ok(()) => {
                for shard in &shards {
                    parts.router.shards().clear(shard);
                    self.unreleased.remove(shard);
                }
                tracing::info!(shards = shards.len(), "released shards");
            }
            Err(e) => {
                // Still fenced: the entities are stopped and the leases lapse if this keeps failing.
                tracing::warn!(error = %e, shards = shards.len(), "releasing shards failed; will retry");
            }
        }
    }

    /// Shutdown: leave the cluster and hand every shard off.
    async fn begin_drain(&mut self) {
        let parts = self.parts.clone();
        let deadline = Instant::now()
            + self.config().entity_termination_timeout()
            + self.config().storage_timeout() * 2;
        self.draining = Some(deadline);
        if let Some(me) = self.id.clone()
            && let Err(e) = self.call("unregister", parts.storage.unregister(&me)).await
        {
            tracing::warn!(error = %e, "unregistering failed; other runners will drop this runner when its heartbeat lapses");
        }
        parts.singletons.close();
        let held: Vec<ShardId> = self.held.keys().cloned().collect();
        if !held.is_empty() {
            self.begin_release(held);
        }
    }
}

/// When the first lease of another runner lapses, read at `read_at`: storage measured the time
/// left before the reply arrived, so waking at `read_at + expires_in` is never early by its clock.
fn next_lapse(
    me: Option<&RunnerId>,
    leases: &[shoal_storage::ShardLease],
    read_at: Instant,
) -> Option<Instant> {
    /// Rounding of the storage's millisecond figure, and a margin against waking a hair early.
    const SLACK: Duration = Duration::from_millis(2);
    leases
        .iter()
        .filter(|l| me.is_none_or(|me| l.owner != me.address || l.incarnation != me.incarnation))
        .map(|l| l.expires_in)
        .min()
        .map(|left| read_at + left + SLACK)
}
