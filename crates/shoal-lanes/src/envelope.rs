//! The message an event lane carries.

use bytes::Bytes;

use crate::context::CallContext;

/// An event about to be enqueued (the queue adds id, enqueue time and attempts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEnvelope {
    /// The event lane.
    pub lane: String,
    /// The event id.
    pub event: String,
    /// The serialized payload (JSON), exactly the bytes the token's hash covers.
    pub payload: Bytes,
    /// Who emitted it (a [`crate::Source`] id or the producer's profile).
    pub source: String,
    /// The forwarded context (only the lane's allowed keys).
    pub context: CallContext,
    /// The lane token, when the lane uses auth.
    pub auth_token: Option<String>,
}

/// An event as delivered by a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The queue's message id.
    pub id: String,
    /// The event lane.
    pub lane: String,
    /// The event id.
    pub event: String,
    /// The serialized payload (JSON).
    pub payload: Bytes,
    /// Who emitted it.
    pub source: String,
    /// The forwarded context.
    pub context: CallContext,
    /// The lane token, when the lane uses auth.
    pub auth_token: Option<String>,
    /// When the queue accepted it (Unix milliseconds, the queue's clock).
    pub created_at_ms: i64,
    /// Deliveries so far, this one included (1 on the first delivery). Counted by the queue.
    pub attempts: u32,
}

impl Envelope {
    /// The envelope a queue makes of `message` on enqueue.
    pub fn accepted(id: String, message: NewEnvelope, created_at_ms: i64) -> Self {
        Envelope {
            id,
            lane: message.lane,
            event: message.event,
            payload: message.payload,
            source: message.source,
            context: message.context,
            auth_token: message.auth_token,
            created_at_ms,
            attempts: 0,
        }
    }
}

/// An event as a queue's storage keeps it, column by column (what a database row holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEnvelope {
    /// The queue's message id.
    pub id: i64,
    /// The event lane.
    pub lane: String,
    /// The event id.
    pub event: String,
    /// The serialized payload.
    pub payload: Vec<u8>,
    /// Who emitted it.
    pub source: String,
    /// The forwarded context, as JSON text.
    pub context: String,
    /// The lane token.
    pub auth_token: Option<String>,
    /// When the queue accepted it (Unix milliseconds).
    pub created_at_ms: i64,
    /// Deliveries so far, as stored.
    pub attempts: i32,
}

impl From<StoredEnvelope> for Envelope {
    /// Reads a stored event tolerantly: a context that does not parse is dropped, not fatal (the
    /// token's context hash then refuses the message if the lane signs contexts), and a negative
    /// attempt count reads as 0.
    fn from(stored: StoredEnvelope) -> Self {
        Envelope {
            id: stored.id.to_string(),
            lane: stored.lane,
            event: stored.event,
            payload: Bytes::from(stored.payload),
            source: stored.source,
            context: CallContext::from_json(&stored.context).unwrap_or_default(),
            auth_token: stored.auth_token,
            created_at_ms: stored.created_at_ms,
            attempts: u32::try_from(stored.attempts).unwrap_or(0),
        }
    }
}

/// A message a consumer gave up on, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message as last delivered.
    pub envelope: Envelope,
    /// Why it was dead-lettered (a stable id such as `lanes-auth-unauthorized` and a message).
    pub reason: String,
}
