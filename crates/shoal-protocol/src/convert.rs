//! Checked conversions between the generated wire types and the domain types.
//!
//! Decoding never panics: missing fields, invalid names, zero shard ids and empty `oneof`s are
//! reported as [`WireError`]s so that a receiver can answer the sender with a typed failure.

use std::num::NonZeroU32;
use std::time::Duration;

use crate::entity::EntityAddress;
use crate::message::{
    AckChunk, Chunk, ErrorCode, Failure, Headers, Interrupt, Notification, Reply, ReplyFrame,
    Request,
};
use crate::name::{EntityId, EntityType, InvalidName, ShardGroup, Tag};
use crate::proto::runner::v1 as pb;
use crate::shard::ShardId;
use crate::snowflake::Snowflake;

/// Wire data that does not make a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A required field is absent.
    #[error("malformed message: missing field `{0}`")]
    MissingField(&'static str),
    /// A name field holds an invalid name.
    #[error("malformed message: invalid `{field}`: {source}")]
    InvalidName {
        /// The field.
        field: &'static str,
        /// Why the name was refused.
        source: InvalidName,
    },
    /// A shard id of 0 (shard ids start at 1).
    #[error("malformed message: shard id 0 (shard ids start at 1)")]
    ZeroShardId,
}

fn name<T>(field: &'static str, value: String) -> Result<T, WireError>
where
    T: TryFrom<String, Error = InvalidName>,
{
    T::try_from(value).map_err(|source| WireError::InvalidName { field, source })
}

impl TryFrom<pb::ShardId> for ShardId {
    type Error = WireError;

    fn try_from(wire: pb::ShardId) -> Result<Self, WireError> {
        let group: ShardGroup = name("shard.group", wire.group)?;
        let id = NonZeroU32::new(wire.id).ok_or(WireError::ZeroShardId)?;
        Ok(ShardId::new(group, id))
    }
}

impl From<&ShardId> for pb::ShardId {
    fn from(shard: &ShardId) -> Self {
        Self {
            group: shard.group().as_str().to_owned(),
            id: shard.id(),
        }
    }
}

impl TryFrom<pb::EntityAddress> for EntityAddress {
    type Error = WireError;

    fn try_from(wire: pb::EntityAddress) -> Result<Self, WireError> {
        let shard = wire.shard.ok_or(WireError::MissingField("address.shard"))?;
        Ok(EntityAddress {
            shard: shard.try_into()?,
            entity_type: name::<EntityType>("address.entity_type", wire.entity_type)?,
            entity_id: name::<EntityId>("address.entity_id", wire.entity_id)?,
        })
    }
}

impl From<&EntityAddress> for pb::EntityAddress {
    fn from(address: &EntityAddress) -> Self {
        Self {
            shard: Some((&address.shard).into()),
            entity_type: address.entity_type.as_str().to_owned(),
            entity_id: address.entity_id.as_str().to_owned(),
        }
    }
}

fn address(wire: Option<pb::EntityAddress>) -> Result<EntityAddress, WireError> {
    wire.ok_or(WireError::MissingField("address"))?.try_into()
}

impl TryFrom<pb::Request> for Request {
    type Error = WireError;

    fn try_from(wire: pb::Request) -> Result<Self, WireError> {
        Ok(Request {
            id: Snowflake::from_raw(wire.request_id),
            address: address(wire.address)?,
            tag: name::<Tag>("tag", wire.tag)?,
            payload: wire.payload,
            headers: wire
                .headers
                .into_iter()
                .map(|h| (h.name, h.value))
                .collect(),
            persisted: wire.persisted,
            timeout: (wire.timeout_ms > 0).then(|| Duration::from_millis(wire.timeout_ms.into())),
            streaming: wire.streaming,
        })
    }
}

impl From<&Request> for pb::Request {
    fn from(request: &Request) -> Self {
        Self {
            request_id: request.id.raw(),
            address: Some((&request.address).into()),
            tag: request.tag.as_str().to_owned(),
            payload: request.payload.clone(),
            headers: headers_to_wire(&request.headers),
            persisted: request.persisted,
            timeout_ms: request
                .timeout
                .map(|t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX).max(1))
                .unwrap_or(0),
            streaming: request.streaming,
        }
    }
}

fn headers_to_wire(headers: &Headers) -> Vec<pb::Header> {
    headers
        .iter()
        .map(|(name, value)| pb::Header {
            name: name.to_owned(),
            value: value.to_owned(),
        })
        .collect()
}

impl From<pb::ErrorCode> for ErrorCode {
    fn from(code: pb::ErrorCode) -> Self {
        use pb::ErrorCode as W;
        match code {
            W::EntityNotAssigned => Self::EntityNotAssigned,
            W::MailboxFull => Self::MailboxFull,
            W::AlreadyProcessing => Self::AlreadyProcessing,
            W::Persistence => Self::Persistence,
            W::MalformedMessage => Self::MalformedMessage,
            W::UnknownEntityType => Self::UnknownEntityType,
            W::UnknownTag => Self::UnknownTag,
            W::Handler => Self::Handler,
            W::Defect => Self::Defect,
            W::Interrupted => Self::Interrupted,
            W::ShuttingDown => Self::ShuttingDown,
            W::MessageTooLarge => Self::MessageTooLarge,
            W::DeadlineExceeded => Self::DeadlineExceeded,
            W::RunnerUnavailable => Self::RunnerUnavailable,
            W::Unauthenticated => Self::Unauthenticated,
            W::OutcomeUnknown => Self::OutcomeUnknown,
            W::Unspecified => Self::Unknown,
        }
    }
}

impl From<ErrorCode> for pb::ErrorCode {
    fn from(code: ErrorCode) -> Self {
        use ErrorCode as D;
        match code {
            D::EntityNotAssigned => Self::EntityNotAssigned,
            D::MailboxFull => Self::MailboxFull,
            D::AlreadyProcessing => Self::AlreadyProcessing,
            D::Persistence => Self::Persistence,
            D::MalformedMessage => Self::MalformedMessage,
            D::UnknownEntityType => Self::UnknownEntityType,
            D::UnknownTag => Self::UnknownTag,
            D::Handler => Self::Handler,
            D::Defect => Self::Defect,
            D::Interrupted => Self::Interrupted,
            D::ShuttingDown => Self::ShuttingDown,
            D::MessageTooLarge => Self::MessageTooLarge,
            D::DeadlineExceeded => Self::DeadlineExceeded,
            D::RunnerUnavailable => Self::RunnerUnavailable,
            D::Unauthenticated => Self::Unauthenticated,
            D::OutcomeUnknown => Self::OutcomeUnknown,
            D::Unknown => Self::Unspecified,
        }
    }
}

impl TryFrom<pb::Failure> for Failure {
    type Error = WireError;

    fn try_from(wire: pb::Failure) -> Result<Self, WireError> {
        // A code this version does not know (from a newer peer) is kept as `Unknown` rather than
        // refused, so the caller still sees the failure and its message.
        let code = pb::ErrorCode::try_from(wire.code)
            .map(ErrorCode::from)
            .unwrap_or(ErrorCode::Unknown);
        Ok(Failure {
            code,
            message: wire.message,
            detail: wire.detail,
            address: wire.address.map(TryInto::try_into).transpose()?,
        })
    }
}

impl From<&Failure> for pb::Failure {
    fn from(failure: &Failure) -> Self {
        Self {
            code: pb::ErrorCode::from(failure.code).into(),
            message: failure.message.clone(),
            detail: failure.detail.clone(),
            address: failure.address.as_ref().map(Into::into),
        }
    }
}

impl TryFrom<pb::Reply> for Reply {
    type Error = WireError;

    fn try_from(wire: pb::Reply) -> Result<Self, WireError> {
        use pb::reply::Outcome;
        let frame = match wire
            .outcome
            .ok_or(WireError::MissingField("reply.outcome"))?
        {
            Outcome::Value(value) => ReplyFrame::Value(value),
            Outcome::Failure(failure) => ReplyFrame::Failure(failure.try_into()?),
            Outcome::Chunk(chunk) => ReplyFrame::Chunk(Chunk {
                reply_id: Snowflake::from_raw(chunk.reply_id),
                sequence: chunk.sequence,
                values: chunk.values,
            }),
            Outcome::End(_) => ReplyFrame::End,
        };
        Ok(Reply {
            request_id: Snowflake::from_raw(wire.request_id),
            frame,
        })
    }
}

impl From<&Reply> for pb::Reply {
    fn from(reply: &Reply) -> Self {
        use pb::reply::Outcome;
        let outcome = match &reply.frame {
            ReplyFrame::Value(value) => Outcome::Value(value.clone()),
            ReplyFrame::Failure(failure) => Outcome::Failure(failure.into()),
            ReplyFrame::Chunk(chunk) => Outcome::Chunk(pb::Chunk {
                reply_id: chunk.reply_id.raw(),
                sequence: chunk.sequence,
                values: chunk.values.clone(),
            }),
            ReplyFrame::End => Outcome::End(pb::StreamEnd {}),
        };
        Self {
            request_id: reply.request_id.raw(),
            outcome: Some(outcome),
        }
    }
}

impl From<Reply> for pb::Reply {
    fn from(reply: Reply) -> Self {
        use pb::reply::Outcome;
        let outcome = match reply.frame {
            ReplyFrame::Value(value) => Outcome::Value(value),
            ReplyFrame::Failure(failure) => Outcome::Failure((&failure).into()),
            ReplyFrame::Chunk(chunk) => Outcome::Chunk(pb::Chunk {
                reply_id: chunk.reply_id.raw(),
                sequence: chunk.sequence,
                values: chunk.values,
            }),
            ReplyFrame::End => Outcome::End(pb::StreamEnd {}),
        };
        Self {
            request_id: reply.request_id.raw(),
            outcome: Some(outcome),
        }
    }
}

impl TryFrom<pb::Interrupt> for Interrupt {
    type Error = WireError;

    fn try_from(wire: pb::Interrupt) -> Result<Self, WireError> {
        Ok(Interrupt {
            id: Snowflake::from_raw(wire.envelope_id),
            request_id: Snowflake::from_raw(wire.request_id),
            address: address(wire.address)?,
            persisted: wire.persisted,
        })
    }
}

impl From<&Interrupt> for pb::Interrupt {
    fn from(interrupt: &Interrupt) -> Self {
        Self {
            envelope_id: interrupt.id.raw(),
            request_id: interrupt.request_id.raw(),
            address: Some((&interrupt.address).into()),
            persisted: interrupt.persisted,
        }
    }
}

impl TryFrom<pb::AckChunk> for AckChunk {
    type Error = WireError;

    fn try_from(wire: pb::AckChunk) -> Result<Self, WireError> {
        Ok(AckChunk {
            id: Snowflake::from_raw(wire.envelope_id),
            request_id: Snowflake::from_raw(wire.request_id),
            reply_id: Snowflake::from_raw(wire.reply_id),
            address: address(wire.address)?,
            persisted: wire.persisted,
        })
    }
}

impl From<&AckChunk> for pb::AckChunk {
    fn from(ack: &AckChunk) -> Self {
        Self {
            envelope_id: ack.id.raw(),
            request_id: ack.request_id.raw(),
            reply_id: ack.reply_id.raw(),
            address: Some((&ack.address).into()),
            persisted: ack.persisted,
        }
    }
}

impl TryFrom<pb::Notification> for Notification {
    type Error = WireError;

    fn try_from(wire: pb::Notification) -> Result<Self, WireError> {
        use pb::notification::Kind;
        Ok(
            match wire
                .kind
                .ok_or(WireError::MissingField("notification.kind"))?
            {
                Kind::Request(r) => Notification::Request(r.try_into()?),
                Kind::Interrupt(i) => Notification::Interrupt(i.try_into()?),
                Kind::AckChunk(a) => Notification::AckChunk(a.try_into()?),
            },
        )
    }
}

impl From<&Notification> for pb::Notification {
    fn from(notification: &Notification) -> Self {
        use pb::notification::Kind;
        let kind = match notification {
            Notification::Request(r) => Kind::Request(r.into()),
            Notification::Interrupt(i) => Kind::Interrupt(i.into()),
            Notification::AckChunk(a) => Kind::AckChunk(a.into()),
        };
        Self { kind: Some(kind) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use prost::Message;

    fn sample_address() -> EntityAddress {
        EntityAddress::new(
            "default:3".parse().unwrap(),
            EntityType::new("counter").unwrap(),
            EntityId::new("a").unwrap(),
        )
    }

    fn sample_request() -> Request {
        let mut headers = Headers::new();
        headers.push("traceparent", "00-abc-def-01");
        Request {
            id: Snowflake::from_raw(42),
            address: sample_address(),
            tag: Tag::new("increment").unwrap(),
            payload: Bytes::from_static(b"{\"by\":1}"),
            headers,
            persisted: true,
            timeout: Some(Duration::from_millis(1500)),
            streaming: false,
        }
    }

    #[test]
    fn request_round_trips_through_bytes() {
        let request = sample_request();
        let bytes = pb::Request::from(&request).encode_to_vec();
        let back: Request = pb::Request::decode(&bytes[..]).unwrap().try_into().unwrap();
        assert_eq!(back, request);
    }

    #[test]
    fn replies_round_trip() {
        let frames = [
            ReplyFrame::Value(Bytes::from_static(b"1")),
            ReplyFrame::Failure(
                Failure::new(ErrorCode::MailboxFull, "full").with_address(sample_address()),
            ),
            ReplyFrame::Chunk(Chunk {
                reply_id: Snowflake::from_raw(7),
                sequence: 3,
                values: vec![Bytes::from_static(b"x")],
            }),
            ReplyFrame::End,
        ];
        for frame in frames {
            let reply = Reply {
                request_id: Snowflake::from_raw(9),
                frame,
            };
            let back: Reply = pb::Reply::from(&reply).try_into().unwrap();
            assert_eq!(back, reply);
        }
    }

    #[test]
    fn bad_wire_data_is_an_error_not_a_panic() {
        let mut wire = pb::Request::from(&sample_request());
        wire.address = None;
        assert_eq!(
            Request::try_from(wire).unwrap_err(),
            WireError::MissingField("address")
        );

        let mut wire = pb::Request::from(&sample_request());
        if let Some(a) = wire.address.as_mut() {
            a.shard = Some(pb::ShardId {
                group: "default".into(),
                id: 0,
            });
        }
        assert_eq!(Request::try_from(wire).unwrap_err(), WireError::ZeroShardId);

        let mut wire = pb::Request::from(&sample_request());
        wire.tag = String::new();
        assert!(matches!(
            Request::try_from(wire),
            Err(WireError::InvalidName { field: "tag", .. })
        ));

        assert_eq!(
            Reply::try_from(pb::Reply {
                request_id: 1,
                outcome: None
            })
            .unwrap_err(),
            WireError::MissingField("reply.outcome")
        );

        // Garbage bytes decode to an error at the prost layer, never a panic.
        assert!(pb::Request::decode(&[0xff, 0xff, 0xff][..]).is_err());
    }

    #[test]
    fn unknown_error_codes_are_kept() {
        let failure = Failure::try_from(pb::Failure {
            code: 9999,
            message: "new".into(),
            detail: Bytes::new(),
            address: None,
        })
        .unwrap();
        assert_eq!(failure.code, ErrorCode::Unknown);
        assert_eq!(failure.message, "new");
    }

    #[test]
    fn notifications_round_trip() {
        let n = Notification::Interrupt(Interrupt {
            id: Snowflake::from_raw(1),
            request_id: Snowflake::from_raw(2),
            address: sample_address(),
            persisted: false,
        });
        let back: Notification = pb::Notification::from(&n).try_into().unwrap();
        assert_eq!(back, n);
        assert_eq!(
            Notification::try_from(pb::Notification { kind: None }).unwrap_err(),
            WireError::MissingField("notification.kind")
        );
    }
}
