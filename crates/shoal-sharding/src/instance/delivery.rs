//! What goes into an instance's mailbox and control channel.

use shoal_protocol::{ErrorCode, Failure, Snowflake};
use tokio::sync::oneshot;

use crate::entity::{Call, ReplyValue};

/// The final outcome of a request.
pub(crate) type Outcome = Result<ReplyValue, Failure>;

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
        self.reply.send(Err(Failure::new(code, message)));
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
