//! Message envelopes: requests to entities, their replies, interrupts and chunk acknowledgements.
//!
//! These are the domain forms of the `shoal.runner.v1` wire messages; [`crate::convert`] maps
//! between the two, refusing bad wire data with a [`crate::WireError`].

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use crate::entity::EntityAddress;
use crate::name::Tag;
use crate::snowflake::Snowflake;

/// Request headers: ordered name/value pairs (trace context, caller metadata). Empty headers do
/// not allocate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Self(Vec::new())
    }

    /// Appends a header.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// All headers in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The number of headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl FromIterator<(String, String)> for Headers {
    fn from_iter<T: IntoIterator<Item = (String, String)>>(iter: T) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// A request to an entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Unique id of the request in the cluster.
    pub id: Snowflake,
    /// The entity it is for.
    pub address: EntityAddress,
    /// Which message of the entity type it carries.
    pub tag: Tag,
    /// The message, encoded by the entity type's codec.
    pub payload: Bytes,
    /// Caller metadata.
    pub headers: Headers,
    /// Already saved in message storage; a receiver only needs to be woken to read it.
    pub persisted: bool,
    /// How long the caller will wait for a reply.
    pub timeout: Option<Duration>,
    /// The caller wants a stream of replies.
    pub streaming: bool,
}

/// Why a request failed. Codes are stable: they appear on the wire, in storage and in the HTTP
/// gateway's error bodies (see [`ErrorCode::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The receiving runner does not hold the entity's shard.
    EntityNotAssigned,
    /// The entity's mailbox, or the runner's resident-entity cap, is full.
    MailboxFull,
    /// A request with the same id is already being processed.
    AlreadyProcessing,
    /// Message storage failed.
    Persistence,
    /// The request could not be decoded.
    MalformedMessage,
    /// No entity of this type is registered.
    UnknownEntityType,
    /// The entity type has no handler for the tag.
    UnknownTag,
    /// The handler returned an application error (in [`Failure::detail`]).
    Handler,
    /// The handler panicked or failed fatally.
    Defect,
    /// The request was interrupted.
    Interrupted,
    /// The receiving runner is shutting down.
    ShuttingDown,
    /// The message is larger than the receiver accepts.
    MessageTooLarge,
    /// The caller's deadline passed.
    DeadlineExceeded,
    /// The runner owning the entity could not be reached.
    RunnerUnavailable,
    /// The caller did not present valid credentials.
    Unauthenticated,
    /// A write may or may not have been applied (storage did not answer in time): whether the
    /// request was stored is unknown. Retrying with the same primary key is safe.
    OutcomeUnknown,
    /// A code this version does not know (sent by a newer peer).
    Unknown,
}

impl ErrorCode {
    /// A stable snake_case name for the code.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::EntityNotAssigned => "entity_not_assigned",
            Self::MailboxFull => "mailbox_full",
            Self::AlreadyProcessing => "already_processing",
            Self::Persistence => "persistence",
            Self::MalformedMessage => "malformed_message",
            Self::UnknownEntityType => "unknown_entity_type",
            Self::UnknownTag => "unknown_tag",
            Self::Handler => "handler_error",
            Self::Defect => "defect",
            Self::Interrupted => "interrupted",
            Self::ShuttingDown => "shutting_down",
            Self::MessageTooLarge => "message_too_large",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::RunnerUnavailable => "runner_unavailable",
            Self::Unauthenticated => "unauthenticated",
            Self::OutcomeUnknown => "outcome_unknown",
            Self::Unknown => "unknown",
        }
    }

    /// Whether a caller may retry the same request elsewhere or later and expect a different
    /// outcome (the shard moved, the runner came back).
    pub const fn is_retryable_routing(self) -> bool {
        matches!(
            self,
            Self::EntityNotAssigned | Self::RunnerUnavailable | Self::ShuttingDown
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What kind of failure.
    pub code: ErrorCode,
    /// A description for people.
    pub message: String,
    /// For [`ErrorCode::Handler`]: the application error, encoded by the entity type's codec.
    pub detail: Bytes,
    /// The entity concerned, when there is one.
    pub address: Option<EntityAddress>,
}

impl Failure {
    /// A failure with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            detail: Bytes::new(),
            address: None,
        }
    }

    /// Attaches the entity concerned.
    pub fn with_address(mut self, address: EntityAddress) -> Self {
        self.address = Some(address);
        self
    }

    /// Attaches an encoded application error.
    pub fn with_detail(mut self, detail: Bytes) -> Self {
        self.detail = detail;
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(address) = &self.address {
            write!(f, " ({address})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Failure {}

/// One chunk of a streamed reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Id of this chunk, acknowledged by [`AckChunk`].
    pub reply_id: Snowflake,
    /// Position in the stream, from 0.
    pub sequence: u32,
    /// The encoded values it carries.
    pub values: Vec<Bytes>,
}

/// One reply frame for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyFrame {
    /// Final: the encoded value.
    Value(Bytes),
    /// Final: a failure.
    Failure(Failure),
    /// A stream chunk; more frames follow.
    Chunk(Chunk),
    /// Final: a stream finished successfully.
    End,
}

impl ReplyFrame {
    /// Whether no frame follows this one.
    pub fn is_final(&self) -> bool {
        !matches!(self, Self::Chunk(_))
    }
}

/// A reply frame with the id of the request it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The request answered.
    pub request_id: Snowflake,
    /// The frame.
    pub frame: ReplyFrame,
}

/// Asks the owner to stop processing a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interrupt {
    /// Id of this envelope.
    pub id: Snowflake,
    /// The request to interrupt.
    pub request_id: Snowflake,
    /// The entity processing it.
    pub address: EntityAddress,
    /// The request is persisted (the interrupt is stored too).
    pub persisted: bool,
}

/// Acknowledges receipt of a stream chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckChunk {
    /// Id of this envelope.
    pub id: Snowflake,
    /// The streaming request.
    pub request_id: Snowflake,
    /// The chunk received.
    pub reply_id: Snowflake,
    /// The entity streaming.
    pub address: EntityAddress,
    /// The request is persisted (the acknowledgement is stored too).
    pub persisted: bool,
}

/// A fire-and-forget delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Notification {
    /// A request whose replies the sender will not wait for (or, when persisted, a wake-up).
    Request(Request),
    /// An interrupt.
    Interrupt(Interrupt),
    /// A chunk acknowledgement.
    AckChunk(AckChunk),
}

impl Notification {
    /// The entity the notification is for.
    pub fn address(&self) -> &EntityAddress {
        match self {
            Self::Request(r) => &r.address,
            Self::Interrupt(i) => &i.address,
            Self::AckChunk(a) => &a.address,
        }
    }
}
