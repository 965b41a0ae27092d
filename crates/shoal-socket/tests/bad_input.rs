//! Limits and bad input: oversize messages, garbage on the socket, callers that vanish, servers
//! that stop answering. Each is answered with a typed error; none takes the server down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use shoal_protocol::proto::runner::v1 as pb;
use shoal_protocol::{
    EntityAddress, ErrorCode, Headers, Reply, ReplyFrame, Request, RunnerAddress, Snowflake,
};
use shoal_sharding::{CallErrorKind, CallOptions, Transport, TransportError};
use shoal_socket::{GrpcTransport, SocketConfig, SocketRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pad(bytes: usize) -> String {
    "x".repeat(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_request_fails_alone_and_the_connection_stays_up() {
    let limit = 64 * 1024;
    let socket = SocketConfig {
        max_message_size: limit,
        ..SocketConfig::default()
    };
    let (runner, client, storage) = one_runner(socket).await;
    let counters = client.sharding().client::<Counter>();
    assert_eq!(
        counters
            .call(
                "a",
                Increment {
                    by: 1,
                    pad: String::new()
                }
            )
            .await
            .unwrap(),
        1
    );
    let err = counters
        .call(
            "a",
            Increment {
                by: 1,
                pad: pad(100 * 1024),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), CallErrorKind::MessageTooLarge),
        "{err:?}"
    );
    assert_eq!(
        counters
            .call(
                "a",
                Increment {
                    by: 1,
                    pad: String::new()
                }
            )
            .await
            .unwrap(),
        2
    );

    // A sender configured with a larger limit: the runner refuses that one request, and other
    // requests on the same stream go through.
    let loose = SocketRunner::client_only(
        fast_config().build().unwrap(),
        SocketConfig {
            max_message_size: 1024 * 1024,
            ..SocketConfig::default()
        },
        storage,
    )
    .await
    .unwrap();
    let loose_counters = loose.sharding().client::<Counter>();
    let (big, small) = tokio::join!(
        loose_counters.call(
            "b",
            Increment {
                by: 1,
                pad: pad(100 * 1024)
            }
        ),
        loose_counters.call(
            "b",
            Increment {
                by: 5,
                pad: String::new()
            }
        ),
    );
    assert!(matches!(
        big.unwrap_err().kind(),
        CallErrorKind::MessageTooLarge
    ));
    assert_eq!(small.unwrap(), 5);
    loose.shutdown().await;
    client.shutdown().await;
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_reply_fails_alone_and_the_connection_stays_up() {
    let limit = 64 * 1024;
    let socket = SocketConfig {
        max_message_size: limit,
        ..SocketConfig::default()
    };
    let (runner, client, _) = one_runner(socket).await;
    let counters = client.sharding().client::<Counter>();
    let (big, small) = tokio::join!(
        counters.call("r", Echo { len: 100 * 1024 }),
        counters.call("s", Echo { len: 10 }),
    );
    let err = big.unwrap_err();
    assert!(
        matches!(err.kind(), CallErrorKind::MessageTooLarge),
        "{err:?}"
    );
    assert_eq!(small.unwrap().len(), 10);
    assert_eq!(
        counters.call("r", Echo { len: 1000 }).await.unwrap().len(),
        1000
    );
    client.shutdown().await;
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_on_the_socket_do_not_hurt_the_server() {
    let (runner, client, _) = one_runner(SocketConfig::default()).await;
    let counters = client.sharding().client::<Counter>();
    counters
        .call(
            "g",
            Increment {
                by: 1,
                pad: String::new(),
            },
        )
        .await
        .unwrap();

    let mut raw = tokio::net::TcpStream::connect(&runner.address)
        .await
        .unwrap();
    let junk: Vec<u8> = (0..65_536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let _ = raw.write_all(&junk).await;
    // The server hangs up on the garbage.
    let mut buf = vec![0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept a garbage connection open");

    // Everyone else is unaffected.
    assert_eq!(
        counters
            .call(
                "g",
                Increment {
                    by: 1,
                    pad: String::new()
                }
            )
            .await
            .unwrap(),
        2
    );
    client.shutdown().await;
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_stream_does_not_hurt_the_server() {
    let (runner, client, _) = one_runner(SocketConfig::default()).await;
    let shard = client
        .sharding()
        .shard_of::<Counter>(&"m".try_into().unwrap());

    // A raw batch stream with slow requests in flight, dropped before any reply.
    {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", runner.address))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut raw = pb::runner_service_client::RunnerServiceClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let response = raw
            .batch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap();
        let request = Request {
            id: Snowflake::from_raw(1),
            address: EntityAddress::new(shard, "counter".parse().unwrap(), "m".parse().unwrap()),
            tag: "slow".parse().unwrap(),
            payload: br#"{"ms":500}"#.as_slice().into(),
            headers: Headers::new(),
            persisted: false,
            timeout: None,
            streaming: false,
        };
        tx.send(pb::ClientBatch {
            frames: vec![pb::ClientFrame {
                kind: Some(pb::client_frame::Kind::Request((&request).into())),
            }],
        })
        .await
        .unwrap();
        drop(response);
        drop(tx);
    }
    // The server still serves, the entity included (its slow request finishes unobserved).
    let counters = client.sharding().client::<Counter>();
    assert_eq!(
        counters
            .call(
                "m",
                Increment {
                    by: 3,
                    pad: String::new()
                }
            )
            .await
            .unwrap(),
        3
    );
    client.shutdown().await;
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_is_reported_within_the_connect_timeout() {
    // Accepts TCP connections and then says nothing.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = silent.accept().await {
            keep.lock().push(socket);
        }
    });
    let runners = GrpcTransport::new(SocketConfig {
        connect_timeout: Duration::from_millis(500),
        ..SocketConfig::default()
    })
    .unwrap();
    let target: RunnerAddress = format!("127.0.0.1:{port}").parse().unwrap();
    let request = Request {
        id: Snowflake::from_raw(7),
        address: EntityAddress::new(
            "default:1".parse().unwrap(),
            "counter".parse().unwrap(),
            "x".parse().unwrap(),
        ),
        tag: "who_am_i".parse().unwrap(),
        payload: b"null".as_slice().into(),
        headers: Headers::new(),
        persisted: false,
        timeout: None,
        streaming: false,
    };
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(5), runners.send(&target, request)).await;
    let error = result.expect("the send gave up by itself").unwrap_err();
    assert!(
        matches!(error, TransportError::Unreachable { .. }),
        "{error:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_stops_answering_hits_the_callers_deadline() {
    let (runner, client, _) = one_runner(SocketConfig::default()).await;
    let counters = client.sharding().client::<Counter>();
    let started = Instant::now();
    let err = counters
        .call_with(
            "d",
            Slow { ms: 5_000 },
            CallOptions::timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), CallErrorKind::Timeout { .. }),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // The connection survived the abandoned request.
    assert_eq!(
        counters
            .call(
                "e",
                Increment {
                    by: 1,
                    pad: String::new()
                }
            )
            .await
            .unwrap(),
        1
    );
    client.shutdown().await;
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_runner_hits_the_callers_deadline_then_answers_again() {
    let (runner, client, _) = one_runner(SocketConfig::default()).await;
    let counters = client.sharding().client::<Counter>();
    let one = Increment {
        by: 1,
        pad: String::new(),
    };
    assert_eq!(counters.call("f", one.clone()).await.unwrap(), 1);

    // The runner's only worker thread blocks: its socket stays open but nothing is answered.
    counters
        .notify("frozen", Freeze { ms: 2_000 })
        .await
        .unwrap();
    let started = Instant::now();
    let err = counters
        .call_with(
            "f",
            one.clone(),
            CallOptions::timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), CallErrorKind::Timeout { .. }),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(1_500));

    // Once it thaws, the same connection serves again. The freeze outlasted the runner's lease
    // (1.2 s): it serves nothing before it has confirmed its lease again, and it stops the
    // entities it held while frozen (another runner could have taken their shards), so the
    // counter's in-memory value may be gone (1). If the runner got to it first, the abandoned
    // request may have run or have been dropped at its deadline (3 or 2).
    let value = counters
        .call_with("f", one, CallOptions::timeout(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!((1..=3).contains(&value), "{value}");
    client.shutdown().await;
    runner.shutdown().await;
}

/// A request for the counter entity `id` (on its shard in `sharding`).
fn counter_request(
    sharding: &shoal_sharding::Sharding,
    request_id: u64,
    id: &str,
    tag: &str,
    payload: &str,
) -> pb::ClientFrame {
    let shard = sharding.shard_of::<Counter>(&id.try_into().unwrap());
    let request = Request {
        id: Snowflake::from_raw(request_id),
        address: EntityAddress::new(shard, "counter".parse().unwrap(), id.parse().unwrap()),
        tag: tag.parse().unwrap(),
        payload: payload.as_bytes().to_vec().into(),
        headers: Headers::new(),
        persisted: false,
        timeout: None,
        streaming: false,
    };
    pb::ClientFrame {
        kind: Some(pb::client_frame::Kind::Request((&request).into())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_window_fail_at_once_and_the_stream_stays_usable() {
    let window = 16;
    let extra = 8;
    let (runner, client, _) = one_runner(SocketConfig {
        window,
        ..SocketConfig::default()
    })
    .await;
    let sharding = client.sharding();

    // A raw batch stream that ignores the window: every request is written before any reply
    // is read. Each request is for an entity of its own and takes 2 s.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", runner.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = pb::runner_service_client::RunnerServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut replies = raw
        .batch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let started = Instant::now();
    let total = window + extra;
    for chunk in (1..=total as u64).collect::<Vec<_>>().chunks(5) {
        let frames = chunk
            .iter()
            .map(|&n| counter_request(sharding, n, &format!("w{n}"), "slow", r#"{"ms":2000}"#))
            .collect();
        tx.send(pb::ClientBatch { frames }).await.unwrap();
    }

    let mut refused = Vec::new();
    let mut served = 0;
    let mut first_served_at = None;
    while refused.len() + served < total {
        let batch = tokio::time::timeout(Duration::from_secs(10), replies.message())
            .await
            .expect("every request is answered")
            .unwrap()
            .expect("the stream stays open");
        for reply in batch.replies {
            let reply = Reply::try_from(reply).unwrap();
            match reply.frame {
                ReplyFrame::Failure(failure) => refused.push((started.elapsed(), failure)),
                ReplyFrame::Value(_) => {
                    served += 1;
                    first_served_at.get_or_insert(started.elapsed());
                }
                other => panic!("unexpected reply {other:?}"),
            }
        }
    }
    assert_eq!(refused.len(), extra, "{refused:?}");
    assert_eq!(served, window);
    for (at, failure) in &refused {
        assert_eq!(failure.code, ErrorCode::MailboxFull, "{failure:?}");
        assert!(
            failure
                .message
                .contains("more than 16 requests in flight on this connection"),
            "{failure:?}"
        );
        // Answered at once, not after the requests ahead of it.
        assert!(*at < Duration::from_millis(1500), "refused after {at:?}");
        assert!(Some(*at) < first_served_at, "{at:?} vs {first_served_at:?}");
    }

    // The window freed, the same stream serves again.
    tx.send(pb::ClientBatch {
        frames: vec![counter_request(
            sharding,
            1_000,
            "after",
            "increment",
            r#"{"by":7}"#,
        )],
    })
    .await
    .unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(5), replies.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let reply = Reply::try_from(batch.replies.into_iter().next().unwrap()).unwrap();
    assert_eq!(reply.request_id, Snowflake::from_raw(1_000));
    assert_eq!(reply.frame, ReplyFrame::Value(b"7".as_slice().into()));
    drop(tx);
    client.shutdown().await;
    runner.shutdown().await;
}
