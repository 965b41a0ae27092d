//! Durable messages: the [`MessageStorage`] seam and the values it stores.

pub(crate) mod checks;
mod storage;
mod types;

pub use storage::{MessageEvent, MessageStorage};
pub use types::{
    Claim, ClaimedMessage, DeliverAt, EnvelopeKind, Fence, PersistedEnvelope, PersistedRequest,
    SaveResult, StoredReply, StoredReplyKind, message_key,
};
