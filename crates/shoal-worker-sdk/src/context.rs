//! What a worker handler knows about its call.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use shoal_protocol::proto::worker::v1 as pb;

use crate::failure::HandlerFailure;
use crate::kv::Kv;
use crate::session::SessionState;

pub(crate) struct CallInfo {
    pub(crate) call_id: u64,
    pub(crate) activation: u64,
    pub(crate) entity_type: String,
    pub(crate) entity_id: String,
    pub(crate) tag: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) request_id: u64,
}

/// The call a handler is running: the entity, the tag, the caller's headers, the entity's KV
/// storage, and keep-alive. Cheap to clone.
#[derive(Clone)]
pub struct HandlerContext {
    session: Arc<SessionState>,
    info: Arc<CallInfo>,
    kv: Kv,
}

impl fmt::Debug for HandlerContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerContext")
            .field("entity_type", &self.info.entity_type)
            .field("entity_id", &self.info.entity_id)
            .field("tag", &self.info.tag)
            .field("call_id", &self.info.call_id)
            .finish_non_exhaustive()
    }
}

impl HandlerContext {
    pub(crate) fn new(session: Arc<SessionState>, info: CallInfo) -> Self {
        Self {
            kv: Kv::new(session.clone(), info.activation),
            session,
            info: Arc::new(info),
        }
    }

    /// The entity's type.
    pub fn entity_type(&self) -> &str {
        &self.info.entity_type
    }

    /// The entity's id.
    pub fn entity_id(&self) -> &str {
        &self.info.entity_id
    }

    /// The message tag.
    pub fn tag(&self) -> &str {
        &self.info.tag
    }

    /// The caller's headers, in order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.info.headers
    }

    /// The cluster-wide request id: stable across redeliveries of a persisted request.
    pub fn request_id(&self) -> u64 {
        self.info.request_id
    }

    /// The entity's activation on the runner (a new one after every re-activation).
    pub fn activation_id(&self) -> u64 {
        self.info.activation
    }

    /// The entity's KV storage.
    pub fn kv(&self) -> &Kv {
        &self.kv
    }

    /// Keeps the entity resident on the runner while idle (`true`), or lets it passivate again.
    pub fn keep_alive(&self, enabled: bool) {
        self.session
            .send(pb::worker_message::Kind::KeepAlive(pb::KeepAlive {
                activation_id: self.info.activation,
                enabled,
            }));
    }
}

/// Where a streaming handler sends its items.
#[derive(Clone)]
pub struct ChunkWriter {
    session: Arc<SessionState>,
    call_id: u64,
}

impl fmt::Debug for ChunkWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkWriter")
            .field("call_id", &self.call_id)
            .finish_non_exhaustive()
    }
}

impl ChunkWriter {
    pub(crate) fn new(session: Arc<SessionState>, call_id: u64) -> Self {
        Self { session, call_id }
    }

    /// Sends one item to the caller. Fails when the session with the runner is gone.
    pub fn send(&self, item: impl Into<Bytes>) -> Result<(), HandlerFailure> {
        if self.session.chunk(self.call_id, item.into()) {
            Ok(())
        } else {
            Err(HandlerFailure::unavailable(
                "the session with the runner closed",
            ))
        }
    }

    /// Whether the session with the runner is gone.
    pub fn is_closed(&self) -> bool {
        self.session.is_closed()
    }
}
