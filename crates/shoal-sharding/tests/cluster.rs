//! Several runners in one process: assignment, joins, graceful stops, crashes, lock-storage
//! faults, singletons, client-only processes and shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use shoal_protocol::ShardGroup;
use shoal_sharding::{CallErrorKind, CallOptions, Sharding, TransportError};
use shoal_storage::RunnerStorage;
use shoal_storage::testing::{Fault, FaultyRunnerStorage};
use tokio::time::Instant;

/// The journal key of a test on one backend (the tests of this binary share one process, and
/// each runs on two backends).
fn key(backend: Backend, name: &str) -> String {
    format!("{name}-{backend:?}").to_lowercase()
}

async fn increment_all(runner: &Sharding, prefix: &str, ids: usize) {
    let counters = runner.client::<Counter>();
    let calls = (0..ids).map(|i| {
        let counters = counters.clone();
        let id = format!("{prefix}/{i}");
        async move { counters.call(&id, Increment { by: 1, work_ms: 0 }).await }
    });
    for result in futures::future::join_all(calls).await {
        if let Err(e) = result {
            panic!("call failed: {e:?}");
        }
    }
}

fn runners_that_served(key: &str) -> std::collections::HashSet<String> {
    journal(key)
        .entries
        .lock()
        .iter()
        .map(|e| e.runner.to_string())
        .collect()
}

/// No entity ever ran handlers on two runners at overlapping times.
fn assert_no_overlap(key: &str) {
    let mut entries = journal(key).entries.lock().clone();
    entries.sort_by_key(|e| (e.entity.clone(), e.start));
    for pair in entries.windows(2) {
        if pair[0].entity == pair[1].entity && pair[0].runner != pair[1].runner {
            assert!(
                pair[0].end <= pair[1].start,
                "entity {} ran on {} until {:?} and on {} from {:?}",
                pair[0].entity,
                pair[0].runner,
                pair[0].end,
                pair[1].runner,
                pair[1].start
            );
        }
    }
}

async fn three_runners_own_every_shard_once_and_a_fourth_takes_its_share(backend: Backend) {
    let join = key(backend, "join");
    let mut cluster = Cluster::new(backend).await;
    let config = config_for(backend).build().unwrap();
    let a = cluster.runner(config.clone()).await;
    let b = cluster.runner(config.clone()).await;
    let c = cluster.runner(config.clone()).await;
    wait_balanced(&[&a, &b, &c], 60).await;
    eventually(Duration::from_secs(10), "20 shards each", || {
        [&a, &b, &c].iter().all(|r| r.active_shards().len() == 20)
    })
    .await;
    increment_all(&a, &join, 300).await;
    assert_eq!(runners_that_served(&join).len(), 3);

    let d = cluster.runner(config.clone()).await;
    wait_balanced(&[&a, &b, &c, &d], 60).await;
    eventually(Duration::from_secs(10), "15 shards each", || {
        [&a, &b, &c, &d]
            .iter()
            .all(|r| r.active_shards().len() == 15)
    })
    .await;
    increment_all(&b, &join, 300).await;
    assert_eq!(runners_that_served(&join).len(), 4);
    assert_no_overlap(&join);
    for r in [a, b, c, d] {
        r.shutdown().await;
    }
}

async fn a_graceful_stop_hands_shards_off_without_waiting_for_expiry(backend: Backend) {
    let handoff = key(backend, "handoff");
    let mut cluster = Cluster::new(backend).await;
    // A long lease: if the handoff waited for expiry, the test would see it.
    let config = config_for(backend)
        .lease_ttl(Duration::from_secs(30))
        .storage_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let a = cluster.runner(config.clone()).await;
    let b = cluster.runner(config.clone()).await;
    let c = cluster.runner(config.clone()).await;
    wait_balanced(&[&a, &b, &c], 60).await;

    // Slow requests in flight on c's entities while it stops: they complete.
    let c_shards = c.active_shards();
    let ids: Vec<String> = (0..200)
        .map(|i| format!("{handoff}/{i}"))
        .filter(|id| c_shards.contains(&c.shard_of::<Counter>(&id.as_str().try_into().unwrap())))
        .take(5)
        .collect();
    assert!(!ids.is_empty(), "c holds {:?}", c_shards);
    let in_flight: Vec<_> = ids
        .iter()
        .map(|id| {
            let client = a.client::<Counter>();
            let id = id.clone();
            tokio::spawn(async move {
                client
                    .call(
                        &id,
                        Increment {
                            by: 1,
                            work_ms: 300,
                        },
                    )
                    .await
            })
        })
        .collect();
    eventually(Duration::from_secs(5), "slow requests started", || {
        journal(&handoff).activations.load(Ordering::SeqCst) >= ids.len()
    })
    .await;

    let stopped_at = Instant::now();
    c.shutdown().await;
    for call in in_flight {
        assert_eq!(call.await.unwrap().unwrap(), 1, "in-flight call completes");
    }
    wait_balanced(&[&a, &b], 60).await;
    let took = stopped_at.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "handoff took {took:?}; the lease TTL is 30s"
    );
    increment_all(&a, &handoff, 100).await;
    assert_no_overlap(&handoff);
    a.shutdown().await;
    b.shutdown().await;
}

async fn a_crashed_runners_shards_move_after_its_leases_expire(backend: Backend) {
    let crash = key(backend, "crash");
    let mut cluster = Cluster::new(backend).await;
    let config = config_for(backend)
        .lease_ttl(Duration::from_millis(1500))
        .build()
        .unwrap();
    let a = cluster.runner(config.clone()).await;
    let b = cluster.runner(config.clone()).await;
    let c = cluster.runner(config.clone()).await;
    wait_balanced(&[&a, &b, &c], 60).await;
    increment_all(&a, &crash, 100).await;

    let orphaned = c.active_shards();
    let crashed_at = Instant::now();
    c.crash();
    // Its leases stay live (nobody may take the shards) until they expire.
    let c_address = c.runner_address().unwrap().clone();
    let leases = cluster.storage.leases().await.unwrap();
    for shard in &orphaned {
        let owner = leases.iter().find(|l| &l.shard == shard).map(|l| &l.owner);
        assert_eq!(
            owner,
            Some(&c_address),
            "lease of {shard} right after the crash"
        );
    }
    wait_balanced(&[&a, &b], 60).await;
    let took = crashed_at.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "shards moved after {took:?}, before the lease could expire"
    );
    // Calls to every entity succeed again.
    increment_all(&b, &crash, 100).await;
    assert_no_overlap(&crash);
    a.shutdown().await;
    b.shutdown().await;
}

async fn lock_storage_fault(backend: Backend, fault: Fault) {
    let key = key(backend, &format!("fault-{fault:?}"));
    let mut cluster = Cluster::new(backend).await;
    let config = config_for(backend).build().unwrap();
    let faulty = Arc::new(FaultyRunnerStorage::new(cluster.storage.clone()));
    let a_address = cluster.next_address();
    let a = cluster
        .runner_at(
            a_address,
            config.clone(),
            faulty.clone() as Arc<dyn RunnerStorage>,
        )
        .await;
    let b = cluster.runner(config.clone()).await;
    let c = cluster.runner(config.clone()).await;
    wait_balanced(&[&a, &b, &c], 60).await;
    increment_all(&b, &key, 120).await;
    assert!(a.active_entity_count() > 0);

    let faulted_at = Instant::now();
    faulty.set_fault(fault);
    eventually(Duration::from_secs(5), "a stopped its entities", || {
        a.active_shards().is_empty() && a.active_entity_count() == 0
    })
    .await;
    let stopped_after = faulted_at.elapsed();
    // It stopped before its leases could expire: the last refresh succeeded at most one refresh
    // interval before the fault, so the leases live at least TTL minus that interval after it.
    let bound = config.lease_ttl() - config.effective_refresh_interval();
    assert!(
        stopped_after < bound,
        "stopped after {stopped_after:?}, leases could expire after {bound:?}"
    );

    // The others take a's shards once they expire, and keep working.
    wait_balanced(&[&b, &c], 60).await;
    increment_all(&c, &key, 120).await;

    // Storage recovers: a rejoins and gets shards again.
    faulty.set_fault(Fault::None);
    wait_balanced(&[&a, &b, &c], 60).await;
    eventually(Duration::from_secs(10), "a holds its share again", || {
        a.active_shards().len() == 20
    })
    .await;
    increment_all(&a, &key, 120).await;
    assert_no_overlap(&key);
    for r in [a, b, c] {
        r.shutdown().await;
    }
}

async fn failing_lock_storage_stops_entities_before_leases_expire(backend: Backend) {
    lock_storage_fault(backend, Fault::Fail).await;
}

async fn hanging_lock_storage_stops_entities_before_leases_expire(backend: Backend) {
    lock_storage_fault(backend, Fault::Hang).await;
}

async fn a_singleton_runs_on_exactly_one_runner_and_moves_when_it_dies(backend: Backend) {
    let mut cluster = Cluster::new(backend).await;
    let config = config_for(backend).build().unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let max_running = Arc::new(AtomicUsize::new(0));
    let starts = Arc::new(AtomicUsize::new(0));

    struct Guard(Arc<AtomicUsize>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    let mut runners = Vec::new();
    for _ in 0..3 {
        let r = cluster.runner(config.clone()).await;
        let (running, max_running, starts) = (running.clone(), max_running.clone(), starts.clone());
        r.register_singleton("leader", ShardGroup::default_group(), move |ctx| {
            let (running, max_running, starts) =
                (running.clone(), max_running.clone(), starts.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                max_running.fetch_max(now, Ordering::SeqCst);
                starts.fetch_add(1, Ordering::SeqCst);
                let _guard = Guard(running);
                ctx.cancelled().await;
            }
        })
        .unwrap();
        runners.push(r);
    }
    let refs: Vec<&Sharding> = runners.iter().collect();
    wait_balanced(&refs, 60).await;
    eventually(Duration::from_secs(5), "singleton started", || {
        starts.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert_eq!(running.load(Ordering::SeqCst), 1);

    // Crash the holder: the singleton restarts elsewhere.
    let id = "leader".try_into().unwrap();
    let holder = runners
        .iter()
        .position(|r| r.holds(&r.shard_in(&ShardGroup::default_group(), &id)))
        .unwrap();
    let crashed = runners.remove(holder);
    crashed.crash();
    eventually(Duration::from_secs(10), "singleton restarted", || {
        starts.load(Ordering::SeqCst) >= 2 && running.load(Ordering::SeqCst) == 1
    })
    .await;
    // Stop the new holder gracefully: it moves again.
    let holder = runners
        .iter()
        .position(|r| r.holds(&r.shard_in(&ShardGroup::default_group(), &id)))
        .unwrap();
    let stopping = runners.remove(holder);
    stopping.shutdown().await;
    eventually(Duration::from_secs(10), "singleton restarted again", || {
        starts.load(Ordering::SeqCst) >= 3 && running.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(max_running.load(Ordering::SeqCst), 1, "never two at once");
    for r in runners {
        r.shutdown().await;
    }
}

async fn a_client_only_process_sends_to_every_runner(backend: Backend) {
    let client_key = key(backend, "client");
    let mut cluster = Cluster::new(backend).await;
    let config = config_for(backend).build().unwrap();
    let a = cluster.runner(config.clone()).await;
    let b = cluster.runner(config.clone()).await;
    wait_balanced(&[&a, &b], 60).await;
    let client = cluster.client(config.clone()).await;
    assert!(client.active_shards().is_empty());
    assert_eq!(client.runner_address(), None);
    increment_all(&client, &client_key, 100).await;
    assert_eq!(runners_that_served(&client_key).len(), 2);
    // The client holds no shards and appears in no lease.
    assert!(client.cluster_view().runners.len() == 2);
    client.shutdown().await;
    a.shutdown().await;
    b.shutdown().await;
}

async fn calls_fail_fast_during_shutdown_and_shutdown_is_bounded(backend: Backend) {
    let bounded = key(backend, "bounded");
    let mut cluster = Cluster::new(backend).await;
    let config = config_for(backend).build().unwrap();
    let a = cluster.runner(config.clone()).await;
    wait_balanced(&[&a], 60).await;
    increment_all(&a, &bounded, 20).await;
    // A long request in flight; the termination timeout (2 s) bounds the wait for it.
    let client = a.client::<Counter>();
    let slow_id = format!("{bounded}/slow");
    let slow = tokio::spawn(async move {
        client
            .call(
                &slow_id,
                Increment {
                    by: 1,
                    work_ms: 60_000,
                },
            )
            .await
    });
    eventually(Duration::from_secs(5), "slow request started", || {
        journal(&bounded).activations.load(Ordering::SeqCst) >= 21
    })
    .await;
    let started = Instant::now();
    a.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
    let err = slow.await.unwrap().unwrap_err();
    assert!(matches!(err.kind(), CallErrorKind::Interrupted), "{err:?}");
    let err = a
        .client::<Counter>()
        .call(&format!("{bounded}/x"), Get)
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), CallErrorKind::ShuttingDown), "{err:?}");
}

async fn unreachable_runner_gives_runner_unavailable_then_recovers(backend: Backend) {
    let mut cluster = Cluster::new(backend).await;
    let config = config_for(backend).build().unwrap();
    let a = cluster.runner(config.clone()).await;
    let b = cluster.runner(config.clone()).await;
    wait_balanced(&[&a, &b], 60).await;
    // An id that b owns.
    let id = (0..)
        .map(|i| format!("unreach/{i}"))
        .find(|id| b.holds(&b.shard_of::<Counter>(&id.as_str().try_into().unwrap())))
        .unwrap();
    cluster.network.disconnect(b.runner_address().unwrap());
    let err = a
        .client::<Counter>()
        .call_with(&id, Get, CallOptions::timeout(Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), CallErrorKind::RunnerUnavailable { .. }),
        "{err:?}"
    );
    // The transport's error is the cause.
    let cause = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<TransportError>());
    assert!(
        matches!(cause, Some(TransportError::Unreachable { .. })),
        "{err:?}"
    );
    cluster.network.reconnect(b.runner_address().unwrap());
    assert_eq!(a.client::<Counter>().call(&id, Get).await.unwrap(), 0);
    a.shutdown().await;
    b.shutdown().await;
}

on_every_backend!(
    three_runners_own_every_shard_once_and_a_fourth_takes_its_share,
    a_graceful_stop_hands_shards_off_without_waiting_for_expiry,
    a_crashed_runners_shards_move_after_its_leases_expire,
    failing_lock_storage_stops_entities_before_leases_expire,
    hanging_lock_storage_stops_entities_before_leases_expire,
    a_singleton_runs_on_exactly_one_runner_and_moves_when_it_dies,
    a_client_only_process_sends_to_every_runner,
    calls_fail_fast_during_shutdown_and_shutdown_is_bounded,
    unreachable_runner_gives_runner_unavailable_then_recovers,
);
