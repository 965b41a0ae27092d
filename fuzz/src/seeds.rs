//! The seed corpus of each target: a few valid inputs, written by the targets themselves when
//! `SHOAL_FUZZ_WRITE_SEEDS=<dir>` is set (then the target writes its seeds to `<dir>` and exits).
//! The committed `fuzz/corpus/<target>/` were made that way:
//!
//! ```text
//! SHOAL_FUZZ_WRITE_SEEDS=fuzz/corpus/codec <fuzz target dir>/<triple>/release/codec
//! ```

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use shoal_protocol::proto::runner::v1 as pb;
use shoal_protocol::proto::worker::v1 as wpb;
use shoal_protocol::{
    Chunk, EntityAddress, ErrorCode, Failure, Headers, Interrupt, Notification, Reply, ReplyFrame,
    Request, Snowflake,
};
use shoal_socket::fuzzing::{encode_client_frame, encode_reply, encode_request};

/// The variable that makes a target write its seeds instead of fuzzing.
pub const WRITE_SEEDS: &str = "SHOAL_FUZZ_WRITE_SEEDS";

fn address(id: &str) -> EntityAddress {
    EntityAddress::new(
        "default:17".parse().expect("a shard"),
        "counter".parse().expect("a type"),
        id.parse().expect("an id"),
    )
}

fn request(id: u64, entity: &str, payload: &'static [u8]) -> Request {
    let mut headers = Headers::new();
    headers.push("x-request-id", "r-1");
    Request {
        id: Snowflake::from_raw(id),
        address: address(entity),
        tag: "increment".parse().expect("a tag"),
        payload: Bytes::from_static(payload),
        headers,
        persisted: id.is_multiple_of(2),
        timeout: Some(Duration::from_millis(1500)),
        streaming: false,
    }
}

fn interrupt() -> Interrupt {
    Interrupt {
        id: Snowflake::from_raw(7),
        request_id: Snowflake::from_raw(8),
        address: address("b"),
        persisted: true,
    }
}

fn replies() -> Vec<Reply> {
    [
        ReplyFrame::Value(Bytes::from_static(b"42")),
        ReplyFrame::Failure(
            Failure::new(ErrorCode::MailboxFull, "full").with_address(address("a")),
        ),
        ReplyFrame::Chunk(Chunk {
            reply_id: Snowflake::from_raw(9),
            sequence: 2,
            values: vec![Bytes::from_static(b"1"), Bytes::new()],
        }),
        ReplyFrame::End,
    ]
    .into_iter()
    .enumerate()
    .map(|(i, frame)| Reply {
        request_id: Snowflake::from_raw(i as u64 + 1),
        frame,
    })
    .collect()
}

fn codec() -> Vec<Vec<u8>> {
    let mut batch = Vec::new();
    for (i, id) in ["a", "ü/42", "user-7"].into_iter().enumerate() {
        batch.extend_from_slice(&encode_request(
            &request(i as u64 + 1, id, b"{\"by\":1}"),
            false,
        ));
    }
    let notify = pb::ClientFrame {
        kind: Some(pb::client_frame::Kind::Notify(pb::Notification::from(
            &Notification::Interrupt(interrupt()),
        ))),
    };
    let cancel = pb::ClientFrame {
        kind: Some(pb::client_frame::Kind::Cancel(3)),
    };
    let mut frames = batch.clone();
    frames.extend_from_slice(&encode_client_frame(&notify));
    frames.extend_from_slice(&encode_client_frame(&cancel));
    let mut server = Vec::new();
    for reply in replies() {
        server.extend_from_slice(&encode_reply(reply.request_id.raw(), reply.frame));
    }
    vec![
        batch,
        frames,
        encode_request(&request(4, "s", b""), true).to_vec(),
        server,
    ]
}

fn tagged(tag: u8, bytes: impl AsRef<[u8]>) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(bytes.as_ref());
    out
}

fn protocol() -> Vec<Vec<u8>> {
    let request = request(42, "a", b"{}");
    let mut seeds = vec![tagged(0, pb::Request::from(&request).encode_to_vec())];
    for reply in replies() {
        seeds.push(tagged(1, pb::Reply::from(&reply).encode_to_vec()));
    }
    seeds.extend([
        tagged(
            2,
            pb::Notification::from(&Notification::Request(request.clone())).encode_to_vec(),
        ),
        tagged(
            3,
            pb::Failure::from(&Failure::new(ErrorCode::Handler, "no").with_address(address("x")))
                .encode_to_vec(),
        ),
        tagged(4, pb::Interrupt::from(&interrupt()).encode_to_vec()),
        tagged(
            5,
            pb::AckChunk {
                envelope_id: 1,
                request_id: 2,
                reply_id: 3,
                address: Some((&address("c")).into()),
                persisted: true,
            }
            .encode_to_vec(),
        ),
        tagged(6, pb::EntityAddress::from(&address("d")).encode_to_vec()),
        tagged(7, pb::ShardId::from(&address("d").shard).encode_to_vec()),
        tagged(
            8,
            pb::ServerBatch {
                replies: replies().iter().map(pb::Reply::from).collect(),
            }
            .encode_to_vec(),
        ),
        tagged(9, "default:42"),
        tagged(9, "\"gpu:a:7\""),
        tagged(10, "10.0.0.7:34431"),
        tagged(10, "[::1]:80"),
        tagged(10, "unix:/tmp/shoal.sock"),
        tagged(
            11,
            r#"{"address":"10.0.0.7:34431","groups":["gpu","default"],"weight":1}"#,
        ),
        tagged(
            12,
            r#"{"shard":"default:3","entity_type":"counter","entity_id":"a"}"#,
        ),
        tagged(13, "\"1234567890123\""),
        tagged(14, "user-42"),
    ]);
    seeds
}

fn gateway() -> Vec<Vec<u8>> {
    [
        "POST /v1/entities/counter/a/increment HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 8\r\n\r\n{\"by\":1}",
        "POST /v1/entities/counter/user%2F42/get HTTP/1.1\r\nx-shoal-timeout-ms: 1500\r\nx-request-id: r-1\r\n\r\n",
        "POST /v1/entities/counter/%C3%BC/increment?x=1 HTTP/1.1\r\nidempotency-key: key-1\r\nauthorization: Bearer t\r\n\r\n  {\"by\": [1, 2.5, null, true, \"s\"]}  ",
        "POST /v1/entities/counter/a/increment HTTP/1.1\r\nx-shoal-timeout-ms: 0\r\n\r\n{}",
        "POST /v1/entities/counter/a/increment HTTP/1.1\r\ncontent-length: 99999\r\n\r\n{}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn worker() -> Vec<Vec<u8>> {
    let description = wpb::DescribeResponse {
        protocol_version: shoal_worker::PROTOCOL_VERSION,
        entity_types: vec![wpb::EntityTypeSpec {
            name: "py_counter".to_owned(),
            tags: vec![
                wpb::TagSpec {
                    name: "increment".to_owned(),
                    kind: wpb::TagKind::Unary.into(),
                    persisted: true,
                },
                wpb::TagSpec {
                    name: "watch".to_owned(),
                    kind: wpb::TagKind::Stream.into(),
                    persisted: false,
                },
            ],
            concurrency: 4,
        }],
        worker_name: "counter-worker".to_owned(),
        pid: 1234,
    };
    let message = |kind| wpb::WorkerMessage { kind: Some(kind) }.encode_to_vec();
    use wpb::worker_message::Kind;
    let kv = |op| {
        Kind::Kv(wpb::KvRequest {
            request_id: 1,
            activation_id: 2,
            op: Some(op),
        })
    };
    vec![
        tagged(0, description.encode_to_vec()),
        tagged(
            1,
            message(Kind::Reply(wpb::Reply {
                call_id: 1,
                outcome: Some(wpb::reply::Outcome::Value(Bytes::from_static(b"2"))),
            })),
        ),
        tagged(
            1,
            message(Kind::Heartbeat(wpb::Heartbeat {
                nonce: 5,
                ack: true,
            })),
        ),
        tagged(
            1,
            message(kv(wpb::kv_request::Op::List(wpb::KvList {
                selection: Some(wpb::kv_list::Selection::Range(wpb::KvRange {
                    start: Bytes::from_static(b"a"),
                    end: Bytes::from_static(b"z"),
                })),
                reverse: true,
                limit: Some(10),
            }))),
        ),
        tagged(
            1,
            message(kv(wpb::kv_request::Op::Put(wpb::KvPut {
                entries: vec![wpb::KvEntry {
                    key: Bytes::from_static(b"k"),
                    value: Bytes::from_static(b"v"),
                }],
            }))),
        ),
    ]
}

fn config() -> Vec<Vec<u8>> {
    [
        "",
        "storage = \"postgres://shoal:secret@db.internal/shoal\"\nlisten = \"0.0.0.0:34431\"\nadvertise_host = \"10.0.3.17\"\nrunner_token = \"0123456789abcdef0123456789abcdef\"\ngateway = \"0.0.0.0:8080\"\nlease_ttl = \"5s\"\nstorage_timeout = \"1s\"\nlog_format = \"json\"\nassigned_groups = [\"default\", \"gpu\"]\navailable_groups = [\"default\", \"gpu\"]\n",
        "shards_per_group = 64\nlease_ttl = \"3s\"\n",
        "[[entity]]\ntype = \"py_counter\"\nworker = [\".venv/bin/python\", \"examples/python/counter_worker.py\"]\nstderr = \"py_counter.log\"\n\n[[entity]]\ntype = \"sock\"\nsocket = \"/run/w.sock\"\n",
        "lease_tll = \"5s\"\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn lanes() -> Vec<Vec<u8>> {
    vec![
        b"\x00orders\x01ship\x0a{\"id\":1}{\"tenant\":\"acme\"}\x00\x00\x00\x10".to_vec(),
        b"\x01\x05lane\x00\x04task\x02{}\x02{}eyJhbGciOiJub25lIn0.e30.\x00\x00\x00\x00\x00\x00\x00"
            .to_vec(),
        b"\x02events\x00\x03evt\x04null\x0f{\"a\":\"b\",\"c\":\"d\"}".to_vec(),
    ]
}

fn launcher() -> Vec<Vec<u8>> {
    [
        "{\n  \"cmd\": [\n    \"node\",\n    \"/d/worker.mjs\"\n  ],\n  \"cwd\": \"/d\",\n  \"socket\": \"/tmp/vgi-rpc-0/370d4d8df3163e79.sock\",\n  \"started_at\": 1795385575.323,\n  \"launcher_pid\": 25214\n}",
        r#"{"launcher_pid":7,"socket":"s","started_at":12,"cwd":"/w","cmd":["a",1]}"#,
        r#"{"cmd":[],"cwd":"","socket":"/s","started_at":1e9,"launcher_pid":4294967295}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// The seeds of `target`.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "codec" => codec(),
        "protocol" => protocol(),
        "gateway" => gateway(),
        "worker" => worker(),
        "config" => config(),
        "lanes" => lanes(),
        "launcher" => launcher(),
        _ => Vec::new(),
    }
}

/// When [`WRITE_SEEDS`] names a directory: writes the seeds of `target` there (named by
/// content) and exits. Called from each target's `init`.
pub fn write_if_asked(target: &str) {
    let Some(dir) = std::env::var_os(WRITE_SEEDS) else {
        return;
    };
    let dir = Path::new(&dir);
    let seeds = seeds(target);
    assert!(!seeds.is_empty(), "no seeds for {target}");
    std::fs::create_dir_all(dir).expect("the seed directory can be made");
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), seed).expect("a seed can be written");
    }
    eprintln!(
        "wrote {} seeds of {target} to {}",
        seeds.len(),
        dir.display()
    );
    std::process::exit(0);
}
