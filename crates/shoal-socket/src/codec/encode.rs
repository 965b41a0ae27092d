//! Writing batch elements straight from the domain types, without building the generated wire
//! structs first (which would copy every name into a fresh `String`).
//!
//! A `ClientBatch` is a sequence of `frames` fields (tag 1) and a `ServerBatch` a sequence of
//! `replies` fields (tag 1), so a batch is the concatenation of its elements: each caller encodes
//! its own element and the writer only appends bytes. The output is the same as prost's encoding
//! of the generated messages (checked by the tests below).

use bytes::BufMut;
use prost::Message as _;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use shoal_protocol::proto::runner::v1 as pb;
use shoal_protocol::{EntityAddress, Reply, ReplyFrame, Request};

/// Length of a length-delimited field holding `len` bytes.
fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn put_delimited_header(tag: u32, len: usize, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

/// Length of a string or bytes field (omitted when empty, as proto3 does).
fn bytes_field_len(tag: u32, value: &[u8]) -> usize {
    if value.is_empty() {
        0
    } else {
        delimited_len(tag, value.len())
    }
}

fn put_bytes_field(tag: u32, value: &[u8], buf: &mut impl BufMut) {
    if !value.is_empty() {
        put_delimited_header(tag, value.len(), buf);
        buf.put_slice(value);
    }
}

fn varint_field_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(value)
    }
}

fn put_varint_field(tag: u32, value: u64, buf: &mut impl BufMut) {
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

fn fixed64_field_len(tag: u32, value: u64) -> usize {
    if value == 0 { 0 } else { key_len(tag) + 8 }
}

fn put_fixed64_field(tag: u32, value: u64, buf: &mut impl BufMut) {
    if value != 0 {
        encode_key(tag, WireType::SixtyFourBit, buf);
        buf.put_u64_le(value);
    }
}

/// `timeout_ms` as the generated conversion computes it.
fn timeout_ms(request: &Request) -> u64 {
    request
        .timeout
        .map(|t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX).max(1))
        .unwrap_or(0)
        .into()
}

fn shard_len(address: &EntityAddress) -> usize {
    bytes_field_len(1, address.shard.group().as_str().as_bytes())
        + varint_field_len(2, address.shard.id().into())
}

fn address_len(address: &EntityAddress) -> usize {
    delimited_len(1, shard_len(address))
        + bytes_field_len(2, address.entity_type.as_str().as_bytes())
        + bytes_field_len(3, address.entity_id.as_str().as_bytes())
}

fn put_address(address: &EntityAddress, buf: &mut impl BufMut) {
    put_delimited_header(1, shard_len(address), buf);
    put_bytes_field(1, address.shard.group().as_str().as_bytes(), buf);
    put_varint_field(2, address.shard.id().into(), buf);
    put_bytes_field(2, address.entity_type.as_str().as_bytes(), buf);
    put_bytes_field(3, address.entity_id.as_str().as_bytes(), buf);
}

fn header_len(name: &str, value: &str) -> usize {
    bytes_field_len(1, name.as_bytes()) + bytes_field_len(2, value.as_bytes())
}

/// Encoded length of a `Request` message (`streaming` as given).
fn request_len(request: &Request, streaming: bool) -> usize {
    fixed64_field_len(1, request.id.raw())
        + delimited_len(2, address_len(&request.address))
        + bytes_field_len(3, request.tag.as_str().as_bytes())
        + bytes_field_len(4, &request.payload)
        + request
            .headers
            .iter()
            .map(|(name, value)| delimited_len(5, header_len(name, value)))
            .sum::<usize>()
        + varint_field_len(6, request.persisted.into())
        + varint_field_len(7, timeout_ms(request))
        + varint_field_len(8, streaming.into())
}

fn put_request(request: &Request, streaming: bool, buf: &mut impl BufMut) {
    put_fixed64_field(1, request.id.raw(), buf);
    put_delimited_header(2, address_len(&request.address), buf);
    put_address(&request.address, buf);
    put_bytes_field(3, request.tag.as_str().as_bytes(), buf);
    put_bytes_field(4, &request.payload, buf);
    for (name, value) in request.headers.iter() {
        put_delimited_header(5, header_len(name, value), buf);
        put_bytes_field(1, name.as_bytes(), buf);
        put_bytes_field(2, value.as_bytes(), buf);
    }
    put_varint_field(6, request.persisted.into(), buf);
    put_varint_field(7, timeout_ms(request), buf);
    put_varint_field(8, streaming.into(), buf);
}

/// A request frame ready to be appended to a `ClientBatch`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestFrame<'a> {
    request: &'a Request,
    streaming: bool,
    request_len: usize,
    frame_len: usize,
}

impl<'a> RequestFrame<'a> {
    /// `request` as a `ClientFrame { request }` (with `streaming` overriding the request's flag).
    pub(crate) fn new(request: &'a Request, streaming: bool) -> Self {
        let request_len = request_len(request, streaming);
        Self {
            request,
            streaming,
            request_len,
            frame_len: delimited_len(1, request_len),
        }
    }

    /// The encoded size of the request message alone (what the size limit applies to).
    pub(crate) fn request_len(&self) -> usize {
        self.request_len
    }

    /// The bytes this frame adds to a batch.
    pub(crate) fn element_len(&self) -> usize {
        delimited_len(1, self.frame_len)
    }

    /// Appends the batch element (`frames` field → `ClientFrame` → `request`).
    pub(crate) fn put(&self, buf: &mut impl BufMut) {
        put_delimited_header(1, self.frame_len, buf);
        put_delimited_header(1, self.request_len, buf);
        put_request(self.request, self.streaming, buf);
    }
}

/// Appends any client frame as a batch element (through the generated types; for the rare
/// frames: notifications and cancellations).
pub(crate) fn put_client_frame(frame: &pb::ClientFrame, buf: &mut impl BufMut) {
    prost::encoding::message::encode(1, frame, buf);
}

/// The bytes a client frame adds to a batch.
pub(crate) fn client_frame_element_len(frame: &pb::ClientFrame) -> usize {
    delimited_len(1, frame.encoded_len())
}

/// Appends a reply as a `ServerBatch` element. Values (the common case) are written directly;
/// other frames go through the generated types.
pub(crate) fn put_reply(request_id: u64, frame: ReplyFrame, buf: &mut impl BufMut) {
    match frame {
        ReplyFrame::Value(value) => {
            // `value` is in a oneof: written even when empty.
            let reply_len = fixed64_field_len(1, request_id) + delimited_len(2, value.len());
            put_delimited_header(1, reply_len, buf);
            put_fixed64_field(1, request_id, buf);
            put_delimited_header(2, value.len(), buf);
            buf.put_slice(&value);
        }
        frame => {
            let reply = pb::Reply::from(Reply {
                request_id: shoal_protocol::Snowflake::from_raw(request_id),
                frame,
            });
            prost::encoding::message::encode(1, &reply, buf);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use bytes::{Bytes, BytesMut};
    use prost::Message as _;
    use shoal_protocol::{Chunk, ErrorCode, Failure, Headers, Snowflake};

    use super::*;

    fn request(payload: &[u8], headers: Headers, timeout: Option<Duration>) -> Request {
        Request {
            id: Snowflake::from_raw(0x0123_4567_89ab_cdef),
            address: EntityAddress::new(
                "default:17".parse().unwrap(),
                "counter".parse().unwrap(),
                "id-äöü-42".parse().unwrap(),
            ),
            tag: "increment".parse().unwrap(),
            payload: Bytes::copy_from_slice(payload),
            headers,
            persisted: false,
            timeout,
            streaming: false,
        }
    }

    fn variants() -> Vec<Request> {
        let mut headers = Headers::new();
        headers.push("trace", "abc");
        headers.push("", "");
        headers.push("x-long", "v".repeat(300));
        let mut persisted = request(b"{}", Headers::new(), None);
        persisted.persisted = true;
        persisted.id = Snowflake::from_raw(0);
        vec![
            request(
                br#"{"by":1}"#,
                Headers::new(),
                Some(Duration::from_secs(30)),
            ),
            request(b"", Headers::new(), None),
            request(&[7u8; 70_000], headers, Some(Duration::from_micros(10))),
            request(b"x", Headers::new(), Some(Duration::from_secs(10_000_000))),
            persisted,
        ]
    }

    #[test]
    fn request_frames_encode_like_prost() {
        for streaming in [false, true] {
            let mut ours = BytesMut::new();
            let mut frames = Vec::new();
            let mut expected_len = 0;
            for request in variants() {
                let frame = RequestFrame::new(&request, streaming);
                let mut wire = pb::Request::from(&request);
                wire.streaming = streaming;
                assert_eq!(frame.request_len(), wire.encoded_len());
                expected_len += frame.element_len();
                frame.put(&mut ours);
                frames.push(pb::ClientFrame {
                    kind: Some(pb::client_frame::Kind::Request(wire)),
                });
            }
            let theirs = pb::ClientBatch { frames }.encode_to_vec();
            assert_eq!(ours.len(), expected_len);
            assert_eq!(&ours[..], &theirs[..]);
        }
    }

    #[test]
    fn replies_encode_like_prost() {
        let frames = vec![
            (1u64, ReplyFrame::Value(Bytes::from_static(b"42"))),
            (0, ReplyFrame::Value(Bytes::new())),
            (
                3,
                ReplyFrame::Failure(Failure::new(ErrorCode::MailboxFull, "full")),
            ),
            (
                4,
                ReplyFrame::Chunk(Chunk {
                    reply_id: Snowflake::from_raw(9),
                    sequence: 2,
                    values: vec![Bytes::from_static(b"a")],
                }),
            ),
            (5, ReplyFrame::End),
        ];
        let mut ours = BytesMut::new();
        for (id, frame) in frames.clone() {
            put_reply(id, frame, &mut ours);
        }
        let theirs = pb::ServerBatch {
            replies: frames
                .into_iter()
                .map(|(id, frame)| {
                    pb::Reply::from(Reply {
                        request_id: Snowflake::from_raw(id),
                        frame,
                    })
                })
                .collect(),
        }
        .encode_to_vec();
        assert_eq!(&ours[..], &theirs[..]);
    }

    #[test]
    fn other_frames_encode_like_prost() {
        let frame = pb::ClientFrame {
            kind: Some(pb::client_frame::Kind::Cancel(77)),
        };
        let mut ours = BytesMut::new();
        put_client_frame(&frame, &mut ours);
        assert_eq!(ours.len(), client_frame_element_len(&frame));
        let theirs = pb::ClientBatch {
            frames: vec![frame],
        }
        .encode_to_vec();
        assert_eq!(&ours[..], &theirs[..]);
    }
}
