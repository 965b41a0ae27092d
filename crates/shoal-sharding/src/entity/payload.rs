//! Message and reply bodies: encoded bytes, or, for calls within one process between typed ends,
//! the Rust value itself (no serialization).

use std::any::Any;
use std::fmt;

use bytes::Bytes;

/// A request body.
pub(crate) enum Payload {
    /// Encoded by the entity type's codec (JSON).
    Encoded(Bytes),
    /// The message value itself; only sent to a typed entity of the matching Rust type.
    Local(Box<dyn Any + Send + Sync>),
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Encoded(b) => write!(f, "Encoded({} bytes)", b.len()),
            Self::Local(_) => f.write_str("Local(..)"),
        }
    }
}

/// A reply body (or one streamed item).
pub(crate) enum ReplyValue {
    /// Encoded by the entity type's codec.
    Encoded(Bytes),
    /// The reply value itself.
    Local(Box<dyn Any + Send>),
}

impl fmt::Debug for ReplyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Encoded(b) => write!(f, "Encoded({} bytes)", b.len()),
            Self::Local(_) => f.write_str("Local(..)"),
        }
    }
}
