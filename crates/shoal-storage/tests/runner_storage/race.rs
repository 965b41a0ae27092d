//! Many runners fighting over the same shards, with short leases, while a checker watches that
//! no shard ever has two live owners.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use shoal_protocol::{RunnerAddress, ShardId};
use shoal_storage::{Epoch, HeldShard, RunnerStorage};

use crate::cases::{id, runner, shards};
use crate::harness::Env;

const RUNNERS: usize = 8;
const SHARDS: u32 = 300;
const ROUNDS: usize = 60;
const TTL: Duration = Duration::from_millis(150);
/// What a runner subtracts from `call start + ttl` to decide until when it may act on a lease:
/// an allowance for the storage clock's granularity (SQLite stores milliseconds).
const MARGIN: Duration = Duration::from_millis(5);

/// A small deterministic generator (xorshift64*), one per runner.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the checker knows.
#[derive(Default)]
struct Checker {
    /// Who each (shard, epoch) was granted to.
    grants: HashMap<(ShardId, Epoch), usize>,
    /// Per shard, the runner that believes it holds it and until when it may act on it.
    beliefs: HashMap<ShardId, (usize, Instant)>,
    /// Per (runner, shard): the last epoch it saw and whether it lost the shard since.
    seen: HashMap<(usize, ShardId), (Epoch, bool)>,
    /// Every violation found.
    violations: Vec<String>,
    /// Lease samples taken while the race ran: (shard, epoch, owner).
    samples: Vec<(ShardId, Epoch, RunnerAddress)>,
    grants_total: usize,
}

impl Checker {
    /// Records that runner `who` learned, from a call started at `started` for `asked`, that it
    /// holds `held`.
    fn observe(&mut self, who: usize, started: Instant, asked: &[ShardId], held: &[HeldShard]) {
        let now = Instant::now();
        let valid_until = started + TTL - MARGIN;
        let held_set: HashSet<&ShardId> = held.iter().map(|h| &h.shard).collect();
        for h in held {
            if let Some(prev) = self.grants.insert((h.shard.clone(), h.epoch), who)
                && prev != who
            {
                self.violations.push(format!(
                    "{} epoch {} granted to runner {prev} and runner {who}",
                    h.shard, h.epoch
                ));
            }
            if let Some((other, until)) = self.beliefs.get(&h.shard)
                && *other != who
                && *until > now
            {
                self.violations.push(format!(
                    "{} given to runner {who} (epoch {}) while runner {other} may still act on \
                     it for {:?}",
                    h.shard,
                    h.epoch,
                    *until - now
                ));
            }
            self.beliefs.insert(h.shard.clone(), (who, valid_until));
            match self.seen.get(&(who, h.shard.clone())) {
                Some((last, lost)) if h.epoch < *last || (*lost && h.epoch == *last) => {
                    self.violations.push(format!(
                        "runner {who} saw {} go from epoch {last} to {} (lost in between: {lost})",
                        h.shard, h.epoch
                    ));
                }
                _ => {}
            }
            if !matches!(self.seen.get(&(who, h.shard.clone())), Some((last, false)) if *last == h.epoch)
            {
                self.grants_total += 1;
            }
            self.seen.insert((who, h.shard.clone()), (h.epoch, false));
        }
        for shard in asked.iter().filter(|s| !held_set.contains(s)) {
            self.lose(who, shard);
        }
    }

    /// Runner `who` no longer holds `shard` (released, lapsed or taken): it stops acting on it.
    fn lose(&mut self, who: usize, shard: &ShardId) {
        if let Some((owner, _)) = self.beliefs.get(shard)
            && *owner == who
        {
            self.beliefs.remove(shard);
        }
        if let Some(entry) = self.seen.get_mut(&(who, shard.clone())) {
            entry.1 = true;
        }
    }
}

async fn run_runner(who: usize, storage: Arc<dyn RunnerStorage>, checker: Arc<Mutex<Checker>>) {
    let me = runner(10_000 + who as u16);
    storage
        .register(&me, id(&me).incarnation, true, TTL * 10)
        .await
        .unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (who as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9));
    let mut held: Vec<ShardId> = Vec::new();
    for _ in 0..ROUNDS {
        match rng.below(20) {
            // Acquire a random window of shards (sometimes all of them).
            0..=8 => {
                let (from, len) = if rng.below(4) == 0 {
                    (1, SHARDS)
                } else {
                    (
                        1 + rng.below(u64::from(SHARDS)) as u32,
                        1 + rng.below(120) as u32,
                    )
                };
                let asked = shards((from..from + len).map(|i| (i - 1) % SHARDS + 1));
                let started = Instant::now();
                let got = storage.acquire(&id(&me), &asked, TTL).await.unwrap();
                checker.lock().observe(who, started, &asked, &got);
                let mut set: HashSet<ShardId> = held.drain(..).collect();
                set.extend(got.into_iter().map(|h| h.shard));
                held = set.into_iter().collect();
            }
            // Refresh what it holds.
            9..=13 => {
                let started = Instant::now();
                let got = storage.refresh(&id(&me), &held, TTL).await.unwrap();
                checker.lock().observe(who, started, &held, &got);
                held = got.into_iter().map(|h| h.shard).collect();
            }
            // Release part of what it holds: stop acting on it first, then release.
            14..=15 => {
                let cut = rng.below(held.len() as u64 + 1) as usize;
                let released: Vec<ShardId> = held.drain(..cut).collect();
                {
                    let mut checker = checker.lock();
                    for shard in &released {
                        checker.lose(who, shard);
                    }
                }
                storage.release(&id(&me), &released).await.unwrap();
            }
            16 => {
                {
                    let mut checker = checker.lock();
                    for shard in &held {
                        checker.lose(who, shard);
                    }
                }
                held.clear();
                storage.release_all(&id(&me)).await.unwrap();
            }
            // Pause long enough for some of its leases to lapse (waiting for time to pass).
            _ => {
                tokio::time::sleep(Duration::from_millis(rng.below(2 * TTL.as_millis() as u64)))
                    .await;
            }
        }
    }
}

pub async fn race_never_gives_a_shard_two_owners(env: &Env) {
    let checker = Arc::new(Mutex::new(Checker::default()));
    let mut runners = Vec::new();
    for who in 0..RUNNERS {
        // Each runner gets its own handle: its own pool for a SQLite file or Postgres, as
        // separate processes would.
        let storage = env.handle().await;
        runners.push(tokio::spawn(run_runner(who, storage, checker.clone())));
    }
    let done = Arc::new(tokio::sync::Notify::new());
    let sampler = {
        let storage = env.handle().await;
        let checker = checker.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut samples = 0usize;
            let mut pace = tokio::time::interval(Duration::from_millis(2));
            loop {
                let leases = tokio::select! {
                    leases = async {
                        pace.tick().await;
                        storage.leases().await
                    } => leases.unwrap(),
                    () = done.notified() => break samples,
                };
                samples += 1;
                let mut per_shard = HashSet::new();
                let mut checker = checker.lock();
                for lease in leases {
                    if !per_shard.insert(lease.shard.clone()) {
                        checker.violations.push(format!(
                            "{} listed twice in one leases() sample",
                            lease.shard
                        ));
                    }
                    checker
                        .samples
                        .push((lease.shard, lease.epoch, lease.owner));
                }
            }
        })
    };
    for r in runners {
        r.await.unwrap();
    }
    done.notify_one();
    let samples = sampler.await.unwrap();

    let checker = checker.lock();
    // Every sampled lease belongs to the runner it was granted to.
    let mut violations = checker.violations.clone();
    for (shard, epoch, owner) in &checker.samples {
        match checker.grants.get(&(shard.clone(), *epoch)) {
            Some(who) if runner(10_000 + *who as u16).address == *owner => {}
            other => violations.push(format!(
                "sample shows {shard} epoch {epoch} held by {owner}, granted to {other:?}"
            )),
        }
    }
    assert!(
        violations.is_empty(),
        "{} violations, first ones: {:#?}",
        violations.len(),
        &violations[..violations.len().min(10)]
    );
    // The race did exercise takeovers, and the sampler did look.
    assert!(
        checker.grants_total > SHARDS as usize,
        "only {} grants",
        checker.grants_total
    );
    assert!(samples > 0, "the sampler took no sample");
    let max_epoch = checker.grants.keys().map(|(_, e)| e.0).max().unwrap_or(0);
    assert!(max_epoch > 2, "epochs never grew past {max_epoch}");
}
