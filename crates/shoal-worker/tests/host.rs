//! The worker host against real worker processes: describe, calls, concurrency, failures, entity
//! KV, and workers that cannot be hosted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Hosted, handler_message, short_tempdir, test_worker_spec, worker_log};
use futures::StreamExt;
use shoal_sharding::{CallErrorKind, CallOptions, TagKind};
use shoal_worker::{WorkerError, WorkerSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describes_the_worker_and_forwards_calls() {
    let dir = short_tempdir();
    let hosted = Hosted::start(test_worker_spec(dir.path(), &[])).await;

    let types = hosted.host.entity_types();
    assert_eq!(types.len(), 1);
    assert_eq!(types[0].name.to_string(), "probe");
    assert_eq!(types[0].concurrency, Some(1));
    let ticks = types[0]
        .tags
        .iter()
        .find(|t| t.name.to_string() == "ticks")
        .unwrap();
    assert_eq!(ticks.kind, TagKind::Stream);
    assert!(hosted.host.is_connected());
    assert_eq!(hosted.host.restarts(), 0);
    assert!(hosted.host.name().ends_with("shoal-worker-test-worker"));

    // A unary call with headers: the worker sees the entity, the payload and the headers.
    let mut options = CallOptions::default();
    options.headers.push("trace", "t-1");
    let reply = hosted
        .client("probe")
        .call("a", "echo", Bytes::from_static(b"hello"), options)
        .await
        .unwrap();
    assert_eq!(&reply[..], b"probe/a hello [trace=t-1]");
    // The worker process is the one the host reports.
    assert_eq!(
        hosted.call("a", "pid", "").await.unwrap(),
        hosted.pid().to_string()
    );

    // A streamed reply arrives item by item.
    let items: Vec<String> = hosted
        .client("probe")
        .stream(
            "b",
            "ticks",
            Bytes::from_static(b"4"),
            CallOptions::default(),
        )
        .await
        .unwrap()
        .map(|item| String::from_utf8(item.unwrap().to_vec()).unwrap())
        .collect()
        .await;
    assert_eq!(items, ["1", "2", "3", "4"]);

    // Tags the worker did not describe are refused by the runtime.
    assert!(matches!(
        hosted.call("a", "nope", "").await,
        Err(e) if matches!(e.kind(), CallErrorKind::UnknownTag { .. })
    ));
    hosted.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_at_a_time_per_entity_unless_the_worker_declares_more() {
    let dir = short_tempdir();
    let hosted = Hosted::start(test_worker_spec(dir.path(), &[])).await;
    // Concurrency 1 (the worker declares none): calls to one entity never overlap, calls to
    // different entities do.
    let holds = (0..6).map(|_| hosted.call("serial", "hold", "20"));
    for reply in futures::future::join_all(holds).await {
        assert_eq!(reply.unwrap(), "1");
    }
    assert_eq!(hosted.call("serial", "max", "").await.unwrap(), "1");
    let ids: Vec<String> = (0..4).map(|i| format!("e{i}")).collect();
    let met = ids
        .iter()
        .map(|id| hosted.call(id, "rendezvous", "apart 4"));
    for reply in futures::future::join_all(met).await {
        assert_eq!(reply.unwrap(), "met");
    }
    hosted.stop().await;

    // A worker that declares concurrency 4 gets four calls to one entity at once.
    let dir = short_tempdir();
    let hosted = Hosted::start(test_worker_spec(dir.path(), &["--probe-concurrency", "4"])).await;
    assert_eq!(hosted.host.entity_types()[0].concurrency, Some(4));
    let met = (0..4).map(|_| hosted.call("shared", "rendezvous", "together 4"));
    for reply in futures::future::join_all(met).await {
        assert_eq!(reply.unwrap(), "met");
    }
    hosted.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_calls_over_one_session() {
    let dir = short_tempdir();
    let hosted = Hosted::start(test_worker_spec(dir.path(), &[])).await;
    let calls = (0..200).map(|i| {
        let hosted = &hosted;
        async move {
            let reply = hosted
                .call(&format!("n{}", i % 50), "echo", &i.to_string())
                .await
                .unwrap();
            assert_eq!(reply, format!("probe/n{} {i} []", i % 50));
        }
    });
    futures::future::join_all(calls).await;
    hosted.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_failures_reach_the_caller() {
    let dir = short_tempdir();
    let hosted = Hosted::start(test_worker_spec(dir.path(), &[])).await;

    // An application failure is the handler's error; the entity carries on.
    assert_eq!(
        handler_message(hosted.call("a", "fail", "insufficient funds").await),
        "insufficient funds"
    );
    assert_eq!(
        hosted.call("a", "echo", "still here").await.unwrap(),
        "probe/a still here []"
    );

    // A fatal failure is a defect: the runtime re-activates the entity and replays, then gives
    // up.
    match hosted.call("b", "fatal", "state corrupted").await {
        Err(e) if matches!(e.kind(), CallErrorKind::Defect) => {
            assert!(e.message().contains("state corrupted"), "{e}")
        }
        other => panic!("expected a defect, got {other:?}"),
    }
    assert_eq!(
        hosted.call("b", "echo", "again").await.unwrap(),
        "probe/b again []"
    );

    // Undecodable input (here: an unknown KV command) is reported as malformed.
    let message = handler_message(hosted.call("a", "kv", "frobnicate").await);
    assert!(message.starts_with("malformed message:"), "{message}");

    // A call that runs past the host's request timeout is cancelled on the worker.
    let dir2 = short_tempdir();
    let quick = Hosted::start(
        test_worker_spec(dir2.path(), &[])
            .options(common::fast_options().request_timeout(Duration::from_secs(1))),
    )
    .await;
    let message = handler_message(quick.call("slow", "forever", "").await);
    assert!(message.contains("did not reply within 1s"), "{message}");
    // The worker dropped the cancelled call, and the entity is free again.
    common::eventually(|| async {
        quick.call("other", "busy", "").await.ok().as_deref() == Some("0")
    })
    .await;
    assert_eq!(
        quick.call("slow", "echo", "next").await.unwrap(),
        "probe/slow next []"
    );
    quick.stop().await;
    hosted.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_kv_round_trip() {
    let dir = short_tempdir();
    let hosted = Hosted::start(test_worker_spec(dir.path(), &[])).await;
    let kv = |id: &'static str, command: &'static str| hosted.call(id, "kv", command);

    assert_eq!(kv("a", "get x").await.unwrap(), "<none>");
    assert_eq!(kv("a", "put x=1 y=2 z=3 w=4").await.unwrap(), "ok");
    assert_eq!(kv("a", "get x z missing").await.unwrap(), "1,3,<none>");
    assert_eq!(kv("a", "list").await.unwrap(), "w=4;x=1;y=2;z=3");
    assert_eq!(
        kv("a", "list all reverse limit 2").await.unwrap(),
        "z=3;y=2"
    );
    assert_eq!(kv("a", "list range x z").await.unwrap(), "x=1;y=2");
    assert_eq!(kv("a", "put xa=5").await.unwrap(), "ok");
    assert_eq!(kv("a", "list prefix x").await.unwrap(), "x=1;xa=5");
    assert_eq!(kv("a", "delete x missing").await.unwrap(), "ok");
    assert_eq!(kv("a", "list").await.unwrap(), "w=4;xa=5;y=2;z=3");
    assert_eq!(kv("a", "delete_range xa z").await.unwrap(), "ok");
    assert_eq!(kv("a", "list").await.unwrap(), "w=4;z=3");

    // Every entity has its own keys.
    assert_eq!(kv("b", "list").await.unwrap(), "");
    assert_eq!(kv("b", "put x=other").await.unwrap(), "ok");
    assert_eq!(kv("a", "get x").await.unwrap(), "<none>");
    assert_eq!(kv("b", "get x").await.unwrap(), "other");

    // Limits are enforced by the runner and reported to the handler.
    let message = handler_message(kv("a", "put_big 200000").await);
    assert!(message.starts_with("InvalidArgument"), "{message}");
    assert_eq!(kv("a", "get big").await.unwrap(), "<none>");

    // The writes are in the runner's entity KV, where any later activation finds them.
    assert_eq!(kv("a", "drop").await.unwrap(), "ok");
    assert_eq!(kv("a", "list").await.unwrap(), "");
    assert_eq!(kv("b", "list").await.unwrap(), "x=other");
    let address = shoal_protocol::EntityAddress::new(
        hosted
            .sharding
            .shard_in(&"default".parse().unwrap(), &"b".parse().unwrap()),
        "probe".parse().unwrap(),
        "b".parse().unwrap(),
    );
    let stored = hosted
        .kv
        .get(&address, &[Bytes::from_static(b"x")])
        .await
        .unwrap();
    assert_eq!(stored, [Some(Bytes::from_static(b"other"))]);
    hosted.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_exits_at_once_is_a_launch_error() {
    let dir = short_tempdir();
    let error = Hosted::try_start(test_worker_spec(dir.path(), &["--exit-at-once"]))
        .await
        .err()
        .expect("the worker exits before announcing its socket");
    let message = error.to_string();
    assert!(matches!(error, WorkerError::Launch { .. }), "{message}");
    assert!(message.contains("exited before announcing"), "{message}");
    // The launcher quotes what the worker wrote on stderr.
    assert!(message.contains("exiting at once as asked"), "{message}");
    assert!(worker_log(dir.path()).contains("exiting at once"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_worker_is_a_launch_error() {
    let dir = short_tempdir();
    let spec =
        test_worker_spec(dir.path(), &["--silent"]).startup_timeout(Duration::from_millis(500));
    let error = Hosted::try_start(spec)
        .await
        .err()
        .expect("the worker never announces its socket");
    let message = error.to_string();
    assert!(matches!(error, WorkerError::Launch { .. }), "{message}");
    assert!(message.contains("shoal-worker-test-worker"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_executable_is_a_launch_error() {
    let dir = short_tempdir();
    let spec = common::launch_spec(dir.path(), vec!["/nonexistent/worker-binary".to_owned()]);
    let error = Hosted::try_start(spec)
        .await
        .err()
        .expect("nothing to start");
    let message = error.to_string();
    assert!(matches!(error, WorkerError::Launch { .. }), "{message}");
    assert!(message.contains("/nonexistent/worker-binary"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_description_is_refused() {
    let dir = short_tempdir();
    let spec = test_worker_spec(dir.path(), &["--bad-describe"]);
    let error = Hosted::try_start(spec)
        .await
        .err()
        .expect("a type without tags");
    let message = error.to_string();
    assert!(
        matches!(error, WorkerError::InvalidDescription { .. }),
        "{message}"
    );
    assert!(message.contains("tagless declares no tag"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_on_the_socket_is_a_connect_error() {
    let dir = short_tempdir();
    let spec = WorkerSpec::socket(dir.path().join("nobody.sock")).options(common::fast_options());
    let error = Hosted::try_start(spec)
        .await
        .err()
        .expect("no worker there");
    let message = error.to_string();
    assert!(matches!(error, WorkerError::Connect { .. }), "{message}");
    assert!(message.contains("nobody.sock"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_never_answers_times_out() {
    let dir = short_tempdir();
    let path = dir.path().join("mute.sock");
    // Accepts connections and never says a word (not even the HTTP/2 preface).
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let spec = WorkerSpec::socket(&path)
        .options(common::fast_options().connect_timeout(Duration::from_millis(500)));
    let error = Hosted::try_start(spec).await.err().expect("a mute socket");
    let message = error.to_string();
    assert!(matches!(error, WorkerError::Timeout { .. }), "{message}");
    assert!(message.contains("mute.sock"), "{message}");
    accepting.abort();
}
