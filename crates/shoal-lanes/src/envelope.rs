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

/// A message a consumer gave up on, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message as last delivered.
    pub envelope: Envelope,
    /// Why it was dead-lettered (a stable id such as `lanes-auth-unauthorized` and a message).
    pub reason: String,
}
