//! A request on its way out of this process's callers, kept across retries.

use std::any::{Any, TypeId};
use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use shoal_protocol::{EntityAddress, Headers, Tag};

use crate::entity::Payload;

/// Encodes a typed message (monomorphized per message type).
pub(crate) type EncodeFn = fn(&(dyn Any + Send + Sync)) -> Result<Bytes, String>;

pub(crate) fn encode_json<M: serde::Serialize + 'static>(
    value: &(dyn Any + Send + Sync),
) -> Result<Bytes, String> {
    let value = value
        .downcast_ref::<M>()
        .ok_or_else(|| "message of an unexpected type".to_owned())?;
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| format!("message does not encode: {e}"))
}

/// Typed calls carry the Rust value until it must be encoded.
pub(crate) struct Typed {
    /// The Rust type of the target entity.
    pub(crate) entity: TypeId,
    pub(crate) encode: EncodeFn,
    pub(crate) value: Option<Box<dyn Any + Send + Sync>>,
}

/// What makes an outgoing message persisted.
#[derive(Debug, Clone, Default)]
pub(crate) struct PersistSpec {
    /// The primary key (deduplication), before [`shoal_storage::message_key`] scoping.
    pub(crate) primary_key: Option<String>,
    /// Do not deliver before.
    pub(crate) deliver_at: Option<SystemTime>,
    /// Caller interrupts are ignored.
    pub(crate) uninterruptible: bool,
}

/// A request on its way to its entity: its address, its message (typed or encoded), and how it
/// is sent.
pub(crate) struct Outgoing {
    pub(crate) address: EntityAddress,
    pub(crate) tag: Tag,
    pub(crate) headers: Headers,
    pub(crate) timeout: Duration,
    pub(crate) typed: Option<Typed>,
    pub(crate) encoded: Option<Bytes>,
    /// `Some` for a persisted message.
    pub(crate) persist: Option<PersistSpec>,
}

impl fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outgoing")
            .field("address", &self.address)
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

impl Outgoing {
    /// A copy that carries the encoded message only (for persisted requests, which always travel
    /// encoded).
    pub(crate) fn clone_encoded(&self) -> Outgoing {
        Outgoing {
            address: self.address.clone(),
            tag: self.tag.clone(),
            headers: self.headers.clone(),
            timeout: self.timeout,
            typed: None,
            encoded: self.encoded.clone(),
            persist: None,
        }
    }

    /// The wire form of this request with an already-encoded `payload`; its timeout is what is
    /// left until `deadline` (at least 1 ms).
    pub(crate) fn wire(
        &self,
        id: shoal_protocol::Snowflake,
        payload: Bytes,
        deadline: tokio::time::Instant,
        persisted: bool,
        streaming: bool,
    ) -> shoal_protocol::Request {
        shoal_protocol::Request {
            id,
            address: self.address.clone(),
            tag: self.tag.clone(),
            payload,
            headers: self.headers.clone(),
            persisted,
            timeout: Some(
                deadline
                    .saturating_duration_since(tokio::time::Instant::now())
                    .max(Duration::from_millis(1)),
            ),
            streaming,
        }
    }

    /// The encoded message (encoding it once if needed).
    pub(crate) fn encoded(&mut self) -> Result<Bytes, String> {
        if let Some(bytes) = &self.encoded {
            return Ok(bytes.clone());
        }
        let typed = self
            .typed
            .as_ref()
            .ok_or_else(|| "no message to send".to_owned())?;
        let value = typed
            .value
            .as_deref()
            .ok_or_else(|| "message already handed over".to_owned())?;
        let bytes = (typed.encode)(value)?;
        self.encoded = Some(bytes.clone());
        Ok(bytes)
    }

    /// The payload for a local delivery to an entity implemented by Rust type `local_type`
    /// (`None`: a dynamic entity): the value itself when the entity is of the caller's Rust type
    /// (and serialization is not simulated), else the encoded message.
    pub(crate) fn payload_for(
        &mut self,
        local_type: Option<TypeId>,
        simulate_serialization: bool,
    ) -> Result<(Option<Tag>, Payload), String> {
        if !simulate_serialization
            && let Some(typed) = &mut self.typed
            && local_type == Some(typed.entity)
            && let Some(value) = typed.value.take()
        {
            return Ok((None, Payload::Local(value)));
        }
        Ok((Some(self.tag.clone()), Payload::Encoded(self.encoded()?)))
    }

    /// Takes back a payload a delivery did not consume.
    pub(crate) fn restore(&mut self, payload: Payload) {
        if let (Payload::Local(value), Some(typed)) = (payload, &mut self.typed) {
            typed.value = Some(value);
        }
    }
}
