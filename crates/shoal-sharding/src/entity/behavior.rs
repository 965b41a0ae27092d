//! The runtime's internal, type-erased view of an entity instance.

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use shoal_protocol::{Failure, Headers, Snowflake, Tag};

use super::context::EntityContext;
pub(crate) use super::message::TagInfo;
use super::payload::{Payload, ReplyValue};
use super::stream::ChunkSender;

/// One request as an instance receives it. The instance keeps it until the request completes, so
/// that it can be replayed after a defect.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) id: Snowflake,
    /// The message tag; `None` for a local typed payload, dispatched by its Rust type.
    pub(crate) tag: Option<Tag>,
    pub(crate) payload: Payload,
    pub(crate) headers: Headers,
    /// Where streamed items go (streaming calls only).
    pub(crate) chunks: Option<ChunkSender>,
    /// The reply must be encoded (the caller is remote or untyped).
    pub(crate) encode_reply: bool,
}

/// Why a call failed inside the instance.
#[derive(Debug)]
pub(crate) enum CallFailure {
    /// This request failed; the instance carries on.
    Failed(Failure),
    /// A defect: the instance must be rebuilt.
    Fatal(String),
}

pub(crate) type CallResult = Result<ReplyValue, CallFailure>;

/// An activated instance.
pub(crate) enum Behavior {
    /// Handles one call at a time with exclusive access to its state.
    Exclusive(Box<dyn ExclusiveBehavior>),
    /// Handles calls through shared access; may run several at once.
    Shared(Arc<dyn SharedBehavior>),
}

impl fmt::Debug for Behavior {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exclusive(_) => f.write_str("Behavior::Exclusive"),
            Self::Shared(_) => f.write_str("Behavior::Shared"),
        }
    }
}

pub(crate) trait ExclusiveBehavior: Send {
    fn handle<'a>(
        &'a mut self,
        call: &'a Call,
        ctx: &'a EntityContext,
    ) -> BoxFuture<'a, CallResult>;
    fn deactivate<'a>(&'a mut self, ctx: &'a EntityContext) -> BoxFuture<'a, ()>;
}

pub(crate) trait SharedBehavior: Send + Sync {
    fn handle(self: Arc<Self>, call: &Call, ctx: EntityContext) -> BoxFuture<'static, CallResult>;
    fn deactivate(self: Arc<Self>, ctx: EntityContext) -> BoxFuture<'static, ()>;
}

/// Creates instances of one entity type.
pub(crate) trait BehaviorFactory: Send + Sync + fmt::Debug {
    /// Activates the instance at `ctx.address()`; an error is a defect of the activation.
    fn activate(&self, ctx: EntityContext) -> BoxFuture<'static, Result<Behavior, String>>;
}
