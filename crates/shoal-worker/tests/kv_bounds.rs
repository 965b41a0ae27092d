//! Bounded KV traffic on a session: a worker that floods KV requests, or a runner that answers
//! them slowly, cannot make either side hold more than its cap.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{GatedKv, Hosted, eventually, short_tempdir};
use parking_lot::Mutex;
use shoal_launcher::{Announce, UnixServeOptions, UnixServer, serve_unix};
use shoal_protocol::proto::worker::v1 as pb;
use shoal_protocol::proto::worker::v1::worker_service_server::{
    WorkerService, WorkerServiceServer,
};
use shoal_worker::{WorkerOptions, WorkerSpec};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

type Out = mpsc::UnboundedSender<Result<pb::WorkerMessage, tonic::Status>>;

/// A worker speaking the raw protocol, driven by the test: it answers heartbeats by itself and
/// hands the test its outgoing stream and everything else the runner sends.
struct RawWorker {
    sessions: mpsc::UnboundedSender<(Out, mpsc::UnboundedReceiver<pb::runner_message::Kind>)>,
}

#[tonic::async_trait]
impl WorkerService for RawWorker {
    async fn describe(
        &self,
        _request: tonic::Request<pb::DescribeRequest>,
    ) -> Result<tonic::Response<pb::DescribeResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::DescribeResponse {
            protocol_version: shoal_worker::PROTOCOL_VERSION,
            entity_types: vec![pb::EntityTypeSpec {
                name: "raw".to_owned(),
                tags: vec![pb::TagSpec {
                    name: "go".to_owned(),
                    kind: pb::TagKind::Unary as i32,
                    persisted: false,
                }],
                concurrency: 1,
            }],
            worker_name: "raw".to_owned(),
            pid: 0,
        }))
    }

    type SessionStream = UnboundedReceiverStream<Result<pb::WorkerMessage, tonic::Status>>;

    async fn session(
        &self,
        request: tonic::Request<tonic::Streaming<pb::RunnerMessage>>,
    ) -> Result<tonic::Response<Self::SessionStream>, tonic::Status> {
        let (out, rx) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut inbound = request.into_inner();
        let acks = out.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                match message.kind {
                    Some(pb::runner_message::Kind::Heartbeat(beat)) if !beat.ack => {
                        let _ = acks.send(Ok(pb::WorkerMessage {
                            kind: Some(pb::worker_message::Kind::Heartbeat(pb::Heartbeat {
                                nonce: beat.nonce,
                                ack: true,
                            })),
                        }));
                    }
                    Some(kind) => {
                        let _ = events_tx.send(kind);
                    }
                    None => {}
                }
            }
        });
        let _ = self.sessions.send((out, events));
        Ok(tonic::Response::new(UnboundedReceiverStream::new(rx)))
    }
}

async fn serve_raw(
    path: &std::path::Path,
) -> (
    UnixServer,
    mpsc::UnboundedReceiver<(Out, mpsc::UnboundedReceiver<pb::runner_message::Kind>)>,
) {
    let (sessions, rx) = mpsc::unbounded_channel();
    let router = tonic::transport::Server::builder()
        .add_service(WorkerServiceServer::new(RawWorker { sessions }));
    let server = serve_unix(
        router,
        UnixServeOptions::new(path)
            .announce(Announce::Silent)
            .reflection(false)
            .health(false),
    )
    .await
    .unwrap();
    (server, rx)
}

fn send(out: &Out, kind: pb::worker_message::Kind) {
    out.send(Ok(pb::WorkerMessage { kind: Some(kind) }))
        .unwrap();
}

fn kv(request_id: u64, activation_id: u64, op: pb::kv_request::Op) -> pb::worker_message::Kind {
    pb::worker_message::Kind::Kv(pb::KvRequest {
        request_id,
        activation_id,
        op: Some(op),
    })
}

fn get(key: &'static [u8]) -> pb::kv_request::Op {
    pb::kv_request::Op::Get(pb::KvGet {
        keys: vec![Bytes::from_static(key)],
    })
}

const CAP: usize = 16;
const FLOOD: u64 = 2_000;
const MARKER: u64 = 77_777;

/// A worker that sends far more KV requests than the cap, without waiting for answers, while
/// storage answers nothing: the runner holds exactly `max_kv_in_flight` of them and stops
/// reading the session (backpressure: the heartbeat the worker sent after the flood is not
/// answered yet). Once storage answers, every request gets exactly one answer, and the session
/// carries on normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kv_flood_is_held_to_the_cap_with_backpressure() {
    let dir = short_tempdir();
    let socket = dir.path().join("raw.sock");
    let (server, mut sessions) = serve_raw(&socket).await;
    let gate = Arc::new(Mutex::new(None::<Arc<GatedKv>>));
    let spec = WorkerSpec::socket(&socket).options(
        WorkerOptions::new()
            .request_timeout(Duration::from_secs(60))
            .max_kv_in_flight(CAP),
    );
    let hosted = Hosted::start_with_kv(spec, |kv| {
        let gated = GatedKv::closed(kv);
        *gate.lock() = Some(gated.clone());
        gated
    })
    .await;
    let gate = gate.lock().clone().unwrap();
    let (out, mut events) = sessions.recv().await.unwrap();

    // A call, so the runner announces an activation; the worker answers it at the end.
    let call = {
        let client = hosted.client("raw");
        tokio::spawn(async move {
            client
                .call(
                    "a",
                    "go",
                    Bytes::new(),
                    shoal_sharding::CallOptions::default(),
                )
                .await
        })
    };
    let (activation, call_id) = loop {
        match events.recv().await.unwrap() {
            pb::runner_message::Kind::Call(call) => break (call.activation_id, call.call_id),
            _ => continue,
        }
    };

    // The flood, then a heartbeat of the worker's own.
    for id in 1..=FLOOD {
        send(&out, kv(id, activation, get(b"k")));
    }
    send(
        &out,
        pb::worker_message::Kind::Heartbeat(pb::Heartbeat {
            nonce: MARKER,
            ack: false,
        }),
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let collector = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(kind) = events.recv().await {
                seen.lock().push(kind);
            }
        })
    };
    let marker_answered = |seen: &[pb::runner_message::Kind]| {
        seen.iter().any(|k| {
            matches!(k, pb::runner_message::Kind::Heartbeat(beat) if beat.ack && beat.nonce == MARKER)
        })
    };

    // The runner reads up to the cap, then pauses: it does not read past the flood.
    eventually(|| {
        let done = hosted.host.kv_backpressure_pauses() > 0 || marker_answered(&seen.lock());
        async move { done }
    })
    .await;
    assert!(
        !marker_answered(&seen.lock()),
        "the runner read past its KV cap: it answered the heartbeat sent after {FLOOD} KV \
         requests while holding {} of them",
        hosted.host.kv_in_flight()
    );
    assert_eq!(hosted.host.kv_in_flight(), CAP);

    // Storage answers: every request gets exactly one answer, then the heartbeat's.
    gate.open();
    eventually(|| {
        let done = marker_answered(&seen.lock());
        async move { done }
    })
    .await;
    let answered: Vec<u64> = seen
        .lock()
        .iter()
        .filter_map(|k| match k {
            pb::runner_message::Kind::Kv(response) => {
                assert!(
                    matches!(
                        &response.result,
                        Some(pb::kv_response::Result::Values(v)) if v.values.len() == 1
                    ),
                    "{response:?}"
                );
                Some(response.request_id)
            }
            _ => None,
        })
        .collect();
    assert_eq!(answered.len(), FLOOD as usize);
    assert_eq!(
        answered.iter().copied().collect::<HashSet<_>>(),
        (1..=FLOOD).collect::<HashSet<_>>()
    );
    eventually(|| {
        let idle = hosted.host.kv_in_flight() == 0;
        async move { idle }
    })
    .await;

    // Normal KV requests still work, and so do replies.
    send(
        &out,
        kv(
            FLOOD + 1,
            activation,
            pb::kv_request::Op::Put(pb::KvPut {
                entries: vec![pb::KvEntry {
                    key: Bytes::from_static(b"k"),
                    value: Bytes::from_static(b"v"),
                }],
            }),
        ),
    );
    send(&out, kv(FLOOD + 2, activation, get(b"k")));
    eventually(|| {
        let found = seen.lock().iter().any(|k| {
            matches!(k, pb::runner_message::Kind::Kv(r) if r.request_id == FLOOD + 2
                && matches!(&r.result, Some(pb::kv_response::Result::Values(v))
                    if v.values.first().is_some_and(|v| v.found && v.value == "v")))
        });
        async move { found }
    })
    .await;
    send(
        &out,
        pb::worker_message::Kind::Reply(pb::Reply {
            call_id,
            outcome: Some(pb::reply::Outcome::Value(Bytes::from_static(b"done"))),
        }),
    );
    let reply = call.await.unwrap().unwrap();
    assert_eq!(&reply[..], b"done");
    assert!(hosted.host.is_connected());

    collector.abort();
    hosted.stop().await;
    server.stop();
}

/// A handler of a Rust SDK worker that makes far more KV requests at once than the limit, while
/// storage answers nothing: the SDK sends at most its limit (the same as the runner's by
/// default), so the runner holds exactly that many and never has to stop reading the session.
/// Every request is answered once storage answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_keeps_its_kv_requests_under_the_runners_cap() {
    let dir = short_tempdir();
    let gate = Arc::new(Mutex::new(None::<Arc<GatedKv>>));
    let spec = common::test_worker_spec(dir.path(), &[])
        .options(common::fast_options().request_timeout(Duration::from_secs(60)));
    let hosted = Hosted::start_with_kv(spec, |kv| {
        let gated = GatedKv::closed(kv);
        *gate.lock() = Some(gated.clone());
        gated
    })
    .await;
    let gate = gate.lock().clone().unwrap();
    let limit = shoal_worker::DEFAULT_MAX_KV_IN_FLIGHT;
    let burst = {
        let client = hosted.client("probe");
        tokio::spawn(async move {
            client
                .call(
                    "a",
                    "kv",
                    Bytes::from("burst 2000"),
                    shoal_sharding::CallOptions::default(),
                )
                .await
        })
    };
    eventually(|| {
        let full = hosted.host.kv_in_flight() >= limit;
        async move { full }
    })
    .await;
    assert_eq!(hosted.host.kv_in_flight(), limit);
    gate.open();
    let reply = burst.await.unwrap().unwrap();
    assert_eq!(&reply[..], b"answered 2000");
    assert_eq!(
        hosted.host.kv_backpressure_pauses(),
        0,
        "the SDK sent more KV requests than the runner holds"
    );
    // Normal KV calls still work.
    assert_eq!(hosted.call("a", "kv", "put x=1").await.unwrap(), "ok");
    assert_eq!(hosted.call("a", "kv", "get x").await.unwrap(), "1");
    hosted.stop().await;
}
