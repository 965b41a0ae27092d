//! Reading a `ClientBatch` straight into domain requests: names are borrowed from the received
//! bytes and shared through the stream's [`Interner`], payloads are slices of the received
//! buffer. Only a malformed encoding fails the batch; a well-formed frame with invalid content
//! (a bad name, a missing field) becomes a per-request [`Malformed`] answer.

use bytes::Bytes;
use prost::Message as _;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
use shoal_protocol::proto::runner::v1 as pb;
use shoal_protocol::{
    EntityAddress, EntityId, Headers, Notification, Request, ShardId, Snowflake, WireError,
};

use super::intern::Interner;

/// A batch that is not valid protobuf (the whole stream fails, as with prost).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed batch: {0}")]
pub(crate) struct BatchError(String);

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
pub(crate) struct Malformed {
    /// The request id to answer.
    pub(crate) id: u64,
    pub(crate) error: WireError,
}

/// One frame of a client batch.
#[derive(Debug)]
pub(crate) enum Inbound {
    Request(Result<Request, Malformed>),
    Notify {
        /// The id of a notified request (answered with an acceptance or a failure).
        request_id: Option<u64>,
        notification: Result<Notification, WireError>,
    },
    Cancel(u64),
    /// A frame without a kind (nothing to answer).
    Empty,
}

/// A read position in a message.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
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

    fn string(&mut self, wire_type: WireType) -> Result<&'a str, BatchError> {
        std::str::from_utf8(self.delimited(wire_type)?)
            .map_err(|_| error("invalid string value: data is not UTF-8 encoded"))
    }

    fn skip(&mut self, wire_type: WireType, tag: u32) -> Result<(), BatchError> {
        Ok(skip_field(
            wire_type,
            tag,
            &mut self.buf,
            DecodeContext::default(),
        )?)
    }
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
    let mut cursor = Cursor::new(batch);
    while let Some((tag, wire_type)) = cursor.next_key()? {
        match tag {
            1 => {
                let frame = cursor.delimited(wire_type)?;
                out.push(client_frame(batch, frame, names)?);
            }
            _ => cursor.skip(wire_type, tag)?,
        }
    }
    Ok(())
}

enum Kind<'a> {
    None,
    Request(&'a [u8]),
    Notify(&'a [u8]),
    Cancel(u64),
}

fn client_frame(batch: &Bytes, frame: &[u8], names: &mut Interner) -> Result<Inbound, BatchError> {
    let mut cursor = Cursor::new(frame);
    // A oneof: the last kind present wins.
    let mut kind = Kind::None;
    while let Some((tag, wire_type)) = cursor.next_key()? {
        match tag {
            1 => kind = Kind::Request(cursor.delimited(wire_type)?),
            2 => kind = Kind::Notify(cursor.delimited(wire_type)?),
            3 => kind = Kind::Cancel(cursor.fixed64(wire_type)?),
            _ => cursor.skip(wire_type, tag)?,
        }
    }
    Ok(match kind {
        Kind::None => Inbound::Empty,
        Kind::Request(bytes) => Inbound::Request(request(batch, bytes, names)?),
        Kind::Notify(bytes) => {
            let wire = pb::Notification::decode(bytes)?;
            let request_id = match &wire.kind {
                Some(pb::notification::Kind::Request(r)) => Some(r.request_id),
                _ => None,
            };
            Inbound::Notify {
                request_id,
                notification: Notification::try_from(wire),
            }
        }
        Kind::Cancel(id) => Inbound::Cancel(id),
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

fn shard(bytes: &[u8]) -> Result<RawShard<'_>, BatchError> {
    let mut cursor = Cursor::new(bytes);
    let mut shard = RawShard::default();
    while let Some((tag, wire_type)) = cursor.next_key()? {
        match tag {
            1 => shard.group = cursor.string(wire_type)?,
            // uint32: prost keeps the low 32 bits.
            2 => shard.id = cursor.varint(wire_type)? as u32,
            _ => cursor.skip(wire_type, tag)?,
        }
    }
    Ok(shard)
}

fn address(bytes: &[u8]) -> Result<RawAddress<'_>, BatchError> {
    let mut cursor = Cursor::new(bytes);
    let mut address = RawAddress::default();
    while let Some((tag, wire_type)) = cursor.next_key()? {
        match tag {
            1 => address.shard = Some(shard(cursor.delimited(wire_type)?)?),
            2 => address.entity_type = cursor.string(wire_type)?,
            3 => address.entity_id = cursor.string(wire_type)?,
            _ => cursor.skip(wire_type, tag)?,
        }
    }
    Ok(address)
}

fn header(bytes: &[u8]) -> Result<(&str, &str), BatchError> {
    let mut cursor = Cursor::new(bytes);
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

fn request(
    batch: &Bytes,
    bytes: &[u8],
    names: &mut Interner,
) -> Result<Result<Request, Malformed>, BatchError> {
    let mut cursor = Cursor::new(bytes);
    let mut raw = RawRequest::default();
    while let Some((tag, wire_type)) = cursor.next_key()? {
        match tag {
            1 => raw.id = cursor.fixed64(wire_type)?,
            2 => raw.address = Some(address(cursor.delimited(wire_type)?)?),
            3 => raw.tag = cursor.string(wire_type)?,
            4 => raw.payload = cursor.delimited(wire_type)?,
            5 => {
                let (name, value) = header(cursor.delimited(wire_type)?)?;
                raw.headers.push(name, value);
            }
            6 => raw.persisted = cursor.varint(wire_type)? != 0,
            7 => raw.timeout_ms = cursor.varint(wire_type)? as u32,
            8 => raw.streaming = cursor.varint(wire_type)? != 0,
            _ => cursor.skip(wire_type, tag)?,
        }
    }
    let id = raw.id;
    Ok(validate(batch, raw, names).map_err(|error| Malformed { id, error }))
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
}
