//! Runners the others cannot reach, and owners that freeze with requests in flight: the shards
//! move within a bound set by the lease and the probes, not by the callers' deadlines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Backend, Cluster, Counter, Get, config_for, counter_definition, eventually};
use shoal_protocol::RunnerAddress;
use shoal_sharding::{CallErrorKind, CallOptions, PingHealth, Sharding, ShardingConfig, Transport};
use shoal_storage::RunnerStorage;
use shoal_storage::testing::{Fault, FaultyRunnerStorage};

const SHARDS: usize = 60;

fn config(backend: Backend) -> ShardingConfig {
    config_for(backend)
        .health_check_interval(Duration::from_millis(100))
        .build()
        .unwrap()
}

/// A runner that probes the others over the in-process network.
async fn runner(
    cluster: &Cluster,
    address: RunnerAddress,
    config: ShardingConfig,
    storage: Arc<dyn RunnerStorage>,
) -> Sharding {
    let transport: Arc<dyn Transport> = cluster.network.clone();
    let health = PingHealth::new(transport)
        .attempts(1)
        .timeout(config.health_check_interval());
    Sharding::builder(config)
        .storage(storage)
        .in_process(&cluster.network)
        .health(Arc::new(health))
        .runner(address)
        .entity(counter_definition())
        .start()
        .await
        .expect("runner starts")
}

fn held(runners: &[&Sharding]) -> Vec<usize> {
    runners.iter().map(|r| r.active_shards().len()).collect()
}

/// An entity id whose shard `owner` holds.
fn id_held_by(owner: &Sharding, test: &str) -> String {
    (0..10_000)
        .map(|i| format!("{test}-{i}"))
        .find(|id| {
            owner
                .active_shards()
                .contains(&owner.shard_of::<Counter>(&id.as_str().try_into().unwrap()))
        })
        .expect("the owner holds some shard")
}

/// Runner `c` still reaches storage (so it keeps renewing its leases) but the others cannot
/// reach it: they report it, the quorum cuts it off, it hands its shards off, and its entities
/// answer from the others. When it is reachable again it gets its share back.
async fn a_runner_the_others_cannot_reach_hands_its_shards_off(backend: Backend) {
    let mut cluster = Cluster::new(backend).await;
    let config = config(backend);
    let (a, b, c) = {
        let mut started = Vec::new();
        for _ in 0..3 {
            let address = cluster.next_address();
            started.push(runner(&cluster, address, config.clone(), cluster.storage.clone()).await);
        }
        let mut started = started.into_iter();
        (
            started.next().unwrap(),
            started.next().unwrap(),
            started.next().unwrap(),
        )
    };
    common::wait_balanced(&[&a, &b, &c], SHARDS).await;
    let cut_off = c.runner_address().unwrap().clone();
    let id = id_held_by(&c, "partition");

    cluster.network.disconnect(&cut_off);
    eventually(
        Duration::from_secs(20),
        "the cut-off runner handed every shard to the others",
        || held(&[&a, &b, &c]) == [SHARDS / 2, SHARDS / 2, 0],
    )
    .await;
    // Its entities answer from the others.
    let value = a.client::<Counter>().call(&id, Get).await;
    assert!(value.is_ok(), "{value:?}");

    cluster.network.reconnect(&cut_off);
    common::wait_balanced(&[&a, &b, &c], SHARDS).await;
    for r in [a, b, c] {
        r.shutdown().await;
    }
}

/// Two runners that cannot reach each other: which one is cut off cannot be decided, so neither
/// is, and nothing moves.
async fn two_runners_never_evict_each_other(backend: Backend) {
    let mut cluster = Cluster::new(backend).await;
    let config = config(backend);
    let first = cluster.next_address();
    let a = runner(&cluster, first, config.clone(), cluster.storage.clone()).await;
    let second = cluster.next_address();
    let b = runner(&cluster, second, config.clone(), cluster.storage.clone()).await;
    common::wait_balanced(&[&a, &b], SHARDS).await;
    cluster.network.disconnect(a.runner_address().unwrap());
    cluster.network.disconnect(b.runner_address().unwrap());
    // Both report the other (two failed probes each), which is no quorum either way.
    eventually(Duration::from_secs(20), "both report each other", || {
        let view = a.cluster_view();
        view.runners.len() == 2 && view.runners.iter().all(|r| r.unreachable.len() == 1)
    })
    .await;
    // Ten more assignment rounds on each runner change nothing.
    let (from_a, from_b) = (a.cluster_view().rounds, b.cluster_view().rounds);
    eventually(Duration::from_secs(20), "ten more rounds", || {
        a.cluster_view().rounds >= from_a + 10 && b.cluster_view().rounds >= from_b + 10
    })
    .await;
    assert_eq!(held(&[&a, &b]), [SHARDS / 2, SHARDS / 2]);
    a.shutdown().await;
    b.shutdown().await;
}

/// The owner freezes (its server and its lease renewals stop) while a volatile call waits for
/// its answer: once the shard is taken over, the call fails with `RunnerUnavailable` (its outcome
/// is unknown) instead of waiting out its 60 s deadline, and the entity answers on the new owner.
async fn a_volatile_call_to_a_frozen_owner_fails_once_its_shard_moves(backend: Backend) {
    let mut cluster = Cluster::new(backend).await;
    let config = config(backend);
    let frozen_storage = Arc::new(FaultyRunnerStorage::new(cluster.storage.clone()));
    let frozen_at = cluster.next_address();
    let a = runner(
        &cluster,
        frozen_at.clone(),
        config.clone(),
        frozen_storage.clone(),
    )
    .await;
    let other = cluster.next_address();
    let b = runner(&cluster, other, config.clone(), cluster.storage.clone()).await;
    common::wait_balanced(&[&a, &b], SHARDS).await;
    let client = cluster.client(config.clone()).await;
    let id = id_held_by(&a, "frozen");

    cluster.network.freeze(&frozen_at);
    let caller = client.clone();
    let call_id = id.clone();
    let call = tokio::spawn(async move {
        caller
            .client::<Counter>()
            .call_with(&call_id, Get, CallOptions::timeout(Duration::from_secs(60)))
            .await
    });
    frozen_storage.set_fault(Fault::Hang);
    let result = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the call ends long before its deadline")
        .unwrap();
    assert!(
        matches!(&result, Err(e) if matches!(e.kind(), CallErrorKind::RunnerUnavailable { .. })),
        "{result:?}"
    );
    eventually(Duration::from_secs(20), "b holds every shard", || {
        b.active_shards().len() == SHARDS
    })
    .await;
    let value = client.client::<Counter>().call(&id, Get).await;
    assert!(value.is_ok(), "{value:?}");
    // The frozen owner stopped serving before its leases could be taken.
    assert!(a.active_shards().is_empty());

    frozen_storage.set_fault(Fault::None);
    cluster.network.thaw(&frozen_at);
    client.shutdown().await;
    a.crash();
    b.shutdown().await;
}

on_every_backend!(
    a_runner_the_others_cannot_reach_hands_its_shards_off,
    two_runners_never_evict_each_other,
    a_volatile_call_to_a_frozen_owner_fails_once_its_shard_moves,
);
