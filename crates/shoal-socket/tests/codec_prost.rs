//! The batch stream's hand-written codec agrees with prost on every message: what the client's
//! encoder writes is prost's encoding and reads back the same through prost and the generated
//! conversions; what prost writes (valid or not, split into pieces, with unknown fields) the
//! server's decoder reads exactly as prost and the conversions do; replies likewise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message as _;
use prost::encoding::{WireType, encode_key, encode_varint};
use shoal_protocol::proto::runner::v1 as pb;
use shoal_protocol::{
    Chunk, EntityAddress, ErrorCode, Failure, Headers, Notification, Reply, ReplyFrame, Request,
    ShardId, Snowflake, WireError,
};
use shoal_socket::fuzzing::{
    BatchDecoder, Inbound, Malformed, encode_reply, encode_request, encoded_request_len,
};

// ---- What prost and the conversions make of a frame (the reference) ----

#[derive(Debug, PartialEq)]
enum Frame {
    Request(Result<Request, Malformed>),
    Notify(Option<u64>, Result<Notification, WireError>),
    Cancel(u64),
    Empty,
}

fn by_prost(batch: &[u8]) -> Result<Vec<Frame>, prost::DecodeError> {
    use pb::client_frame::Kind;
    Ok(pb::ClientBatch::decode(batch)?
        .frames
        .into_iter()
        .map(|frame| match frame.kind {
            None => Frame::Empty,
            Some(Kind::Request(wire)) => {
                let id = wire.request_id;
                Frame::Request(Request::try_from(wire).map_err(|error| Malformed { id, error }))
            }
            Some(Kind::Notify(wire)) => Frame::Notify(
                match &wire.kind {
                    Some(pb::notification::Kind::Request(r)) => Some(r.request_id),
                    _ => None,
                },
                Notification::try_from(wire),
            ),
            Some(Kind::Cancel(id)) => Frame::Cancel(id),
        })
        .collect())
}

fn by_ours(batch: &[u8]) -> Option<Vec<Frame>> {
    let frames = BatchDecoder::new()
        .decode(&Bytes::copy_from_slice(batch))
        .ok()?;
    Some(
        frames
            .into_iter()
            .map(|frame| match frame {
                Inbound::Request(r) => Frame::Request(r),
                Inbound::Notify {
                    request_id,
                    notification,
                } => Frame::Notify(request_id, notification),
                Inbound::Cancel(id) => Frame::Cancel(id),
                Inbound::Empty => Frame::Empty,
            })
            .collect(),
    )
}

/// Both decoders fail, or both read the same frames.
fn agree(batch: &[u8]) -> Result<(), TestCaseError> {
    match (by_ours(batch), by_prost(batch)) {
        (None, Err(_)) => Ok(()),
        (Some(ours), Ok(theirs)) => {
            prop_assert_eq!(ours, theirs);
            Ok(())
        }
        (ours, theirs) => Err(TestCaseError::fail(format!(
            "disagree on {batch:02x?}:\n ours: {ours:?}\n prost: {theirs:?}"
        ))),
    }
}

// ---- Strategies ----

/// Valid names of at most `max` bytes: printable, some non-ASCII, `:` and `/` included, and
/// the longest allowed.
fn name(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9_]{0,12}",
        "[a-zA-Z0-9 _:/ü€-]{1,20}",
        Just("x".repeat(max)),
    ]
}

/// Any text, valid as a name or not (empty, control characters, too long).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => name(512),
        1 => Just(String::new()),
        1 => "[\\x00-\\x1f]{1,3}",
        1 => Just("y".repeat(2000)),
    ]
}

fn wide_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(u64::MAX),
        Just(1 << 63),
        any::<u64>()
    ]
}

fn wide_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(u32::MAX),
        Just(1 << 31),
        any::<u32>()
    ]
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        vec(any::<u8>(), 0..64),
        Just(vec![7; 300])
    ]
}

/// A valid domain request (timeouts in whole milliseconds, as the wire carries them).
fn request() -> impl Strategy<Value = Request> {
    (
        wide_u64(),
        (name(64), 1..=u32::MAX, name(150), name(512), name(128)),
        payload(),
        vec((prop_oneof![name(20), Just(String::new())], text()), 0..4),
        any::<bool>(),
        prop_oneof![Just(None), (1..=u32::MAX).prop_map(Some)],
        any::<bool>(),
    )
        .prop_map(
            |(
                id,
                (group, shard, ty, entity, tag),
                payload,
                headers,
                persisted,
                timeout,
                streaming,
            )| {
                let shard: ShardId = format!("{group}:{shard}").parse().unwrap();
                let mut h = Headers::new();
                for (name, value) in headers {
                    h.push(name, value);
                }
                Request {
                    id: Snowflake::from_raw(id),
                    address: EntityAddress::new(
                        shard,
                        ty.parse().unwrap(),
                        entity.parse().unwrap(),
                    ),
                    tag: tag.parse().unwrap(),
                    payload: Bytes::from(payload),
                    headers: h,
                    persisted,
                    timeout: timeout.map(|ms| Duration::from_millis(ms.into())),
                    streaming,
                }
            },
        )
}

fn wire_shard() -> impl Strategy<Value = Option<pb::ShardId>> {
    prop_oneof![
        1 => Just(None),
        6 => (text(), wide_u32()).prop_map(|(group, id)| Some(pb::ShardId { group, id })),
    ]
}

fn wire_address() -> impl Strategy<Value = Option<pb::EntityAddress>> {
    prop_oneof![
        1 => Just(None),
        6 => (wire_shard(), text(), text()).prop_map(|(shard, entity_type, entity_id)| {
            Some(pb::EntityAddress { shard, entity_type, entity_id })
        }),
    ]
}

/// Any wire request: valid or not.
fn wire_request() -> impl Strategy<Value = pb::Request> {
    (
        wide_u64(),
        wire_address(),
        text(),
        payload(),
        vec((text(), text()), 0..3),
        (any::<bool>(), wide_u32(), any::<bool>()),
    )
        .prop_map(
            |(request_id, address, tag, payload, headers, (persisted, timeout_ms, streaming))| {
                pb::Request {
                    request_id,
                    address,
                    tag,
                    payload: Bytes::from(payload),
                    headers: headers
                        .into_iter()
                        .map(|(name, value)| pb::Header { name, value })
                        .collect(),
                    persisted,
                    timeout_ms,
                    streaming,
                }
            },
        )
}

fn wire_frame() -> impl Strategy<Value = pb::ClientFrame> {
    use pb::client_frame::Kind;
    prop_oneof![
        6 => wire_request().prop_map(|r| Some(Kind::Request(r))),
        1 => wire_request().prop_map(|r| Some(Kind::Notify(pb::Notification {
            kind: Some(pb::notification::Kind::Request(r)),
        }))),
        1 => wire_address().prop_map(|address| Some(Kind::Notify(pb::Notification {
            kind: Some(pb::notification::Kind::Interrupt(pb::Interrupt {
                envelope_id: 1,
                request_id: 2,
                address,
                persisted: true,
            })),
        }))),
        1 => Just(Some(Kind::Notify(pb::Notification { kind: None }))),
        1 => wide_u64().prop_map(|id| Some(Kind::Cancel(id))),
        1 => Just(None),
    ]
    .prop_map(|kind| pb::ClientFrame { kind })
}

/// One unknown field (a tag no message here uses) of any wire type, well formed.
fn unknown_field() -> impl Strategy<Value = Vec<u8>> {
    (9u32..=536_870_911, 0u8..4, wide_u64(), payload()).prop_map(|(tag, kind, n, bytes)| {
        let mut out = Vec::new();
        match kind {
            0 => {
                encode_key(tag, WireType::Varint, &mut out);
                encode_varint(n, &mut out);
            }
            1 => {
                encode_key(tag, WireType::SixtyFourBit, &mut out);
                out.extend_from_slice(&n.to_le_bytes());
            }
            2 => {
                encode_key(tag, WireType::ThirtyTwoBit, &mut out);
                out.extend_from_slice(&(n as u32).to_le_bytes());
            }
            _ => {
                encode_key(tag, WireType::LengthDelimited, &mut out);
                encode_varint(bytes.len() as u64, &mut out);
                out.extend_from_slice(&bytes);
            }
        }
        out
    })
}

fn delimited(tag: u32, body: &[u8], out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

fn reply() -> impl Strategy<Value = Reply> {
    let frame = prop_oneof![
        payload().prop_map(|v| ReplyFrame::Value(Bytes::from(v))),
        (text(), payload()).prop_map(|(message, detail)| {
            let mut failure = Failure::new(ErrorCode::Handler, message);
            failure.detail = Bytes::from(detail);
            ReplyFrame::Failure(failure)
        }),
        (wide_u64(), wide_u32(), vec(payload(), 0..3)).prop_map(|(id, sequence, values)| {
            ReplyFrame::Chunk(Chunk {
                reply_id: Snowflake::from_raw(id),
                sequence,
                values: values.into_iter().map(Bytes::from).collect(),
            })
        }),
        Just(ReplyFrame::End),
    ];
    (wide_u64(), frame).prop_map(|(id, frame)| Reply {
        request_id: Snowflake::from_raw(id),
        frame,
    })
}

// ---- Properties ----

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Ours → prost: the client's bytes are prost's, and prost reads them back to the request.
    #[test]
    fn client_encoding_is_prosts(request in request(), streaming in any::<bool>()) {
        let ours = encode_request(&request, streaming);
        let mut wire = pb::Request::from(&request);
        wire.streaming = streaming;
        prop_assert_eq!(encoded_request_len(&request, streaming), wire.encoded_len());
        let theirs = pb::ClientBatch {
            frames: vec![pb::ClientFrame { kind: Some(pb::client_frame::Kind::Request(wire)) }],
        }
        .encode_to_vec();
        prop_assert_eq!(&ours[..], &theirs[..]);
        let mut expected = request.clone();
        expected.streaming = streaming;
        prop_assert_eq!(by_prost(&ours).unwrap(), vec![Frame::Request(Ok(expected.clone()))]);
        // And ours reads its own bytes the same way.
        prop_assert_eq!(by_ours(&ours).unwrap(), vec![Frame::Request(Ok(expected))]);
    }

    /// Prost → ours: any batch prost writes, valid or not, reads the same through both.
    #[test]
    fn server_decoding_is_prosts(frames in vec(wire_frame(), 0..6)) {
        let batch = pb::ClientBatch { frames }.encode_to_vec();
        agree(&batch)?;
    }

    /// Unknown fields anywhere (batch, frame, request, address, shard) are skipped alike.
    #[test]
    fn unknown_fields_are_skipped_alike(
        request in wire_request(),
        unknown in vec(unknown_field(), 5),
    ) {
        let mut shard = Vec::new();
        let mut address = Vec::new();
        if let Some(a) = &request.address {
            if let Some(s) = &a.shard {
                shard = s.encode_to_vec();
            }
            let mut a = a.clone();
            a.shard = None;
            address = a.encode_to_vec();
        }
        shard.extend_from_slice(&unknown[4]);
        delimited(1, &shard, &mut address);
        address.extend_from_slice(&unknown[3]);
        let mut without_address = request.clone();
        without_address.address = None;
        let mut req = without_address.encode_to_vec();
        delimited(2, &address, &mut req);
        req.extend_from_slice(&unknown[2]);
        let mut frame = unknown[1].clone();
        delimited(1, &req, &mut frame);
        let mut batch = unknown[0].clone();
        delimited(1, &frame, &mut batch);
        batch.extend_from_slice(&unknown[0]);
        agree(&batch)?;
    }

    /// A message field that appears twice is merged (prost's rule), a `oneof` that switches
    /// kind keeps the last; both decoders do the same.
    #[test]
    fn repeated_message_fields_merge_alike(
        first in wire_request(),
        second in wire_request(),
        cancel in prop_oneof![Just(None), wide_u64().prop_map(Some)],
        split_address in any::<bool>(),
    ) {
        let mut frame = Vec::new();
        delimited(1, &first.encode_to_vec(), &mut frame);
        if let Some(id) = cancel {
            encode_key(3, WireType::SixtyFourBit, &mut frame);
            frame.extend_from_slice(&id.to_le_bytes());
        }
        let mut second_bytes = second.encode_to_vec();
        if split_address && let Some(address) = &first.address {
            // The address again, inside the second piece: merged into the first's.
            delimited(2, &address.encode_to_vec(), &mut second_bytes);
        }
        delimited(1, &second_bytes, &mut frame);
        let mut batch = Vec::new();
        delimited(1, &frame, &mut batch);
        agree(&batch)?;
    }

    /// Truncated and corrupted batches fail (or succeed) alike.
    #[test]
    fn damaged_batches_fail_alike(
        frames in vec(wire_frame(), 1..3),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let batch = pb::ClientBatch { frames }.encode_to_vec();
        agree(&batch[..cut.index(batch.len() + 1)])?;
        let mut flipped = batch.clone();
        let at = flip.index(flipped.len());
        flipped[at] ^= 1 << bit;
        agree(&flipped)?;
    }

    /// Replies: the server's bytes are prost's, and read back (prost) to the same reply.
    #[test]
    fn reply_encoding_is_prosts(replies in vec(reply(), 0..5)) {
        let mut ours = Vec::new();
        for reply in &replies {
            ours.extend_from_slice(&encode_reply(reply.request_id.raw(), reply.frame.clone()));
        }
        let theirs = pb::ServerBatch {
            replies: replies.iter().map(pb::Reply::from).collect(),
        }
        .encode_to_vec();
        prop_assert_eq!(&ours[..], &theirs[..]);
        let back: Vec<Reply> = pb::ServerBatch::decode(&ours[..])
            .unwrap()
            .replies
            .into_iter()
            .map(|r| Reply::try_from(r).unwrap())
            .collect();
        prop_assert_eq!(back, replies);
    }
}

/// Edge cases written by hand: the largest varints, a varint longer than it needs to be, a
/// shard id past `u32` (prost keeps the low 32 bits), an empty batch.
#[test]
fn edge_encodings_decode_alike() {
    agree(&[]).unwrap();
    let shard = |id: &[u8]| {
        let mut shard = Vec::new();
        delimited(1, b"default", &mut shard);
        shard.push(0x10); // field 2, varint
        shard.extend_from_slice(id);
        let mut address = Vec::new();
        delimited(1, &shard, &mut address);
        delimited(2, b"counter", &mut address);
        delimited(3, b"a", &mut address);
        let mut request = Vec::new();
        delimited(2, &address, &mut request);
        delimited(3, b"get", &mut request);
        request.push(0x38); // field 7 (timeout_ms), varint
        request.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        let mut frame = Vec::new();
        delimited(1, &request, &mut frame);
        let mut batch = Vec::new();
        delimited(1, &frame, &mut batch);
        batch
    };
    for id in [
        &[0x01][..],
        &[0x81, 0x80, 0x80, 0x80, 0x00], // 1, padded
        &[0xff, 0xff, 0xff, 0xff, 0x0f], // u32::MAX
        &[0x80, 0x80, 0x80, 0x80, 0x10], // 2^32: low bits 0
        &[0x81, 0x80, 0x80, 0x80, 0x10], // 2^32 + 1
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], // u64::MAX
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02], // overflow: invalid
        &[
            0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
        ], // 11 bytes
    ] {
        agree(&shard(id)).unwrap();
    }
    let decoded = by_ours(&shard(&[0x81, 0x80, 0x80, 0x80, 0x10])).unwrap();
    let [Frame::Request(Ok(request))] = &decoded[..] else {
        panic!("{decoded:?}");
    };
    assert_eq!(request.address.shard.id(), 1);
    assert_eq!(
        request.timeout,
        Some(Duration::from_millis(u32::MAX.into()))
    );
}
