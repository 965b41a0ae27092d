//! The conformance cases: each runs against every backend (or every SQL backend).

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::time::Duration;

use shoal_protocol::{Runner, RunnerAddress, ShardGroup, ShardId};
use shoal_storage::{Epoch, HeldShard, RunnerStorage, StorageError};

use crate::harness::{Env, Kind};

/// A lease TTL that outlives any step of a test that is not waiting for it to lapse.
pub const LONG: Duration = Duration::from_secs(30);
/// A lease TTL tests wait out.
pub const SHORT: Duration = Duration::from_millis(300);

/// Sleeps until a lease or heartbeat of [`SHORT`] TTL granted now has surely lapsed (waiting for
/// time to pass, not for an event).
pub async fn outlive_short() {
    tokio::time::sleep(SHORT + Duration::from_millis(150)).await;
}

pub fn runner(port: u16) -> Runner {
    runner_weighted(port, 1)
}

pub fn runner_weighted(port: u16, weight: u32) -> Runner {
    Runner::new(
        RunnerAddress::tcp("127.0.0.1", port).unwrap(),
        [ShardGroup::default_group()],
        NonZeroU32::new(weight).unwrap(),
    )
}

pub fn shard(id: u32) -> ShardId {
    format!("default:{id}").parse().unwrap()
}

pub fn shards(ids: impl IntoIterator<Item = u32>) -> Vec<ShardId> {
    ids.into_iter().map(shard).collect()
}

fn ids(held: &[HeldShard]) -> BTreeSet<u32> {
    held.iter().map(|h| h.shard.id()).collect()
}

fn epochs(held: &[HeldShard]) -> BTreeMap<u32, u64> {
    held.iter().map(|h| (h.shard.id(), h.epoch.0)).collect()
}

async fn owners(storage: &dyn RunnerStorage) -> BTreeMap<u32, (RunnerAddress, Epoch)> {
    storage
        .leases()
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.shard.id(), (l.owner, l.epoch)))
        .collect()
}

async fn listed(storage: &dyn RunnerStorage) -> BTreeMap<RunnerAddress, (Runner, bool)> {
    storage
        .runners()
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.runner.address.clone(), (s.runner, s.healthy)))
        .collect()
}

pub async fn register_assigns_unique_machine_ids(env: &Env) {
    let s = &*env.storage;
    let (a, b, c) = (runner(1), runner(2), runner(3));
    let ma = s.register(&a, true, LONG).await.unwrap();
    let mb = s.register(&b, true, LONG).await.unwrap();
    let mc = s.register(&c, true, LONG).await.unwrap();
    let mut seen = BTreeSet::from([ma, mb, mc]);
    assert_eq!(seen.len(), 3, "machine ids repeat: {ma:?} {mb:?} {mc:?}");

    // Registering the same address again gives a new id, never one handed out before, and the
    // stored description is replaced.
    let a2 = runner_weighted(1, 5);
    for _ in 0..3 {
        let again = s.register(&a2, true, LONG).await.unwrap();
        assert!(seen.insert(again), "machine id {again:?} was reused");
    }
    let runners = listed(s).await;
    assert_eq!(runners.len(), 3);
    assert_eq!(runners[&a.address].0, a2);
}

pub async fn unregister_removes_only_that_runner(env: &Env) {
    let s = &*env.storage;
    let (a, b) = (runner(1), runner(2));
    s.register(&a, true, LONG).await.unwrap();
    s.register(&b, true, LONG).await.unwrap();
    let held = s.acquire(&a.address, &shards([1]), LONG).await.unwrap();
    s.unregister(&a.address).await.unwrap();
    let runners = listed(s).await;
    assert_eq!(runners.keys().collect::<Vec<_>>(), vec![&b.address]);
    // Its leases are not touched (release_all does that).
    assert_eq!(owners(s).await[&1], (a.address.clone(), held[0].epoch));
    // Unregistering an unknown address is not an error.
    s.unregister(&runner(9).address).await.unwrap();
    // A new registration after unregistering gets yet another machine id.
    s.register(&a, true, LONG).await.unwrap();
    assert_eq!(listed(s).await.len(), 2);
}

pub async fn unregister_forgets_long_dead_runners(env: &Env) {
    // A handle that deletes runner rows as soon as their heartbeat lapsed (the memory backend
    // always does).
    let s = env
        .handle_with(|o| o.with_forget_dead_runners_after(Duration::ZERO))
        .await;
    let (a, dead) = (runner(1), runner(2));
    s.register(&a, true, LONG).await.unwrap();
    s.register(&dead, true, SHORT).await.unwrap();
    outlive_short().await;
    s.unregister(&a.address).await.unwrap();
    // The dead runner's row is gone: a late refresh (heartbeat) does not bring it back.
    s.refresh(&dead.address, &[], LONG).await.unwrap();
    assert!(listed(&*s).await.is_empty());
}

pub async fn lapsed_runner_reappears_on_refresh(env: &Env) {
    let s = &*env.storage;
    let (a, b) = (runner(1), runner(2));
    s.register(&a, true, SHORT).await.unwrap();
    s.register(&b, true, LONG).await.unwrap();
    outlive_short().await;
    assert!(!listed(s).await.contains_key(&a.address));
    // Within the retention, an unregister of another runner keeps the lapsed row (SQL backends;
    // the memory backend forgets lapsed rows at once), and a refresh (the heartbeat) lists it
    // again.
    if env.kind != Kind::Memory {
        s.unregister(&b.address).await.unwrap();
    }
    s.refresh(&a.address, &[], LONG).await.unwrap();
    assert!(listed(s).await.contains_key(&a.address));
}

pub async fn health_flags(env: &Env) {
    let s = &*env.storage;
    let (a, b) = (runner(1), runner(2));
    s.register(&a, false, LONG).await.unwrap();
    s.register(&b, true, LONG).await.unwrap();
    let runners = listed(s).await;
    assert!(!runners[&a.address].1);
    assert!(runners[&b.address].1);
    s.set_runner_health(&a.address, true).await.unwrap();
    s.set_runner_health(&b.address, false).await.unwrap();
    let runners = listed(s).await;
    assert!(runners[&a.address].1);
    assert!(!runners[&b.address].1);
    // Unknown address: no error, nothing appears.
    s.set_runner_health(&runner(9).address, true).await.unwrap();
    assert_eq!(listed(s).await.len(), 2);
}

pub async fn heartbeat_expiry_hides_runner(env: &Env) {
    let s = &*env.storage;
    let (a, b) = (runner(1), runner(2));
    s.register(&a, true, SHORT).await.unwrap();
    s.register(&b, true, SHORT).await.unwrap();
    // b keeps its heartbeat going through refresh (also with no shards).
    s.refresh(&b.address, &[], LONG).await.unwrap();
    outlive_short().await;
    let runners = listed(s).await;
    assert!(
        !runners.contains_key(&a.address),
        "lapsed runner still listed"
    );
    assert!(
        runners.contains_key(&b.address),
        "refreshed runner not listed"
    );
}

pub async fn acquire_free_shards(env: &Env) {
    let s = &*env.storage;
    let a = runner(1);
    s.register(&a, true, LONG).await.unwrap();
    let held = s.acquire(&a.address, &shards(1..=3), LONG).await.unwrap();
    assert_eq!(ids(&held), BTreeSet::from([1, 2, 3]));
    assert!(held.iter().all(|h| h.epoch == Epoch(1)), "{held:?}");
    let owners = owners(s).await;
    assert_eq!(owners.len(), 3);
    assert!(
        owners
            .values()
            .all(|(o, e)| *o == a.address && *e == Epoch(1))
    );
    // Asking again for what it holds keeps the epochs.
    let again = s.acquire(&a.address, &shards(1..=3), LONG).await.unwrap();
    assert_eq!(epochs(&again), epochs(&held));
    // Nothing asked, nothing returned.
    assert!(s.acquire(&a.address, &[], LONG).await.unwrap().is_empty());
}

pub async fn acquire_refused_while_another_lease_is_live(env: &Env) {
    let s = &*env.storage;
    let (a, b) = (runner(1), runner(2));
    s.acquire(&a.address, &shards([1, 2]), LONG).await.unwrap();
    let got = s
        .acquire(&b.address, &shards([1, 2, 3]), LONG)
        .await
        .unwrap();
    assert_eq!(ids(&got), BTreeSet::from([3]));
    let owners = owners(s).await;
    assert_eq!(owners[&1].0, a.address);
    assert_eq!(owners[&2].0, a.address);
    assert_eq!(owners[&3].0, b.address);
    // b's refresh does not report or extend a's shards.
    let refreshed = s
        .refresh(&b.address, &shards([1, 2, 3]), LONG)
        .await
        .unwrap();
    assert_eq!(ids(&refreshed), BTreeSet::from([3]));
}

pub async fn takeover_after_expiry(env: &Env) {
    let s = &*env.storage;
    let (a, b) = (runner(1), runner(2));
    let first = s.acquire(&a.address, &shards([1, 2]), SHORT).await.unwrap();
    assert_eq!(epochs(&first), BTreeMap::from([(1, 1), (2, 1)]));
    // While live, b gets nothing.
    assert!(
        s.acquire(&b.address, &shards([1, 2]), LONG)
            .await
            .unwrap()
            .is_empty()
    );
    outlive_short().await;
    let taken = s.acquire(&b.address, &shards([1, 2]), LONG).await.unwrap();
    assert_eq!(epochs(&taken), BTreeMap::from([(1, 2), (2, 2)]));
    // a learns on its next refresh that it lost them.
    assert!(
        s.refresh(&a.address, &shards([1, 2]), LONG)
            .await
            .unwrap()
            .is_empty()
    );
    let owners = owners(s).await;
    assert_eq!(owners[&1], (b.address.clone(), Epoch(2)));
}

pub async fn refresh_extends_held_leases(env: &Env) {
    let s = &*env.storage;
    let (a, b) = (runner(1), runner(2));
    let held = s.acquire(&a.address, &shards([1, 2]), SHORT).await.unwrap();
    // Refresh with a longer TTL: both still held, same epochs; a shard a never acquired is not
    // reported.
    let refreshed = s
        .refresh(&a.address, &shards([1, 2, 3]), LONG)
        .await
        .unwrap();
    assert_eq!(epochs(&refreshed), epochs(&held));
    outlive_short().await;
    // Past the original expiry the leases are still live: b cannot take them.
    assert!(
        s.acquire(&b.address, &shards([1, 2]), LONG)
            .await
            .unwrap()
            .is_empty()
    );
    let again = s.refresh(&a.address, &shards([1, 2]), LONG).await.unwrap();
    assert_eq!(epochs(&again), epochs(&held));
}

pub async fn refresh_does_not_renew_a_lapsed_lease(env: &Env) {
    let s = &*env.storage;
    let a = runner(1);
    s.acquire(&a.address, &shards([1]), SHORT).await.unwrap();
    outlive_short().await;
    // Nobody took it, but it lapsed: refresh must not revive it.
    assert!(
        s.refresh(&a.address, &shards([1]), LONG)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(owners(s).await.is_empty());
    // Acquiring it again is a new grant, under a new epoch.
    let again = s.acquire(&a.address, &shards([1]), LONG).await.unwrap();
    assert_eq!(epochs(&again), BTreeMap::from([(1, 2)]));
}

pub async fn release_hands_over_at_once(env: &Env) {
    let s = &*env.storage;
    let (a, b) = (runner(1), runner(2));
    s.acquire(&a.address, &shards([1, 2]), LONG).await.unwrap();
    s.release(&a.address, &shards([1])).await.unwrap();
    let taken = s.acquire(&b.address, &shards([1, 2]), LONG).await.unwrap();
    assert_eq!(epochs(&taken), BTreeMap::from([(1, 2)]));
    // a releasing a shard it no longer holds changes nothing.
    s.release(&a.address, &shards([1])).await.unwrap();
    let owners = owners(s).await;
    assert_eq!(owners[&1], (b.address.clone(), Epoch(2)));
    assert_eq!(owners[&2], (a.address.clone(), Epoch(1)));
    // a's refresh reports only what it still holds.
    let refreshed = s.refresh(&a.address, &shards([1, 2]), LONG).await.unwrap();
    assert_eq!(epochs(&refreshed), BTreeMap::from([(2, 1)]));
    // Releasing nothing is fine.
    s.release(&a.address, &[]).await.unwrap();
}

pub async fn release_all_hands_over_at_once(env: &Env) {
    let s = &*env.storage;
    let (a, b) = (runner(1), runner(2));
    s.acquire(&a.address, &shards(1..=5), LONG).await.unwrap();
    s.acquire(&b.address, &shards([6]), LONG).await.unwrap();
    s.release_all(&a.address).await.unwrap();
    assert_eq!(owners(s).await.keys().copied().collect::<Vec<_>>(), vec![6]);
    let taken = s.acquire(&b.address, &shards(1..=6), LONG).await.unwrap();
    let expected: BTreeMap<u32, u64> = (1..=5).map(|i| (i, 2)).chain([(6, 1)]).collect();
    assert_eq!(epochs(&taken), expected);
}

pub async fn epochs_never_go_back(env: &Env) {
    let s = &*env.storage;
    let (a, b) = (runner(1), runner(2));
    let one = [shard(1)];
    let mut seen = Vec::new();
    let mut grant = async |who: &Runner, ttl| {
        let held = s.acquire(&who.address, &one, ttl).await.unwrap();
        assert_eq!(held.len(), 1);
        seen.push(held[0].epoch.0);
    };
    grant(&a, LONG).await; // 1
    grant(&a, LONG).await; // still 1: held live
    s.release(&a.address, &one).await.unwrap();
    grant(&a, LONG).await; // 2: same runner after release
    s.release_all(&a.address).await.unwrap();
    grant(&b, SHORT).await; // 3: another runner
    outlive_short().await;
    grant(&b, LONG).await; // 4: same runner after a lapse
    s.release(&b.address, &one).await.unwrap();
    grant(&a, LONG).await; // 5
    assert_eq!(seen, vec![1, 1, 2, 3, 4, 5]);
}

pub async fn acquire_returns_only_requested_shards(env: &Env) {
    let s = &*env.storage;
    let a = runner(1);
    s.acquire(&a.address, &shards(1..=5), LONG).await.unwrap();
    let got = s.acquire(&a.address, &shards([6]), LONG).await.unwrap();
    assert_eq!(ids(&got), BTreeSet::from([6]));
    let refreshed = s.refresh(&a.address, &shards([2, 6]), LONG).await.unwrap();
    assert_eq!(ids(&refreshed), BTreeSet::from([2, 6]));
    // Shards of another group are other shards.
    let other: ShardId = "other:1".parse().unwrap();
    let got = s
        .acquire(&a.address, std::slice::from_ref(&other), LONG)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].shard, other);
}

pub async fn leases_lists_live_leases_only(env: &Env) {
    let s = &*env.storage;
    let (a, b) = (runner(1), runner(2));
    s.acquire(&a.address, &shards([1, 2]), LONG).await.unwrap();
    s.acquire(&b.address, &shards([3]), SHORT).await.unwrap();
    s.acquire(&b.address, &shards([4]), LONG).await.unwrap();
    s.release(&a.address, &shards([2])).await.unwrap();
    outlive_short().await;
    let owners = owners(s).await;
    assert_eq!(
        owners,
        BTreeMap::from([
            (1, (a.address.clone(), Epoch(1))),
            (4, (b.address.clone(), Epoch(1))),
        ])
    );
}

// ---- SQL backends only -------------------------------------------------------------------------

pub async fn prefix_isolation(env: &Env) {
    let other_prefix = crate::harness::unique_prefix();
    let other = env
        .handle_with(|o| o.with_table_prefix(other_prefix.clone()))
        .await;
    let s = &*env.storage;
    let (a, b) = (runner(1), runner(2));
    let ma = s.register(&a, true, LONG).await.unwrap();
    let mb = other.register(&b, true, LONG).await.unwrap();
    // Each prefix has its own machine id sequence.
    assert_eq!(ma, mb);
    let mine = s.acquire(&a.address, &shards([1]), LONG).await.unwrap();
    let theirs = other.acquire(&b.address, &shards([1]), LONG).await.unwrap();
    assert_eq!(epochs(&mine), BTreeMap::from([(1, 1)]));
    assert_eq!(epochs(&theirs), BTreeMap::from([(1, 1)]));
    assert_eq!(listed(s).await.keys().collect::<Vec<_>>(), vec![&a.address]);
    assert_eq!(
        listed(&*other).await.keys().collect::<Vec<_>>(),
        vec![&b.address]
    );
    assert_eq!(owners(s).await[&1].0, a.address);
    assert_eq!(owners(&*other).await[&1].0, b.address);
    s.release_all(&a.address).await.unwrap();
    assert_eq!(owners(&*other).await[&1].0, b.address);
    if env.kind == Kind::Postgres {
        crate::harness::drop_postgres_tables(&crate::harness::database_url(), &other_prefix).await;
    }
}

pub async fn malformed_runner_row_is_reported(env: &Env) {
    env.exec(&format!(
        "INSERT INTO {{prefix}}_runners (address, runner, healthy, heartbeat_expires_at) \
         VALUES ('10.0.0.9:4000', '{{not json', true, {})",
        env.in_one_hour()
    ))
    .await;
    match env.storage.runners().await {
        Err(StorageError::Malformed { what, detail }) => {
            assert!(what.contains("10.0.0.9:4000"), "row not named: {what}");
            assert!(detail.contains("JSON"), "{detail}");
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
}

pub async fn malformed_lease_row_is_reported(env: &Env) {
    env.exec(&format!(
        "INSERT INTO {{prefix}}_leases (shard_id, runner, epoch, expires_at) \
         VALUES ('no-separator', '10.0.0.9:4000', 1, {})",
        env.in_one_hour()
    ))
    .await;
    match env.storage.leases().await {
        Err(StorageError::Malformed { what, .. }) => {
            assert!(what.contains("no-separator"), "row not named: {what}");
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
}

pub async fn migrations_are_idempotent(env: &Env) {
    // Opening another handle migrates again (a no-op), and so does an explicit call.
    let again = env.handle().await;
    let a = runner(1);
    again.register(&a, true, LONG).await.unwrap();
    assert_eq!(listed(&*env.storage).await.len(), 1);
}
