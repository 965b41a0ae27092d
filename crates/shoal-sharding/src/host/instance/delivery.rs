//! What goes into an instance's mailbox and control channel.

use shoal_protocol::{ErrorCode, Failure, Snowflake};

use crate::entity::Call;
use crate::reply::{ReplyTo, Unanswered};

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
