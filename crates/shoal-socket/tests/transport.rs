//! Runners talking over real sockets (TCP on 127.0.0.1 and Unix sockets), each in its own tokio
//! runtime: routing, failover after a kill, client-only processes, limits and bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use shoal_sharding::{CallErrorKind, CallOptions};
use shoal_socket::{ListenAddress, SendMode, SocketConfig, SocketRunner};
use shoal_storage::{MemoryRunnerStorage, RunnerStorage};

#[derive(Clone, Copy, Debug)]
enum Net {
    Tcp,
    Unix,
}

fn listen(net: Net, dir: &tempfile::TempDir, n: usize) -> ListenAddress {
    match net {
        Net::Tcp => "127.0.0.1:0".parse().unwrap(),
        Net::Unix => ListenAddress::Unix(dir.path().join(format!("runner-{n}.sock"))),
    }
}

/// Settings for runners on Postgres storage (a little more time per storage call).
fn pg_config() -> shoal_sharding::ShardingConfig {
    fast_config()
        .storage_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

async fn cluster(
    net: Net,
    dir: &tempfile::TempDir,
    storage: &Arc<dyn RunnerStorage>,
    socket: &SocketConfig,
) -> Vec<RunnerProcess> {
    let mut runners = Vec::new();
    for n in 0..3 {
        runners.push(
            RunnerProcess::start(
                listen(net, dir, n),
                storage.clone(),
                pg_config(),
                socket.clone(),
            )
            .await
            .unwrap(),
        );
    }
    eventually(Duration::from_secs(15), "20 shards each", || {
        runners.iter().all(|r| r.active_shards() == 20)
    })
    .await;
    runners
}

async fn routes_1000_ids(net: Net) {
    let logs = capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let storage = postgres_storage().await;
    let socket = SocketConfig::default();
    let runners = cluster(net, &dir, &storage, &socket).await;

    // The bound addresses were logged as they are: hostname:port with the real port, or a path.
    let logged = logs.contents();
    for r in &runners {
        let expected = match net {
            Net::Tcp => format!("Listening on: {}", r.address),
            Net::Unix => format!("Listening on: {}", r.address.trim_start_matches("unix:")),
        };
        assert!(
            logged.contains(&expected),
            "missing {expected:?} in logs:\n{logged}"
        );
    }
    if let Net::Tcp = net {
        assert!(runners.iter().all(|r| !r.address.ends_with(":0")));
    }

    let client = SocketRunner::client_only(pg_config(), socket, storage)
        .await
        .unwrap();
    let counters = client.sharding().client::<Counter>();
    for round in 1..=2i64 {
        let results: Vec<i64> = futures::stream::iter(0..1000)
            .map(|i| {
                let counters = counters.clone();
                async move {
                    counters
                        .call(
                            &format!("id-{i}"),
                            Increment {
                                by: 1,
                                pad: String::new(),
                            },
                        )
                        .await
                        .unwrap()
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        assert!(
            results.iter().all(|&v| v == round),
            "round {round}: {results:?}"
        );
    }
    // Each id was served by the runner that holds its shard.
    for i in (0..1000).step_by(37) {
        let id = format!("id-{i}");
        let served_by = counters.call(&id, WhoAmI).await.unwrap();
        let shard = client
            .sharding()
            .shard_of::<Counter>(&id.as_str().try_into().unwrap());
        let holder = runners
            .iter()
            .find(|r| r.runner().sharding().holds(&shard))
            .unwrap();
        assert_eq!(served_by, holder.address);
    }
    client.shutdown().await;
    for r in runners {
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_runners_route_1000_ids_over_tcp() {
    routes_1000_ids(Net::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_runners_route_1000_ids_over_unix_sockets() {
    routes_1000_ids(Net::Unix).await;
}

async fn kill_and_recover(net: Net) {
    let dir = tempfile::tempdir().unwrap();
    let storage = postgres_storage().await;
    let socket = SocketConfig::default();
    let mut runners = cluster(net, &dir, &storage, &socket).await;
    let client = SocketRunner::client_only(pg_config(), socket, storage)
        .await
        .unwrap();
    let counters = client.sharding().client::<Counter>();
    // Warm up connections to every runner.
    for i in 0..100 {
        counters.call(&format!("k-{i}"), WhoAmI).await.unwrap();
    }
    let victim = runners.pop().unwrap();
    let victim_address = victim.address.clone();
    let id = (0..)
        .map(|i| format!("k-{i}"))
        .find(|id| {
            let shard = client
                .sharding()
                .shard_of::<Counter>(&id.as_str().try_into().unwrap());
            victim.runner().sharding().holds(&shard)
        })
        .unwrap();
    victim.kill();

    // Right after the kill, its shards still have live leases: callers get RunnerUnavailable.
    let err = counters
        .call_with(
            &id,
            WhoAmI,
            CallOptions::timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), CallErrorKind::RunnerUnavailable { runner: Some(r) } if r.to_string() == victim_address),
        "{err:?}"
    );
    // Once the leases expire the shards move and calls succeed again.
    let served_by = counters.call(&id, WhoAmI).await.unwrap();
    assert_ne!(served_by, victim_address);
    for i in 0..200 {
        counters.call(&format!("k-{i}"), WhoAmI).await.unwrap();
    }
    client.shutdown().await;
    for r in runners {
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runner_gives_runner_unavailable_then_shards_move_tcp() {
    kill_and_recover(Net::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runner_gives_runner_unavailable_then_shards_move_unix() {
    kill_and_recover(Net::Unix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_mode_works_too() {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn RunnerStorage> = Arc::new(MemoryRunnerStorage::new());
    let socket = SocketConfig {
        mode: SendMode::Unary,
        ..SocketConfig::default()
    };
    let runners = cluster(Net::Tcp, &dir, &storage, &socket).await;
    let client = SocketRunner::client_only(fast_config().build().unwrap(), socket, storage)
        .await
        .unwrap();
    let counters = client.sharding().client::<Counter>();
    for i in 0..100 {
        let v = counters
            .call(
                &format!("u-{i}"),
                Increment {
                    by: 2,
                    pad: String::new(),
                },
            )
            .await
            .unwrap();
        assert_eq!(v, 2);
    }
    client.shutdown().await;
    for r in runners {
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_loopback_is_logged_and_reached_in_brackets() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        // No IPv6 loopback on this machine: nothing to check.
        return;
    }
    let logs = capture_logs();
    let storage: Arc<dyn RunnerStorage> = Arc::new(MemoryRunnerStorage::new());
    let runner = RunnerProcess::start(
        "[::1]:0".parse().unwrap(),
        storage.clone(),
        fast_config().build().unwrap(),
        SocketConfig::default(),
    )
    .await
    .unwrap();
    assert!(runner.address.starts_with("[::1]:"), "{}", runner.address);
    let logged = logs.contents();
    assert!(
        logged.contains(&format!("Listening on: {}", runner.address)),
        "missing the bound address in logs:\n{logged}"
    );
    eventually(Duration::from_secs(10), "runner holds every shard", || {
        runner.active_shards() == 60
    })
    .await;
    let client = SocketRunner::client_only(
        fast_config().build().unwrap(),
        SocketConfig::default(),
        storage,
    )
    .await
    .unwrap();
    let served_by = client
        .sharding()
        .client::<Counter>()
        .call("v6", WhoAmI)
        .await
        .unwrap();
    assert_eq!(served_by, runner.address);
    client.shutdown().await;
    runner.shutdown().await;
}

/// A runner started with the same builder as an in-process one, given a socket network: it
/// serves over the socket while it runs, and stopping it stops its server (the port refuses
/// connections) after its shards are handed off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builder_starts_a_socket_runner_and_shutdown_stops_its_server() {
    use shoal_sharding::Sharding;
    use shoal_socket::{BindOptions, Bound, SocketNetwork};

    let storage: Arc<dyn RunnerStorage> = Arc::new(MemoryRunnerStorage::new());
    let network = SocketNetwork::bind(BindOptions::new("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let Some(Bound::Tcp(bound)) = network.bound() else {
        panic!("a TCP network is bound to a TCP port");
    };
    let runner = Sharding::builder(fast_config().build().unwrap())
        .storage(storage.clone())
        .network(network)
        .entity(definition())
        .start()
        .await
        .unwrap();
    let front = Sharding::builder(fast_config().build().unwrap())
        .storage(storage)
        .network(SocketNetwork::client_only(SocketConfig::default()).unwrap())
        .start()
        .await
        .unwrap();
    assert_eq!(front.runner_address(), None);
    let counters = front.client::<Counter>();
    for id in 0..20 {
        let value = counters
            .call(
                &format!("c-{id}"),
                Increment {
                    by: 1,
                    pad: String::new(),
                },
            )
            .await
            .unwrap();
        assert_eq!(value, 1, "served by the socket runner");
    }
    assert!(tokio::net::TcpStream::connect(bound).await.is_ok());

    runner.shutdown().await;
    assert!(
        tokio::net::TcpStream::connect(bound).await.is_err(),
        "the server stopped with the runtime"
    );
    front.shutdown().await;
}
