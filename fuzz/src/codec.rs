//! The runner batch stream: `ClientBatch` (server side, hand-written decoder) and `ServerBatch`
//! (client side, prost).

use bytes::Bytes;
use prost::Message as _;
use shoal_protocol::proto::runner::v1 as pb;
use shoal_protocol::{Notification, Reply, Request, WireError};
use shoal_socket::fuzzing::{self, BatchDecoder, Inbound, Malformed};

/// What prost and the generated conversions make of one client frame: the reference.
#[derive(Debug, PartialEq)]
enum Expected {
    Request(Result<Request, Malformed>),
    Notify {
        request_id: Option<u64>,
        notification: Result<Notification, WireError>,
    },
    Cancel(u64),
    Empty,
}

fn expected(frame: pb::ClientFrame) -> Expected {
    use pb::client_frame::Kind;
    match frame.kind {
        None => Expected::Empty,
        Some(Kind::Request(wire)) => {
            let id = wire.request_id;
            Expected::Request(Request::try_from(wire).map_err(|error| Malformed { id, error }))
        }
        Some(Kind::Notify(wire)) => Expected::Notify {
            request_id: match &wire.kind {
                Some(pb::notification::Kind::Request(r)) => Some(r.request_id),
                _ => None,
            },
            notification: Notification::try_from(wire),
        },
        Some(Kind::Cancel(id)) => Expected::Cancel(id),
    }
}

fn actual(frame: Inbound) -> Expected {
    match frame {
        Inbound::Request(request) => Expected::Request(request),
        Inbound::Notify {
            request_id,
            notification,
        } => Expected::Notify {
            request_id,
            notification,
        },
        Inbound::Cancel(id) => Expected::Cancel(id),
        Inbound::Empty => Expected::Empty,
    }
}

/// Reads `batch` with the server's decoder and with prost; they must agree. Every request read
/// must encode (client side) to prost's bytes and read back the same.
pub fn check_client_batch(batch: &Bytes) {
    let mut decoder = BatchDecoder::new();
    let ours = decoder.decode(batch);
    let theirs = pb::ClientBatch::decode(&batch[..]);
    let (ours, theirs) = match (ours, theirs) {
        (Ok(ours), Ok(theirs)) => (ours, theirs),
        (Err(_), Err(_)) => return,
        (ours, theirs) => panic!(
            "the batch decoder and prost disagree on whether the batch is valid:\n ours: {ours:?}\n prost: {theirs:?}"
        ),
    };
    assert_eq!(ours.len(), theirs.frames.len(), "frame counts differ");
    let ours: Vec<Expected> = ours.into_iter().map(actual).collect();
    let theirs: Vec<Expected> = theirs.frames.into_iter().map(expected).collect();
    assert_eq!(
        ours, theirs,
        "the batch decoder and prost read different frames"
    );

    // The stream's name cache gives the same answers the second time.
    let again: Vec<Expected> = decoder
        .decode(batch)
        .unwrap_or_else(|e| panic!("the same batch failed the second time: {e}"))
        .into_iter()
        .map(actual)
        .collect();
    assert_eq!(again, ours, "a second read through the same stream differs");

    for frame in &ours {
        if let Expected::Request(Ok(request)) = frame {
            check_request_round_trip(request);
        }
    }
}

/// A request written by the client's encoder is prost's encoding and reads back the same.
pub fn check_request_round_trip(request: &Request) {
    for streaming in [request.streaming, !request.streaming] {
        let element = fuzzing::encode_request(request, streaming);
        let mut wire = pb::Request::from(request);
        wire.streaming = streaming;
        assert_eq!(
            fuzzing::encoded_request_len(request, streaming),
            wire.encoded_len(),
            "the request length differs from prost's"
        );
        let reference = pb::ClientBatch {
            frames: vec![pb::ClientFrame {
                kind: Some(pb::client_frame::Kind::Request(wire)),
            }],
        }
        .encode_to_vec();
        assert_eq!(
            &element[..],
            &reference[..],
            "the encoding differs from prost's"
        );
        let back = BatchDecoder::new()
            .decode(&element)
            .unwrap_or_else(|e| panic!("our own encoding does not decode: {e}"));
        let [Inbound::Request(Ok(back))] = &back[..] else {
            panic!("our own encoding decodes to {back:?}");
        };
        let mut expected = request.clone();
        expected.streaming = streaming;
        assert_eq!(back, &expected, "the request changed on a round trip");
    }
}

/// Reads `batch` as a `ServerBatch` (the client's side, prost); every valid reply written by the
/// server's encoder reads back the same.
pub fn check_server_batch(batch: &Bytes) {
    let Ok(wire) = pb::ServerBatch::decode(&batch[..]) else {
        return;
    };
    for reply in wire.replies {
        let Ok(reply) = Reply::try_from(reply) else {
            continue;
        };
        let element = fuzzing::encode_reply(reply.request_id.raw(), reply.frame.clone());
        let back = pb::ServerBatch::decode(&element[..])
            .unwrap_or_else(|e| panic!("our own reply encoding does not decode: {e}"));
        let [back] = &back.replies[..] else {
            panic!("one reply encoded as {} replies", back.replies.len());
        };
        let back = Reply::try_from(back.clone())
            .unwrap_or_else(|e| panic!("our own reply encoding is invalid: {e}"));
        assert_eq!(back, reply, "the reply changed on a round trip");
    }
}
