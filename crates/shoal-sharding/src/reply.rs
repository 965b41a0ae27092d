//! Where a request's outcome goes: the channel between whoever delivers a request (the router,
//! the inbound side, persisted processing) and the instance that runs it.

use shoal_protocol::{EntityAddress, ErrorCode, Failure};
use shoal_storage::Epoch;
use tokio::sync::oneshot;

use crate::entity::{ChunkReceiver, Payload, ReplyValue};

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

/// A stored (persisted) request handed to its local entity.
#[derive(Debug)]
pub(crate) struct Delivered {
    /// The lease epoch of the instance that runs it: its writes are fenced by it.
    pub(crate) epoch: Epoch,
    pub(crate) outcome: oneshot::Receiver<Outcome>,
    /// A stream's items.
    pub(crate) chunks: Option<ChunkReceiver>,
}

/// The failure of a request for an entity whose shard this runner does not serve.
pub(crate) fn not_assigned(address: &EntityAddress) -> Failure {
    Failure::new(
        ErrorCode::EntityNotAssigned,
        "this runner does not hold the entity's shard",
    )
    .with_address(address.clone())
}
