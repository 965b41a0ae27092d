//! Entities: the typed API ([`Entity`], [`Message`], [`Handler`], [`EntityDefinition`], and
//! [`Handlers`] for handlers declared with `#[handlers]`) and the dynamic one ([`DynamicEntity`],
//! [`DynamicDefinition`]) for entities whose messages are only known at run time (for example,
//! entities served by a worker process in another language).

mod behavior;
mod context;
mod declared;
mod definition;
mod dynamic;
mod handler;
mod kv;
mod message;
mod options;
mod payload;
mod stream;

pub(crate) use behavior::{Behavior, BehaviorFactory, Call, CallFailure, CallResult, TagInfo};
pub use context::EntityContext;
pub(crate) use context::{ContextSource, InstanceFlags};
pub use declared::Handlers;
pub use definition::EntityDefinition;
pub use dynamic::{DynamicDefinition, DynamicEntity, DynamicFactory, DynamicRequest, TagKind};
pub use handler::{Entity, Handler, HandlerError, HandlerErrorKind, StreamHandler};
pub use kv::EntityKvHandle;
pub use message::Message;
pub use options::{EntityOptions, GroupSelector};
pub(crate) use payload::{Payload, ReplyValue};
pub(crate) use stream::{ChunkReceiver, ChunkSender, chunk_channel, resumed_chunk_channel};
pub use stream::{ChunkSink, RawChunkSink, StreamClosed};

/// What [`crate::Sharding::register`] accepts: a typed or dynamic entity definition.
pub trait Registration: Send + 'static {
    /// Turns the definition into the runtime's internal form.
    #[doc(hidden)]
    fn into_parts(self) -> Result<RegistrationParts, crate::RegisterError>;
}

/// The runtime's internal form of an entity registration.
#[doc(hidden)]
#[derive(Debug)]
pub struct RegistrationParts {
    pub(crate) entity_type: shoal_protocol::EntityType,
    pub(crate) factory: std::sync::Arc<dyn BehaviorFactory>,
    pub(crate) tags: std::collections::HashMap<shoal_protocol::Tag, TagInfo>,
    pub(crate) options: EntityOptions,
    /// `Some` for typed entities: the Rust type, so local calls may skip serialization.
    pub(crate) rust_type: Option<std::any::TypeId>,
}
