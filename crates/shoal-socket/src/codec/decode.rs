//! Reading a `ClientBatch` straight into domain requests: names are borrowed from the received
//! bytes and shared through the stream's [`Interner`], payloads are slices of the received
//! buffer. Only a malformed encoding fails the batch; a well-formed frame with invalid content
//! (a bad name, a missing field) becomes a per-request [`Malformed`] answer.
//!
//! The reading follows prost's rules exactly, so that a batch decodes here as it would through
//! the generated types and [`Request::try_from`]: a message field (or `oneof` message variant)
//! that appears more than once is *merged* (later scalar fields win, repeated fields append), a
//! `oneof` switching variant drops the earlier value, every frame is read whole (so a malformed
//! field fails the batch even when a later field overrides it), and unknown fields are skipped
//! within prost's recursion limit as counted at their depth. A frame holding a notification (a
//! rare frame) is read by prost itself.

use bytes::{Buf, Bytes};
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, encode_varint};
use shoal_protocol::proto::runner::v1 as pb;
use shoal_protocol::{
    EntityAddress, EntityId, Headers, Notification, Request, ShardId, Snowflake, WireError,
};

use super::intern::Interner;

/// A batch that is not valid protobuf (the whole stream fails, as with prost).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed batch: {0}")]
pub struct BatchError(String);

impl From<prost::DecodeError> for BatchError {
    fn from(e: prost::DecodeError) -> Self {
        Self(e.to_string())
    }
}

fn error(what: &str) -> BatchError {
    BatchError(what.to_owned())
}

/// A well-formed request frame whose content is invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// The request id to answer.
    pub id: u64,
    /// What is wrong with the request.
    pub error: WireError,
}

/// One frame of a client batch.
#[derive(Debug)]
pub enum Inbound {
    /// A request, or the reason it cannot be delivered.
    Request(Result<Request, Malformed>),
    /// A notification.
    Notify {
        /// The id of a notified request (answered with an acceptance or a failure).
        request_id: Option<u64>,
        /// The notification, or why it is invalid.
        notification: Result<Notification, WireError>,
    },
    /// The cancellation of a request by id.
    Cancel(u64),
    /// A frame without a kind (nothing to answer).
    Empty,
}

/// prost's recursion limit: how deep messages and groups may nest, counted from the outermost
/// message (`prost::RECURSION_LIMIT`, which prost does not export).
const RECURSION_LIMIT: u32 = 100;

/// A read position in a message, with what is left of the recursion limit at its depth (what
/// prost's `DecodeContext` counts: the batch's fields see 100, a frame's 99, and so on).
struct Cursor<'a> {
    buf: &'a [u8],
    depth_left: u32,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], depth_left: u32) -> Self {
        Self { buf, depth_left }
    }

    fn next_key(&mut self) -> Result<Option<(u32, WireType)>, BatchError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        Ok(Some(decode_key(&mut self.buf)?))
    }

    fn varint(&mut self, wire_type: WireType) -> Result<u64, BatchError> {
        expect(wire_type, WireType::Varint)?;
        Ok(decode_varint(&mut self.buf)?)
    }

    fn fixed64(&mut self, wire_type: WireType) -> Result<u64, BatchError> {
        expect(wire_type, WireType::SixtyFourBit)?;
        let (bytes, rest) = self
            .buf
            .split_first_chunk::<8>()
            .ok_or_else(|| error("buffer underflow"))?;
        self.buf = rest;
        Ok(u64::from_le_bytes(*bytes))
    }

    fn delimited(&mut self, wire_type: WireType) -> Result<&'a [u8], BatchError> {
        expect(wire_type, WireType::LengthDelimited)?;
        let len = decode_varint(&mut self.buf)?;
        let len = usize::try_from(len).map_err(|_| error("buffer underflow"))?;
        if len > self.buf.len() {
            return Err(error("buffer underflow"));
        }
        let (field, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(field)
    }

    /// A nested message's field, read one level deeper.
    fn message(&mut self, wire_type: WireType) -> Result<Cursor<'a>, BatchError> {
        let bytes = self.delimited(wire_type)?;
        let depth_left = self
            .depth_left
            .checked_sub(1)
            .ok_or_else(|| error("recursion limit reached"))?;
        Ok(Cursor::new(bytes, depth_left))
    }

    fn string(&mut self, wire_type: WireType) -> Result<&'a str, BatchError> {
        std::str::from_utf8(self.delimited(wire_type)?)
            .map_err(|_| error("invalid string value: data is not UTF-8 encoded"))
    }

    /// Skips an unknown field as prost does, groups nested within the recursion limit.
    fn skip(&mut self, wire_type: WireType, tag: u32) -> Result<(), BatchError> {
        skip(&mut self.buf, wire_type, tag, self.depth_left)
    }
}

/// `prost::encoding::skip_field` with the recursion budget left at the field's depth (prost's
/// own takes a `DecodeContext`, which can only be made at the outermost depth).
fn skip(buf: &mut &[u8], wire_type: WireType, tag: u32, depth_left: u32) -> Result<(), BatchError> {
    if depth_left == 0 {
        return Err(error("recursion limit reached"));
    }
    let len = match wire_type {
        WireType::Varint => {
            decode_varint(buf)?;
            0
        }
        WireType::ThirtyTwoBit => 4,
        WireType::SixtyFourBit => 8,
        WireType::LengthDelimited => decode_varint(buf)?,
        WireType::StartGroup => loop {
            let (inner_tag, inner_wire_type) = decode_key(buf)?;
            if inner_wire_type == WireType::EndGroup {
                if inner_tag != tag {
                    return Err(error("unexpected end group tag"));
                }
                break 0;
            }
            skip(buf, inner_wire_type, inner_tag, depth_left - 1)?;
        },
        WireType::EndGroup => return Err(error("unexpected end group tag")),
    };
    let len = usize::try_from(len).map_err(|_| error("buffer underflow"))?;
    if len > buf.len() {
        return Err(error("buffer underflow"));
    }
    *buf = &buf[len..];
    Ok(())
}

fn expect(actual: WireType, expected: WireType) -> Result<(), BatchError> {
    if actual == expected {
        Ok(())
    } else {
        Err(BatchError(format!(
            "invalid wire type: {actual:?} (expected {expected:?})"
        )))
    }
}

/// Reads every frame of an encoded `ClientBatch` into `out`.
pub(crate) fn client_batch(
    batch: &Bytes,
    names: &mut Interner,
    out: &mut Vec<Inbound>,
) -> Result<(), BatchError> {
    let mut cursor = Cursor::new(batch, RECURSION_LIMIT);
    while let Some((tag, wire_type)) = cursor.next_key()? {
        match tag {
            1 => {
                let mut frame = cursor.message(wire_type)?;
                let bytes = frame.buf;
                out.push(match client_frame(batch, &mut frame, names)? {
                    Some(inbound) => inbound,
                    None => frame_by_prost(bytes)?,
                });
            }
            _ => cursor.skip(wire_type, tag)?,
        }
    }
    Ok(())
}

/// A frame's `oneof kind` as read so far (prost semantics: the same message variant again is
/// merged into it, another variant replaces it).
enum Kind<'a> {
    None,
    Request(RawRequest<'a>),
    Cancel(u64),
}

/// Reads a frame; `None` when it holds a notification, which [`frame_by_prost`] reads.
fn client_frame(
    batch: &Bytes,
    cursor: &mut Cursor<'_>,
    names: &mut Interner,
) -> Result<Option<Inbound>, BatchError> {
    let mut kind = Kind::None;
    while let Some((tag, wire_type)) = cursor.next_key()? {
        match tag {
            1 => {
                let mut request = cursor.message(wire_type)?;
                if !matches!(kind, Kind::Request(_)) {
                    kind = Kind::Request(RawRequest::default());
                }
                if let Kind::Request(raw) = &mut kind {
                    merge_request(raw, &mut request)?;
                }
            }
            // Notifications are rare: the whole frame is read by prost.
            2 => return Ok(None),
            3 => kind = Kind::Cancel(cursor.fixed64(wire_type)?),
            _ => cursor.skip(wire_type, tag)?,
        }
    }
    Ok(Some(match kind {
        Kind::None => Inbound::Empty,
        Kind::Request(raw) => {
            let id = raw.id;
            Inbound::Request(validate(batch, raw, names).map_err(|error| Malformed { id, error }))
        }
        Kind::Cancel(id) => Inbound::Cancel(id),
    }))
}

/// Reads a frame (the bytes of a batch's `frames` field) with prost and the generated
/// conversions, at the depth it has in a batch.
fn frame_by_prost(frame: &[u8]) -> Result<Inbound, BatchError> {
    use pb::client_frame::Kind;
    // `message::merge` reads the length prefix itself, and counts the frame's fields one level
    // below its context: the default context (that of a batch's fields) gives the frame's fields
    // the depth they have in a batch.
    let mut prefix = [0u8; 10];
    let unused = {
        let mut space = &mut prefix[..];
        encode_varint(frame.len() as u64, &mut space);
        space.len()
    };
    let mut buf = prefix[..prefix.len() - unused].chain(frame);
    let mut wire = pb::ClientFrame::default();
    prost::encoding::message::merge(
        WireType::LengthDelimited,
        &mut wire,
        &mut buf,
        DecodeContext::default(),
    )?;
    Ok(match wire.kind {
        None => Inbound::Empty,
        Some(Kind::Request(wire)) => {
            let id = wire.request_id;
            Inbound::Request(Request::try_from(wire).map_err(|error| Malformed { id, error }))
        }
        Some(Kind::Notify(wire)) => Inbound::Notify {
            request_id: match &wire.kind {
                Some(pb::notification::Kind::Request(r)) => Some(r.request_id),
                _ => None,
            },
            notification: Notification::try_from(wire),
        },
        Some(Kind::Cancel(id)) => Inbound::Cancel(id),
    })
}

#[derive(Default)]
struct RawShard<'a> {
    group: &'a str,
    id: u32,
}

#[derive(Default)]
struct RawAddress<'a> {
    shard: Option<RawShard<'a>>,
    entity_type: &'a str,
    entity_id: &'a str,
}

fn merge_shard<'a>(shard: &mut RawShard<'a>, cursor: &mut Cursor<'a>) -> Result<(), BatchError> {
    while let Some((tag, wire_type)) = cursor.next_key()? {
        match tag {
            1 => shard.group = cursor.string(wire_type)?,
            // uint32: prost keeps the low 32 bits.
            2 => shard.id = cursor.varint(wire_type)? as u32,
            _ => cursor.skip(wire_type, tag)?,
        }
    }
    Ok(())
}

fn merge_address<'a>(
    address: &mut RawAddress<'a>,
    cursor: &mut Cursor<'a>,
) -> Result<(), BatchError> {
    while let Some((tag, wire_type)) = cursor.next_key()? {
        match tag {
            1 => {
                let mut shard = cursor.message(wire_type)?;
                merge_shard(
                    address.shard.get_or_insert_with(RawShard::default),
                    &mut shard,
                )?;
            }
            2 => address.entity_type = cursor.string(wire_type)?,
            3 => address.entity_id = cursor.string(wire_type)?,
            _ => cursor.skip(wire_type, tag)?,
        }
    }
    Ok(())
}

fn header<'a>(cursor: &mut Cursor<'a>) -> Result<(&'a str, &'a str), BatchError> {
    let (mut name, mut value) = ("", "");
    while let Some((tag, wire_type)) = cursor.next_key()? {
        match tag {
            1 => name = cursor.string(wire_type)?,
            2 => value = cursor.string(wire_type)?,
            _ => cursor.skip(wire_type, tag)?,
        }
    }
    Ok((name, value))
}

/// A request's fields as read, before validation.
#[derive(Default)]
struct RawRequest<'a> {
    id: u64,
    address: Option<RawAddress<'a>>,
    tag: &'a str,
    payload: &'a [u8],
    headers: Headers,
    persisted: bool,
    timeout_ms: u32,
    streaming: bool,
}

fn merge_request<'a>(raw: &mut RawRequest<'a>, cursor: &mut Cursor<'a>) -> Result<(), BatchError> {
    while let Some((tag, wire_type)) = cursor.next_key()? {
        match tag {
            1 => raw.id = cursor.fixed64(wire_type)?,
            2 => {
                let mut address = cursor.message(wire_type)?;
                merge_address(
                    raw.address.get_or_insert_with(RawAddress::default),
                    &mut address,
                )?;
            }
            3 => raw.tag = cursor.string(wire_type)?,
            4 => raw.payload = cursor.delimited(wire_type)?,
            5 => {
                let (name, value) = header(&mut cursor.message(wire_type)?)?;
                raw.headers.push(name, value);
            }
            6 => raw.persisted = cursor.varint(wire_type)? != 0,
            7 => raw.timeout_ms = cursor.varint(wire_type)? as u32,
            8 => raw.streaming = cursor.varint(wire_type)? != 0,
            _ => cursor.skip(wire_type, tag)?,
        }
    }
    Ok(())
}

/// The checks of the generated conversion (`Request::try_from`), in the same order.
fn validate(
    batch: &Bytes,
    raw: RawRequest<'_>,
    names: &mut Interner,
) -> Result<Request, WireError> {
    let address = raw.address.ok_or(WireError::MissingField("address"))?;
    let shard = address
        .shard
        .ok_or(WireError::MissingField("address.shard"))?;
    let group = names.group(shard.group)?;
    let shard_id = std::num::NonZeroU32::new(shard.id).ok_or(WireError::ZeroShardId)?;
    let entity_type = names.entity_type(address.entity_type)?;
    let entity_id = EntityId::new(address.entity_id).map_err(|source| WireError::InvalidName {
        field: "address.entity_id",
        source,
    })?;
    let tag = names.tag(raw.tag)?;
    let payload = if raw.payload.is_empty() {
        Bytes::new()
    } else {
        batch.slice_ref(raw.payload)
    };
    Ok(Request {
        id: Snowflake::from_raw(raw.id),
        address: EntityAddress::new(ShardId::new(group, shard_id), entity_type, entity_id),
        tag,
        payload,
        headers: raw.headers,
        persisted: raw.persisted,
        timeout: (raw.timeout_ms > 0)
            .then(|| std::time::Duration::from_millis(raw.timeout_ms.into())),
        streaming: raw.streaming,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use prost::Message as _;

    use super::*;

    fn wire_request(id: u64, entity_id: &str) -> pb::Request {
        pb::Request {
            request_id: id,
            address: Some(pb::EntityAddress {
                shard: Some(pb::ShardId {
                    group: "default".to_owned(),
                    id: 3,
                }),
                entity_type: "counter".to_owned(),
                entity_id: entity_id.to_owned(),
            }),
            tag: "increment".to_owned(),
            payload: Bytes::from_static(br#"{"by":1}"#),
            headers: vec![pb::Header {
                name: "trace".to_owned(),
                value: "abc".to_owned(),
            }],
            persisted: true,
            timeout_ms: 1500,
            streaming: true,
        }
    }

    fn frame(kind: pb::client_frame::Kind) -> pb::ClientFrame {
        pb::ClientFrame { kind: Some(kind) }
    }

    fn decode(batch: &pb::ClientBatch) -> Result<Vec<Inbound>, BatchError> {
        let bytes = Bytes::from(batch.encode_to_vec());
        let mut out = Vec::new();
        client_batch(&bytes, &mut Interner::default(), &mut out)?;
        Ok(out)
    }

    #[test]
    fn requests_decode_like_the_generated_conversion() {
        let wires = [
            wire_request(1, "a"),
            wire_request(2, "ü/42"),
            pb::Request::default(),
            pb::Request {
                address: Some(pb::EntityAddress::default()),
                ..wire_request(4, "x")
            },
            pb::Request {
                address: Some(pb::EntityAddress {
                    shard: Some(pb::ShardId {
                        group: "default".to_owned(),
                        id: 0,
                    }),
                    ..Default::default()
                }),
                ..wire_request(5, "x")
            },
            wire_request(6, ""),
            pb::Request {
                tag: "bad\ntag".to_owned(),
                ..wire_request(7, "x")
            },
            pb::Request {
                headers: Vec::new(),
                payload: Bytes::new(),
                timeout_ms: 0,
                persisted: false,
                streaming: false,
                ..wire_request(8, "y")
            },
        ];
        let batch = pb::ClientBatch {
            frames: wires
                .iter()
                .cloned()
                .map(|w| frame(pb::client_frame::Kind::Request(w)))
                .collect(),
        };
        let decoded = decode(&batch).unwrap();
        assert_eq!(decoded.len(), wires.len());
        for (wire, inbound) in wires.into_iter().zip(decoded) {
            let id = wire.request_id;
            let expected = Request::try_from(wire).map_err(|error| Malformed { id, error });
            let Inbound::Request(actual) = inbound else {
                panic!("not a request: {inbound:?}");
            };
            assert_eq!(actual, expected);
        }
    }

    #[test]
    fn notifications_cancels_and_empty_frames() {
        let batch = pb::ClientBatch {
            frames: vec![
                frame(pb::client_frame::Kind::Notify(pb::Notification {
                    kind: Some(pb::notification::Kind::Request(wire_request(9, "n"))),
                })),
                frame(pb::client_frame::Kind::Cancel(11)),
                pb::ClientFrame { kind: None },
                frame(pb::client_frame::Kind::Notify(pb::Notification {
                    kind: None,
                })),
            ],
        };
        let decoded = decode(&batch).unwrap();
        assert!(matches!(
            &decoded[0],
            Inbound::Notify { request_id: Some(9), notification: Ok(Notification::Request(r)) }
                if r.timeout == Some(Duration::from_millis(1500))
        ));
        assert!(matches!(decoded[1], Inbound::Cancel(11)));
        assert!(matches!(decoded[2], Inbound::Empty));
        assert!(matches!(
            decoded[3],
            Inbound::Notify {
                request_id: None,
                notification: Err(_)
            }
        ));
    }

    #[test]
    fn garbage_fails_the_batch_without_panicking() {
        let good = pb::ClientBatch {
            frames: vec![frame(pb::client_frame::Kind::Request(wire_request(1, "a")))],
        }
        .encode_to_vec();
        // Every truncation, and some bit flips, either decode or fail cleanly.
        for len in 0..good.len() {
            let bytes = Bytes::copy_from_slice(&good[..len]);
            let _ = client_batch(&bytes, &mut Interner::default(), &mut Vec::new());
        }
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[i] ^= 1 << bit;
                let bytes = Bytes::from(bad);
                let _ = client_batch(&bytes, &mut Interner::default(), &mut Vec::new());
            }
        }
        let junk = Bytes::from_static(&[0xff; 32]);
        assert!(client_batch(&junk, &mut Interner::default(), &mut Vec::new()).is_err());
    }

    /// What prost and the generated conversion read from `batch`, as `Debug` text (or `None`
    /// when prost refuses it).
    fn by_prost(batch: &[u8]) -> Option<String> {
        let frames = pb::ClientBatch::decode(batch).ok()?.frames;
        Some(format!(
            "{:?}",
            frames
                .into_iter()
                .map(|f| match f.kind {
                    Some(pb::client_frame::Kind::Request(w)) => {
                        let id = w.request_id;
                        format!(
                            "{:?}",
                            Request::try_from(w).map_err(|error| Malformed { id, error })
                        )
                    }
                    Some(pb::client_frame::Kind::Notify(w)) =>
                        format!("{:?}", Notification::try_from(w)),
                    Some(pb::client_frame::Kind::Cancel(id)) => format!("cancel {id}"),
                    None => "empty".to_owned(),
                })
                .collect::<Vec<_>>()
        ))
    }

    fn by_us(batch: &[u8]) -> Option<String> {
        let mut out = Vec::new();
        client_batch(
            &Bytes::copy_from_slice(batch),
            &mut Interner::default(),
            &mut out,
        )
        .ok()?;
        Some(format!(
            "{:?}",
            out.into_iter()
                .map(|f| match f {
                    Inbound::Request(r) => format!("{r:?}"),
                    Inbound::Notify { notification, .. } => format!("{notification:?}"),
                    Inbound::Cancel(id) => format!("cancel {id}"),
                    Inbound::Empty => "empty".to_owned(),
                })
                .collect::<Vec<_>>()
        ))
    }

    fn field(tag: u32, body: &[u8], out: &mut Vec<u8>) {
        prost::encoding::encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(body.len() as u64, out);
        out.extend_from_slice(body);
    }

    fn batch_of_frame(frame: &[u8]) -> Vec<u8> {
        let mut batch = Vec::new();
        field(1, frame, &mut batch);
        batch
    }

    /// A request field given twice in one frame is merged, as prost does (the decoder used to
    /// keep the second alone, and an address given twice lost the first one's shard).
    #[test]
    fn repeated_message_fields_merge_like_prost() {
        let full = wire_request(1, "a");
        let partial = pb::Request {
            request_id: 2,
            address: Some(pb::EntityAddress {
                shard: None,
                entity_type: String::new(),
                entity_id: "b".to_owned(),
            }),
            ..Default::default()
        };
        let mut frame = Vec::new();
        field(1, &full.encode_to_vec(), &mut frame);
        field(1, &partial.encode_to_vec(), &mut frame);
        let batch = batch_of_frame(&frame);
        assert!(by_prost(&batch).is_some_and(|p| p.contains("Ok(Request")));
        assert_eq!(by_us(&batch), by_prost(&batch));
    }

    /// A malformed request overridden by a later cancel in the same frame still fails the batch
    /// (prost reads every field).
    #[test]
    fn overridden_fields_are_still_read() {
        let mut frame = Vec::new();
        field(1, &[0x1a, 0x01, 0xff], &mut frame); // tag: one byte, not UTF-8
        frame.push(0x19); // field 3 (cancel), fixed64
        frame.extend_from_slice(&7u64.to_le_bytes());
        let batch = batch_of_frame(&frame);
        assert_eq!(by_prost(&batch), None);
        assert_eq!(by_us(&batch), None);
    }

    /// Unknown groups nested near prost's recursion limit are refused at the same depth as
    /// prost refuses them, in a request and in a notification.
    #[test]
    fn nested_groups_hit_the_recursion_limit_like_prost() {
        let groups = |depth: usize| {
            let mut bytes = vec![0x4b; depth]; // field 9, start group
            bytes.extend(std::iter::repeat_n(0x4c, depth)); // field 9, end group
            bytes
        };
        for depth in 90..=100 {
            let mut request = wire_request(1, "a").encode_to_vec();
            request.extend(groups(depth));
            let mut frame = Vec::new();
            field(1, &request, &mut frame);
            let batch = batch_of_frame(&frame);
            assert_eq!(by_us(&batch), by_prost(&batch), "request, depth {depth}");

            let mut notification = Vec::new();
            field(1, &request, &mut notification);
            let mut frame = Vec::new();
            field(2, &notification, &mut frame);
            let batch = batch_of_frame(&frame);
            assert_eq!(
                by_us(&batch),
                by_prost(&batch),
                "notification, depth {depth}"
            );
        }
    }
}
