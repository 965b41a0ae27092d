//! What goes into an instance's mailbox and control channel.

use shoal_protocol::{ErrorCode, Failure, Snowflake};
use tokio::sync::oneshot;

use crate::entity::{Call, Payload, ReplyValue};

/// The final outcome of a request.
pub(crate) type Outcome = Result<ReplyValue, Unanswered>;

/// Why a request got no reply value.
#[derive(Debug)]
pub(crate) struct Unanswered {
    pub(crate) failure: Failure,
    /// The request's payload, given back when the instance never started the request (it
    /// stopped first): a typed local value exists only here, and the caller needs it to send
    /// the request to the entity's next owner.
    pub(crate) payload: Option<Payload>,
}

impl From<Failure> for Unanswered {
    fn from(failure: Failure) -> Self {
        Self {
            failure,
            payload: None,
        }
    }
}

/// Where a request's final outcome goes.
#[derive(Debug)]
pub(crate) enum ReplyTo {
    /// A waiting caller.
    Caller(oneshot::Sender<Outcome>),
    /// Nobody waits (a notification).
    Discard,
}

impl ReplyTo {
    pub(crate) fn send(self, outcome: Outcome) {
        if let Self::Caller(tx) = self {
            // The caller may have given up (deadline, interrupt); that is fine.
            let _ = tx.send(outcome);
        }
    }
}

/// A request in an instance's mailbox.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) call: Call,
    pub(crate) reply: ReplyTo,
}

impl Delivery {
    pub(crate) fn fail(self, code: ErrorCode, message: impl Into<String>) {
        self.reply.send(Err(Failure::new(code, message).into()));
    }

    /// Fails a request the instance never started, handing its payload back to the caller.
    pub(crate) fn hand_back(self, code: ErrorCode, message: impl Into<String>) {
        self.reply.send(Err(Unanswered {
            failure: Failure::new(code, message),
            payload: Some(self.call.payload),
        }));
    }
}

/// Out-of-band instructions to an instance; processed even while its mailbox is full. (An
/// instance is told to stop by closing its control channel: the manager drops its handle. The
/// instance then finishes the running request, fails queued ones as "not assigned here",
/// deactivates and exits.)
#[derive(Debug)]
pub(crate) enum Control {
    /// Stop processing this request (queued or running).
    Interrupt(Snowflake),
}
