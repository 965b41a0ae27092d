//! Messages.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A message an entity type handles: its tag and its reply type. Messages travel encoded as JSON
/// between runners; within one process they are passed as values (unless
/// [`crate::ShardingConfig::simulate_remote_serialization`] is on). Messages are `Clone` so that a
/// request can be replayed after its entity failed with a defect.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use shoal_sharding::Message;
///
/// #[derive(Clone, Serialize, Deserialize)]
/// struct Increment {
///     by: i64,
/// }
///
/// impl Message for Increment {
///     const TAG: &'static str = "increment";
///     type Reply = i64;
/// }
/// ```
pub trait Message: Clone + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The message's name within its entity type. Stable: it is on the wire.
    const TAG: &'static str;
    /// What a handler answers (for a streaming message: the type of each streamed item). An
    /// application-level error belongs in the reply (for example `Result<T, MyError>`).
    type Reply: Serialize + DeserializeOwned + Send + 'static;

    /// Persisted (durable) messages are saved in message storage before they are delivered and
    /// redelivered until their handler's final reply is saved: they survive runner crashes and
    /// shard moves. Their handlers may run more than once (at least once): make them idempotent,
    /// for example with [`crate::EntityContext::request_id`]. Needs message storage
    /// ([`crate::ShardingBuilder::message_storage`]).
    const PERSISTED: bool = false;

    /// A persisted message that the caller cannot interrupt:
    /// [`crate::EntityClient::interrupt`] refuses it.
    const UNINTERRUPTIBLE: bool = false;

    /// For persisted messages: the deduplication key. A second send with the same key (to the
    /// same entity and tag) does not run the handler again; it returns the first one's reply.
    fn primary_key(&self) -> Option<String> {
        None
    }

    /// For persisted messages: do not deliver before this time (a scheduled message).
    fn deliver_at(&self) -> Option<std::time::SystemTime> {
        None
    }
}

/// What the runtime knows of a tag before dispatching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TagInfo {
    /// Replies are streamed.
    pub(crate) streaming: bool,
    /// Requests are persisted before delivery.
    pub(crate) persisted: bool,
}
