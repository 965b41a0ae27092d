//! The conformance cases: each runs against every backend (or every SQL backend).

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::time::Duration;

use shoal_protocol::{
    Incarnation, MachineId, Runner, RunnerAddress, RunnerId, ShardGroup, ShardId,
};
use shoal_storage::{ClusterParameters, Epoch, HeldShard, RunnerStorage, StorageError};

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

/// `runner` in its incarnation for the tests (one per port, fixed).
pub fn id(runner: &Runner) -> RunnerId {
    let port = runner
        .address
        .as_str()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0);
    RunnerId::new(runner.address.clone(), Incarnation::from_raw(port + 1))
}

/// `runner` in another incarnation (the process at its address started again).
pub fn restarted(runner: &Runner) -> RunnerId {
    let first = id(runner);
    RunnerId::new(
        first.address,
        Incarnation::from_raw(first.incarnation.raw() + 1_000_000),
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

/// Wall-clock milliseconds for machine-id reservations.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub async fn machine_ids_are_unique_among_live_processes(env: &Env) {
    let s = &*env.storage;
    let (one, two, three) = (
        Incarnation::from_raw(1),
        Incarnation::from_raw(2),
        Incarnation::from_raw(3),
    );
    let now = now_ms();
    let a = s.lease_machine_id(one, now, LONG).await.unwrap();
    let b = s.lease_machine_id(two, now, LONG).await.unwrap();
    let c = s.lease_machine_id(three, now, LONG).await.unwrap();
    // The lowest free ids, each reserved from now for the lease's length.
    assert_eq!(
        [a.machine_id, b.machine_id, c.machine_id],
        [MachineId(0), MachineId(1), MachineId(2)]
    );
    assert_eq!(a.floor, 0);
    assert!(a.reserved_until >= now + LONG.as_millis() as u64);
    // The same process asking again gets its own back.
    let again = s.lease_machine_id(two, now, LONG).await.unwrap();
    assert_eq!(again.machine_id, b.machine_id);
    // Renewing extends the reservation; another incarnation cannot renew it.
    let later = now + 5_000;
    let reserved = s
        .renew_machine_id(b.machine_id, two, later, LONG)
        .await
        .unwrap();
    let reserved = reserved.unwrap();
    assert!(reserved >= later + LONG.as_millis() as u64);
    assert!(reserved >= again.reserved_until);
    assert_eq!(
        s.renew_machine_id(b.machine_id, one, later, LONG)
            .await
            .unwrap(),
        None
    );
    // A released id goes to the next process, which starts after what the last holder made.
    s.release_machine_id(a.machine_id, one, now + 7)
        .await
        .unwrap();
    let d = s
        .lease_machine_id(Incarnation::from_raw(4), now + 8, LONG)
        .await
        .unwrap();
    assert_eq!(d.machine_id, a.machine_id);
    assert_eq!(d.floor, now + 7);
    assert!(d.reserved_until > d.floor);
}

pub async fn a_lapsed_machine_id_is_taken_after_its_reservation(env: &Env) {
    let s = &*env.storage;
    let (old, new) = (Incarnation::from_raw(1), Incarnation::from_raw(2));
    let now = now_ms();
    let first = s.lease_machine_id(old, now, SHORT).await.unwrap();
    // The holder extended its reservation far ahead, then froze.
    let far = now + 60_000;
    let reserved = s
        .renew_machine_id(first.machine_id, old, far, SHORT)
        .await
        .unwrap()
        .unwrap();
    outlive_short().await;
    // Its lease lapsed: the id is free again, but other free ids whose reservations have passed
    // go first.
    let taken = s.lease_machine_id(new, now_ms(), LONG).await.unwrap();
    assert_eq!(taken.machine_id, MachineId(1));
    // Once every other id is held, it is handed out, and its next holder's ids start after
    // everything the frozen holder may still make.
    let mut next = 3;
    let reused = loop {
        let lease = s
            .lease_machine_id(Incarnation::from_raw(next), now_ms(), LONG)
            .await
            .unwrap();
        if lease.machine_id == first.machine_id {
            break lease;
        }
        assert!(next < 2000, "machine id 0 was never handed out again");
        next += 1;
    };
    assert_eq!(reused.floor, reserved);
    assert!(reused.reserved_until > reserved);
    // Every holder is listed once.
    let live = s.machine_ids().await.unwrap();
    assert_eq!(live.len(), 1024);
    assert!(
        live.iter()
            .any(|l| l.machine_id == reused.machine_id
                && l.incarnation == Incarnation::from_raw(next))
    );
    // All 1024 are held now.
    assert!(matches!(
        s.lease_machine_id(Incarnation::from_raw(5000), now_ms(), LONG)
            .await,
        Err(StorageError::NoMachineId)
    ));
    // The old holder learns that it lost the id.
    assert_eq!(
        s.renew_machine_id(first.machine_id, old, now_ms(), LONG)
            .await
            .unwrap(),
        None
    );
}

pub async fn a_live_address_is_refused_to_another_incarnation(env: &Env) {
    let s = &*env.storage;
    let a = runner(1);
    let (first, second) = (id(&a), restarted(&a));
    s.register(&a, first.incarnation, true, SHORT)
        .await
        .unwrap();
    // Registering again in the same incarnation replaces the description.
    let heavier = runner_weighted(1, 5);
    s.register(&heavier, first.incarnation, true, SHORT)
        .await
        .unwrap();
    assert_eq!(listed(s).await[&a.address].0, heavier);
    // Another process at the same address is refused while the first one's heartbeat lives.
    match s.register(&a, second.incarnation, true, LONG).await {
        Err(StorageError::AddressInUse {
            address, holder, ..
        }) => {
            assert_eq!(address, a.address);
            assert_eq!(holder, first.incarnation);
        }
        other => panic!("expected AddressInUse, got {other:?}"),
    }
    outlive_short().await;
    // Once it lapsed, the new process registers; the old one can no longer keep the row alive
    // nor remove it.
    s.register(&a, second.incarnation, true, LONG)
        .await
        .unwrap();
    s.refresh(&first, &[], SHORT).await.unwrap();
    s.unregister(&first).await.unwrap();
    let runners = s.runners().await.unwrap();
    assert_eq!(runners.len(), 1);
    assert_eq!(runners[0].incarnation, second.incarnation);
}

pub async fn leases_belong_to_an_incarnation(env: &Env) {
    let s = &*env.storage;
    let a = runner(1);
    let (first, second) = (id(&a), restarted(&a));
    let held = s.acquire(&first, &shards([1, 2]), SHORT).await.unwrap();
    assert_eq!(epochs(&held), BTreeMap::from([(1, 1), (2, 1)]));
    // The same address in another incarnation holds nothing of it.
    assert!(
        s.acquire(&second, &shards([1, 2]), LONG)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.refresh(&second, &shards([1, 2]), LONG)
            .await
            .unwrap()
            .is_empty()
    );
    s.release(&second, &shards([1])).await.unwrap();
    s.release_all(&second).await.unwrap();
    let leases = s.leases().await.unwrap();
    assert_eq!(leases.len(), 2);
    assert!(leases.iter().all(|l| l.incarnation == first.incarnation));
    outlive_short().await;
    // After the lapse the new incarnation takes them under new epochs; the old one lost them.
    let taken = s.acquire(&second, &shards([1, 2]), LONG).await.unwrap();
    assert_eq!(epochs(&taken), BTreeMap::from([(1, 2), (2, 2)]));
    assert!(
        s.refresh(&first, &shards([1, 2]), LONG)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.leases()
            .await
            .unwrap()
            .iter()
            .all(|l| l.incarnation == second.incarnation)
    );
}

pub async fn cluster_parameters_are_stored_once(env: &Env) {
    let s = &*env.storage;
    let first = ClusterParameters::new()
        .with("shards_per_group", "300")
        .with("shard_hash", "xxh3-64");
    assert_eq!(s.cluster_parameters(&first).await.unwrap(), first);
    // A later process with other values gets the stored ones back (and compares); a parameter
    // the cluster does not have yet is added.
    let later = ClusterParameters::new()
        .with("shards_per_group", "128")
        .with("protocol", "2");
    let stored = s.cluster_parameters(&later).await.unwrap();
    assert_eq!(stored.get("shards_per_group"), Some("300"));
    assert_eq!(stored.get("shard_hash"), Some("xxh3-64"));
    assert_eq!(stored.get("protocol"), Some("2"));
    let differences = later.differences(&stored);
    assert_eq!(differences.len(), 1);
    assert_eq!(differences[0].name, "shards_per_group");
}

pub async fn unregister_removes_only_that_runner(env: &Env) {
    let s = &*env.storage;
    let (a, b) = (runner(1), runner(2));
    s.register(&a, id(&a).incarnation, true, LONG)
        .await
        .unwrap();
    s.register(&b, id(&b).incarnation, true, LONG)
        .await
        .unwrap();
    let held = s.acquire(&id(&a), &shards([1]), LONG).await.unwrap();
    s.unregister(&id(&a)).await.unwrap();
    let runners = listed(s).await;
    assert_eq!(runners.keys().collect::<Vec<_>>(), vec![&b.address]);
    // Its leases are not touched (release_all does that).
    assert_eq!(owners(s).await[&1], (a.address.clone(), held[0].epoch));
    // Unregistering an unknown address is not an error.
    s.unregister(&id(&runner(9))).await.unwrap();
    // Another process may register at the address at once.
    s.register(&a, restarted(&a).incarnation, true, LONG)
        .await
        .unwrap();
    assert_eq!(listed(s).await.len(), 2);
}

pub async fn unregister_forgets_long_dead_runners(env: &Env) {
    // A handle that deletes runner rows as soon as their heartbeat lapsed (the memory backend
    // always does).
    let s = env
        .handle_with(|o| o.with_forget_dead_runners_after(Duration::ZERO))
        .await;
    let (a, dead) = (runner(1), runner(2));
    s.register(&a, id(&a).incarnation, true, LONG)
        .await
        .unwrap();
    s.register(&dead, id(&dead).incarnation, true, SHORT)
        .await
        .unwrap();
    outlive_short().await;
    s.unregister(&id(&a)).await.unwrap();
    // The dead runner's row is gone: a late refresh (heartbeat) does not bring it back.
    s.refresh(&id(&dead), &[], LONG).await.unwrap();
    assert!(listed(&*s).await.is_empty());
}

pub async fn lapsed_runner_reappears_on_refresh(env: &Env) {
    let s = &*env.storage;
    let (a, b) = (runner(1), runner(2));
    s.register(&a, id(&a).incarnation, true, SHORT)
        .await
        .unwrap();
    s.register(&b, id(&b).incarnation, true, LONG)
        .await
        .unwrap();
    outlive_short().await;
    assert!(!listed(s).await.contains_key(&a.address));
    // Within the retention, an unregister of another runner keeps the lapsed row (SQL backends;
    // the memory backend forgets lapsed rows at once), and a refresh (the heartbeat) lists it
    // again.
    if env.kind != Kind::Memory {
        s.unregister(&id(&b)).await.unwrap();
    }
    s.refresh(&id(&a), &[], LONG).await.unwrap();
    assert!(listed(s).await.contains_key(&a.address));
}

pub async fn health_flags(env: &Env) {
    let s = &*env.storage;
    let (a, b) = (runner(1), runner(2));
    s.register(&a, id(&a).incarnation, false, LONG)
        .await
        .unwrap();
    s.register(&b, id(&b).incarnation, true, LONG)
        .await
        .unwrap();
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

async fn reported(storage: &dyn RunnerStorage) -> BTreeMap<RunnerAddress, BTreeSet<RunnerAddress>> {
    storage
        .runners()
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.runner.address, s.unreachable.into_iter().collect()))
        .collect()
}

pub async fn unreachable_reports(env: &Env) {
    let s = &*env.storage;
    let (a, b, c) = (runner(1), runner(2), runner(3));
    for r in [&a, &b, &c] {
        s.register(r, id(r).incarnation, true, LONG).await.unwrap();
    }
    assert!(reported(s).await.values().all(BTreeSet::is_empty));
    s.report_unreachable(&id(&a), &[b.address.clone(), c.address.clone()])
        .await
        .unwrap();
    s.report_unreachable(&id(&b), std::slice::from_ref(&a.address))
        .await
        .unwrap();
    let reports = reported(s).await;
    assert_eq!(
        reports[&a.address],
        BTreeSet::from([b.address.clone(), c.address.clone()])
    );
    assert_eq!(reports[&b.address], BTreeSet::from([a.address.clone()]));
    assert!(reports[&c.address].is_empty());
    // A report replaces the previous one.
    s.report_unreachable(&id(&a), std::slice::from_ref(&c.address))
        .await
        .unwrap();
    assert_eq!(
        reported(s).await[&a.address],
        BTreeSet::from([c.address.clone()])
    );
    // Another incarnation at the address cannot report for it.
    let stale = RunnerId::new(a.address.clone(), Incarnation::from_raw(777));
    s.report_unreachable(&stale, &[]).await.unwrap();
    assert_eq!(
        reported(s).await[&a.address],
        BTreeSet::from([c.address.clone()])
    );
    // Registering again in the same incarnation keeps the reports; a new incarnation (after
    // the previous one unregistered) starts with none.
    s.register(&a, id(&a).incarnation, true, LONG)
        .await
        .unwrap();
    assert_eq!(
        reported(s).await[&a.address],
        BTreeSet::from([c.address.clone()])
    );
    s.unregister(&id(&a)).await.unwrap();
    s.register(&a, Incarnation::from_raw(777), true, LONG)
        .await
        .unwrap();
    assert!(reported(s).await[&a.address].is_empty());
    // A unix-socket address survives the round trip.
    let unix = RunnerAddress::unix("/tmp/shoal reachability.sock").unwrap();
    s.report_unreachable(&id(&b), std::slice::from_ref(&unix))
        .await
        .unwrap();
    assert_eq!(reported(s).await[&b.address], BTreeSet::from([unix]));
}

pub async fn heartbeat_expiry_hides_runner(env: &Env) {
    let s = &*env.storage;
    let (a, b) = (runner(1), runner(2));
    s.register(&a, id(&a).incarnation, true, SHORT)
        .await
        .unwrap();
    s.register(&b, id(&b).incarnation, true, SHORT)
        .await
        .unwrap();
    // b keeps its heartbeat going through refresh (also with no shards).
    s.refresh(&id(&b), &[], LONG).await.unwrap();
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
    s.register(&a, id(&a).incarnation, true, LONG)
        .await
        .unwrap();
    let held = s.acquire(&id(&a), &shards(1..=3), LONG).await.unwrap();
    assert_eq!(ids(&held), BTreeSet::from([1, 2, 3]));
    assert!(held.iter().all(|h| h.epoch == Epoch(1)), "{held:?}");
    let owners = owners(s).await;
    assert_eq!(owners.len(), 3);
    assert!(
        owners
            .values()
            .all(|(o, e)| *o == a.address && *e == Epoch(1))
    );
    // Asking again for what it holds grants them again, under new epochs (the runner asks only
    // for shards it does not serve: whatever ran under the old epoch must be fenced).
    let again = s.acquire(&id(&a), &shards(1..=3), LONG).await.unwrap();
    assert_eq!(epochs(&again), BTreeMap::from([(1, 2), (2, 2), (3, 2)]));
    // Nothing asked, nothing returned.
    assert!(s.acquire(&id(&a), &[], LONG).await.unwrap().is_empty());
}

pub async fn acquire_refused_while_another_lease_is_live(env: &Env) {
    let s = &*env.storage;
    let (a, b) = (runner(1), runner(2));
    s.acquire(&id(&a), &shards([1, 2]), LONG).await.unwrap();
    let got = s.acquire(&id(&b), &shards([1, 2, 3]), LONG).await.unwrap();
    assert_eq!(ids(&got), BTreeSet::from([3]));
    let owners = owners(s).await;
    assert_eq!(owners[&1].0, a.address);
    assert_eq!(owners[&2].0, a.address);
    assert_eq!(owners[&3].0, b.address);
    // b's refresh does not report or extend a's shards.
    let refreshed = s.refresh(&id(&b), &shards([1, 2, 3]), LONG).await.unwrap();
    assert_eq!(ids(&refreshed), BTreeSet::from([3]));
}

pub async fn takeover_after_expiry(env: &Env) {
    let s = &*env.storage;
    let (a, b) = (runner(1), runner(2));
    let first = s.acquire(&id(&a), &shards([1, 2]), SHORT).await.unwrap();
    assert_eq!(epochs(&first), BTreeMap::from([(1, 1), (2, 1)]));
    // While live, b gets nothing.
    assert!(
        s.acquire(&id(&b), &shards([1, 2]), LONG)
            .await
            .unwrap()
            .is_empty()
    );
    outlive_short().await;
    let taken = s.acquire(&id(&b), &shards([1, 2]), LONG).await.unwrap();
    assert_eq!(epochs(&taken), BTreeMap::from([(1, 2), (2, 2)]));
    // a learns on its next refresh that it lost them.
    assert!(
        s.refresh(&id(&a), &shards([1, 2]), LONG)
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
    let held = s.acquire(&id(&a), &shards([1, 2]), SHORT).await.unwrap();
    // Refresh with a longer TTL: both still held, same epochs; a shard a never acquired is not
    // reported.
    let refreshed = s.refresh(&id(&a), &shards([1, 2, 3]), LONG).await.unwrap();
    assert_eq!(epochs(&refreshed), epochs(&held));
    outlive_short().await;
    // Past the original expiry the leases are still live: b cannot take them.
    assert!(
        s.acquire(&id(&b), &shards([1, 2]), LONG)
            .await
            .unwrap()
            .is_empty()
    );
    let again = s.refresh(&id(&a), &shards([1, 2]), LONG).await.unwrap();
    assert_eq!(epochs(&again), epochs(&held));
}

pub async fn refresh_does_not_renew_a_lapsed_lease(env: &Env) {
    let s = &*env.storage;
    let a = runner(1);
    s.acquire(&id(&a), &shards([1]), SHORT).await.unwrap();
    outlive_short().await;
    // Nobody took it, but it lapsed: refresh must not revive it.
    assert!(
        s.refresh(&id(&a), &shards([1]), LONG)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(owners(s).await.is_empty());
    // Acquiring it again is a new grant, under a new epoch.
    let again = s.acquire(&id(&a), &shards([1]), LONG).await.unwrap();
    assert_eq!(epochs(&again), BTreeMap::from([(1, 2)]));
}

pub async fn release_hands_over_at_once(env: &Env) {
    let s = &*env.storage;
    let (a, b) = (runner(1), runner(2));
    s.acquire(&id(&a), &shards([1, 2]), LONG).await.unwrap();
    s.release(&id(&a), &shards([1])).await.unwrap();
    let taken = s.acquire(&id(&b), &shards([1, 2]), LONG).await.unwrap();
    assert_eq!(epochs(&taken), BTreeMap::from([(1, 2)]));
    // a releasing a shard it no longer holds changes nothing.
    s.release(&id(&a), &shards([1])).await.unwrap();
    let owners = owners(s).await;
    assert_eq!(owners[&1], (b.address.clone(), Epoch(2)));
    assert_eq!(owners[&2], (a.address.clone(), Epoch(1)));
    // a's refresh reports only what it still holds.
    let refreshed = s.refresh(&id(&a), &shards([1, 2]), LONG).await.unwrap();
    assert_eq!(epochs(&refreshed), BTreeMap::from([(2, 1)]));
    // Releasing nothing is fine.
    s.release(&id(&a), &[]).await.unwrap();
}

pub async fn release_all_hands_over_at_once(env: &Env) {
    let s = &*env.storage;
    let (a, b) = (runner(1), runner(2));
    s.acquire(&id(&a), &shards(1..=5), LONG).await.unwrap();
    s.acquire(&id(&b), &shards([6]), LONG).await.unwrap();
    s.release_all(&id(&a)).await.unwrap();
    assert_eq!(owners(s).await.keys().copied().collect::<Vec<_>>(), vec![6]);
    let taken = s.acquire(&id(&b), &shards(1..=6), LONG).await.unwrap();
    // Every shard granted under a new epoch (also the one b held).
    let expected: BTreeMap<u32, u64> = (1..=6).map(|i| (i, 2)).collect();
    assert_eq!(epochs(&taken), expected);
}

pub async fn epochs_never_go_back(env: &Env) {
    let s = &*env.storage;
    let (a, b) = (runner(1), runner(2));
    let one = [shard(1)];
    let mut seen = Vec::new();
    let mut grant = async |who: &Runner, ttl| {
        let held = s.acquire(&id(who), &one, ttl).await.unwrap();
        assert_eq!(held.len(), 1);
        seen.push(held[0].epoch.0);
    };
    grant(&a, LONG).await; // 1
    grant(&a, LONG).await; // 2: granted again while held live
    s.release(&id(&a), &one).await.unwrap();
    grant(&a, LONG).await; // 3: same runner after release
    s.release_all(&id(&a)).await.unwrap();
    grant(&b, SHORT).await; // 4: another runner
    outlive_short().await;
    grant(&b, LONG).await; // 5: same runner after a lapse
    s.release(&id(&b), &one).await.unwrap();
    grant(&a, LONG).await; // 6
    assert_eq!(seen, vec![1, 2, 3, 4, 5, 6]);
}

pub async fn acquire_returns_only_requested_shards(env: &Env) {
    let s = &*env.storage;
    let a = runner(1);
    s.acquire(&id(&a), &shards(1..=5), LONG).await.unwrap();
    let got = s.acquire(&id(&a), &shards([6]), LONG).await.unwrap();
    assert_eq!(ids(&got), BTreeSet::from([6]));
    let refreshed = s.refresh(&id(&a), &shards([2, 6]), LONG).await.unwrap();
    assert_eq!(ids(&refreshed), BTreeSet::from([2, 6]));
    // Shards of another group are other shards.
    let other: ShardId = "other:1".parse().unwrap();
    let got = s
        .acquire(&id(&a), std::slice::from_ref(&other), LONG)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].shard, other);
}

pub async fn leases_lists_live_leases_only(env: &Env) {
    let s = &*env.storage;
    let (a, b) = (runner(1), runner(2));
    s.acquire(&id(&a), &shards([1, 2]), LONG).await.unwrap();
    s.acquire(&id(&b), &shards([3]), SHORT).await.unwrap();
    s.acquire(&id(&b), &shards([4]), LONG).await.unwrap();
    s.release(&id(&a), &shards([2])).await.unwrap();
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

pub async fn leases_tell_their_time_left(env: &Env) {
    let s = &*env.storage;
    let (a, b) = (runner(1), runner(2));
    s.acquire(&id(&a), &shards([1]), LONG).await.unwrap();
    s.acquire(&id(&b), &shards([2]), SHORT).await.unwrap();
    let left: BTreeMap<u32, Duration> = s
        .leases()
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.shard.id(), l.expires_in))
        .collect();
    // Never more than granted, never zero for a listed lease; the short one ends first.
    assert!(left[&1] > Duration::ZERO && left[&1] <= LONG, "{left:?}");
    assert!(left[&2] > Duration::ZERO && left[&2] <= SHORT, "{left:?}");
    assert!(left[&2] < left[&1], "{left:?}");
    // A refresh gives the full time again.
    s.refresh(&id(&b), &shards([2]), LONG).await.unwrap();
    let refreshed = s
        .leases()
        .await
        .unwrap()
        .into_iter()
        .find(|l| l.shard.id() == 2)
        .map(|l| l.expires_in);
    assert!(
        refreshed.is_some_and(|d| d > SHORT && d <= LONG),
        "{refreshed:?}"
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
    s.register(&a, id(&a).incarnation, true, LONG)
        .await
        .unwrap();
    other
        .register(&b, id(&b).incarnation, true, LONG)
        .await
        .unwrap();
    // Each prefix has its own machine ids.
    let ma = s
        .lease_machine_id(id(&a).incarnation, now_ms(), LONG)
        .await
        .unwrap();
    let mb = other
        .lease_machine_id(id(&b).incarnation, now_ms(), LONG)
        .await
        .unwrap();
    assert_eq!(ma.machine_id, mb.machine_id);
    let mine = s.acquire(&id(&a), &shards([1]), LONG).await.unwrap();
    let theirs = other.acquire(&id(&b), &shards([1]), LONG).await.unwrap();
    assert_eq!(epochs(&mine), BTreeMap::from([(1, 1)]));
    assert_eq!(epochs(&theirs), BTreeMap::from([(1, 1)]));
    assert_eq!(listed(s).await.keys().collect::<Vec<_>>(), vec![&a.address]);
    assert_eq!(
        listed(&*other).await.keys().collect::<Vec<_>>(),
        vec![&b.address]
    );
    assert_eq!(owners(s).await[&1].0, a.address);
    assert_eq!(owners(&*other).await[&1].0, b.address);
    s.release_all(&id(&a)).await.unwrap();
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
    again
        .register(&a, id(&a).incarnation, true, LONG)
        .await
        .unwrap();
    assert_eq!(listed(&*env.storage).await.len(), 1);
}
