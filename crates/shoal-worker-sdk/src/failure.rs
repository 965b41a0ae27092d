//! How a worker handler fails.

use std::fmt;

use shoal_protocol::proto::worker::v1 as pb;

use crate::kv::{KvError, KvErrorKind};

/// A handler failure, sent to the runner with a stable code. The runner reports it to the
/// entity's callers (an application failure as a handler error, a fatal one as a defect once
/// replays are exhausted).
///
/// ```
/// use shoal_worker_sdk::HandlerFailure;
///
/// let refused = HandlerFailure::application("amount must be positive");
/// assert_eq!(refused.message(), "amount must be positive");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerFailure {
    code: pb::FailureCode,
    message: String,
}

impl HandlerFailure {
    /// The handler refused or failed this request; the entity carries on.
    pub fn application(message: impl fmt::Display) -> Self {
        Self::new(pb::FailureCode::Application, message)
    }

    /// The entity's state in this worker can no longer be trusted: the runner activates it again
    /// and replays the request.
    pub fn fatal(message: impl fmt::Display) -> Self {
        Self::new(pb::FailureCode::Fatal, message)
    }

    /// The payload could not be decoded.
    pub fn malformed(message: impl fmt::Display) -> Self {
        Self::new(pb::FailureCode::Malformed, message)
    }

    /// The worker cannot take the call now (a non-final failure: the request may be retried).
    pub fn unavailable(message: impl fmt::Display) -> Self {
        Self::new(pb::FailureCode::Unavailable, message)
    }

    fn new(code: pb::FailureCode, message: impl fmt::Display) -> Self {
        Self {
            code,
            message: message.to_string(),
        }
    }

    /// The description.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn into_wire(self) -> pb::Failure {
        pb::Failure {
            code: self.code as i32,
            message: self.message,
        }
    }
}

impl fmt::Display for HandlerFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HandlerFailure {}

/// A KV error fails the call: refused arguments and stored-data problems as application
/// failures; a lost shard, an inactive entity, unavailable storage or a closed session as
/// `unavailable` (the request was not handled and may be retried).
impl From<KvError> for HandlerFailure {
    fn from(error: KvError) -> Self {
        match error.kind() {
            KvErrorKind::InvalidArgument | KvErrorKind::Internal => Self::application(error),
            KvErrorKind::Fenced
            | KvErrorKind::NotActive
            | KvErrorKind::Unavailable
            | KvErrorKind::SessionClosed => Self::unavailable(error),
        }
    }
}
