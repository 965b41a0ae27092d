//! Workers that die, hang or go away: in-flight calls fail with a clear error, the host starts
//! the worker again (with backoff) and later calls reach the new process; entity state kept in KV
//! survives.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{Hosted, alive, eventually, short_tempdir, test_worker_spec, unavailable_message};
use shoal_worker::{WorkerSpec, is_worker_unavailable};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_fails_calls_in_flight_and_the_worker_is_started_again() {
    let dir = short_tempdir();
    let hosted = Hosted::start(test_worker_spec(dir.path(), &[])).await;
    let first = hosted.pid();
    assert_eq!(hosted.call("a", "kv", "put n=41").await.unwrap(), "ok");

    // Two calls are running in the worker when it crashes.
    let stuck: Vec<_> = ["b", "c"]
        .into_iter()
        .map(|id| {
            let client = hosted.client("probe");
            tokio::spawn(async move {
                client
                    .call(id, "forever", bytes::Bytes::new(), Default::default())
                    .await
            })
        })
        .collect();
    eventually(|| async { hosted.call("z", "busy", "").await.unwrap() == "2" }).await;
    let crashed = hosted.call("d", "exit", "").await;

    // Every call in flight fails, saying the worker exited.
    let message = unavailable_message(crashed);
    assert!(
        message.starts_with(&format!("worker {} exited: ", hosted.host.name())),
        "{message}"
    );
    for call in stuck {
        match call.await.unwrap() {
            Err(error) if matches!(error.kind(), shoal_sharding::CallErrorKind::Persistence) => {
                let message = error.message();
                assert!(message.contains(" exited: "), "{message}");
                assert!(is_worker_unavailable(
                    &shoal_sharding::HandlerError::unavailable(message)
                ));
            }
            other => panic!("expected the call to fail with the worker, got {other:?}"),
        }
    }

    // A new worker process serves later calls; the entity's KV state survived.
    assert!(hosted.host.wait_connected(1).await);
    assert_eq!(hosted.host.restarts(), 1);
    let second = hosted.pid();
    assert_ne!(first, second);
    assert!(!alive(first));
    assert_eq!(hosted.call("a", "kv", "get n").await.unwrap(), "41");
    assert_eq!(
        hosted.call("b", "echo", "back").await.unwrap(),
        "probe/b back []"
    );

    // And again: every crash is followed by a restart.
    assert!(hosted.call("d", "exit", "").await.is_err());
    assert!(hosted.host.wait_connected(2).await);
    assert_ne!(hosted.pid(), second);
    assert_eq!(hosted.call("a", "kv", "get n").await.unwrap(), "41");
    hosted.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_restarts_are_retried_with_backoff_until_the_worker_starts() {
    let dir = short_tempdir();
    let marker = dir.path().join("started");
    let marker_arg = marker.to_str().unwrap().to_owned();
    // The worker starts once; while the marker file exists, every new start exits at once.
    let spec = test_worker_spec(dir.path(), &["--start-marker", &marker_arg]).options(
        common::fast_options()
            .request_timeout(Duration::from_secs(1))
            .restart_backoff(Duration::from_millis(10), Duration::from_millis(100)),
    );
    let hosted = Hosted::start(spec).await;
    assert!(marker.exists());
    common::kill(hosted.pid());

    // The host keeps trying: the worker log shows several refused starts.
    eventually(|| async {
        common::worker_log(dir.path())
            .matches("exiting at once")
            .count()
            >= 3
    })
    .await;
    assert!(!hosted.host.is_connected());
    // Calls wait for the worker within their timeout, then fail saying why.
    let message = unavailable_message(hosted.call("a", "echo", "x").await);
    assert!(
        message.contains("unavailable: it is restarting and did not come back within 1s"),
        "{message}"
    );

    // Once the worker can start again, the host reconnects.
    std::fs::remove_file(&marker).unwrap();
    assert!(hosted.host.wait_connected(1).await);
    assert_eq!(hosted.host.restarts(), 1);
    assert_eq!(hosted.call("a", "echo", "x").await.unwrap(), "probe/a x []");
    hosted.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_worker_is_killed_and_started_again() {
    let dir = short_tempdir();
    let spec = test_worker_spec(dir.path(), &[]).options(
        common::fast_options().heartbeat(Duration::from_millis(100), Duration::from_secs(1)),
    );
    let hosted = Hosted::start(spec).await;
    let hung = hosted.pid();

    // `freeze` blocks the worker's only thread: heartbeats go unanswered.
    let message = unavailable_message(hosted.call("f", "freeze", "").await);
    assert!(
        message.contains("did not answer a heartbeat within 1s"),
        "{message}"
    );
    assert!(hosted.host.wait_connected(1).await);
    assert_ne!(hosted.pid(), hung);
    eventually(|| async { !alive(hung) }).await;
    assert_eq!(
        hosted.call("f", "echo", "thawed").await.unwrap(),
        "probe/f thawed []"
    );
    hosted.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_with_the_same_command_share_one_worker() {
    let dir = short_tempdir();
    let one = Hosted::start(test_worker_spec(dir.path(), &[])).await;
    let two = Hosted::start(test_worker_spec(dir.path(), &[])).await;
    assert_eq!(one.pid(), two.pid());
    // Each runner has its own session and its own entities (and here its own KV storage).
    assert_eq!(one.call("a", "kv", "put k=one").await.unwrap(), "ok");
    assert_eq!(two.call("a", "kv", "get k").await.unwrap(), "<none>");
    assert_eq!(one.call("a", "kv", "get k").await.unwrap(), "one");
    // One runner going away leaves the other's session alone.
    two.stop().await;
    assert_eq!(
        one.call("a", "echo", "still").await.unwrap(),
        "probe/a still []"
    );
    one.stop().await;
}

/// Starts the test worker on `socket` by hand and waits for its announcement.
async fn start_worker_on(socket: &std::path::Path) -> tokio::process::Child {
    let mut child = tokio::process::Command::new(common::test_worker())
        .arg("--unix")
        .arg(socket)
        .arg("--idle-timeout")
        .arg("0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = BufReader::new(stdout).lines().next_line().await.unwrap();
    assert_eq!(line, Some(format!("UNIX:{}", socket.display())));
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_a_socket_is_reconnected_when_it_comes_back() {
    let dir = short_tempdir();
    let socket = dir.path().join("external.sock");
    let mut worker = start_worker_on(&socket).await;
    let spec = WorkerSpec::socket(&socket).options(
        common::fast_options()
            .restart_backoff(Duration::from_millis(10), Duration::from_millis(50)),
    );
    let hosted = Hosted::start(spec).await;
    assert_eq!(hosted.host.name(), socket.display().to_string());
    assert_eq!(hosted.call("a", "kv", "put v=1").await.unwrap(), "ok");

    // The worker goes away: calls in flight fail, and the host waits for the socket to answer.
    worker.kill().await.unwrap();
    eventually(|| async { !hosted.host.is_connected() }).await;
    let _ = std::fs::remove_file(&socket);

    // Someone starts it again on the same socket; the host reconnects by itself.
    let _worker = start_worker_on(&socket).await;
    assert!(hosted.host.wait_connected(1).await);
    assert_eq!(hosted.call("a", "kv", "get v").await.unwrap(), "1");
    hosted.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persisted_request_in_flight_is_delivered_again_to_the_new_worker() {
    let dir = short_tempdir();
    let hosted = Hosted::start(test_worker_spec(dir.path(), &[])).await;
    let first = hosted.pid();
    let tags = &hosted.host.entity_types()[0].tags;
    assert!(
        tags.iter()
            .any(|t| t.name.to_string() == "crash_once" && t.persisted)
    );

    // The first delivery crashes the worker; the caller does not see that attempt fail: the
    // request stays unprocessed and the restarted worker gets it, with the same request id.
    let marker = dir.path().join("crash-marker");
    let reply = hosted
        .call("p", "crash_once", marker.to_str().unwrap())
        .await
        .unwrap();
    let ids: Vec<&str> = reply.split(' ').collect();
    assert_eq!(ids.len(), 2, "{reply}");
    assert_eq!(ids[0], ids[1], "the redelivery keeps the request id");
    assert_eq!(hosted.host.restarts(), 1);
    assert_ne!(hosted.pid(), first);
    hosted.stop().await;
}
