//! Clients: typed ([`EntityClient`]) and untyped ([`DynamicClient`]).

use std::any::TypeId;
use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use shoal_protocol::{EntityAddress, EntityId, EntityType, Headers, Snowflake, Tag};

use crate::entity::{
    Entity, EntityContext, GroupSelector, Handler, Message, ReplyValue, StreamHandler,
};
use crate::error::{CallError, CallErrorKind};
use crate::router::Router;
use crate::router::dispatch::ReplyItems;
use crate::router::outgoing::Outgoing;
use crate::router::outgoing::{PersistSpec, Typed, encode_json};
use crate::sharding::Sharding;
use crate::singleton::SingletonContext;

/// Per-call options.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CallOptions {
    /// How long to wait for the reply, retries included (default:
    /// [`crate::ShardingConfig::default_call_timeout`]).
    pub timeout: Option<Duration>,
    /// Headers passed to the handler.
    pub headers: Headers,
    /// Dynamic calls: whether the message is persisted (default: as the tag was registered on
    /// this runner; volatile for types not registered here). Typed calls use
    /// [`crate::Message::PERSISTED`].
    pub persisted: Option<bool>,
    /// Dynamic persisted calls: the deduplication key (see [`crate::Message::primary_key`]).
    pub primary_key: Option<String>,
    /// Dynamic persisted calls: do not deliver before this time.
    pub deliver_at: Option<SystemTime>,
}

impl CallOptions {
    /// Options with a deadline.
    pub fn timeout(timeout: Duration) -> Self {
        Self {
            timeout: Some(timeout),
            ..Self::default()
        }
    }

    /// Sets the deadline.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the headers passed to the handler.
    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// Marks a dynamic call persisted (or volatile).
    pub fn with_persisted(mut self, persisted: bool) -> Self {
        self.persisted = Some(persisted);
        self
    }

    /// Sets the deduplication key of a persisted dynamic call.
    pub fn with_primary_key(mut self, key: impl Into<String>) -> Self {
        self.primary_key = Some(key.into());
        self
    }

    /// Schedules a persisted dynamic call.
    pub fn with_deliver_at(mut self, at: SystemTime) -> Self {
        self.deliver_at = Some(at);
        self
    }
}

/// Calls entities of type `E`. Get one with [`Sharding::client`].
pub struct EntityClient<E> {
    router: Router,
    entity_type: Result<EntityType, shoal_protocol::InvalidName>,
    _entity: PhantomData<fn() -> E>,
}

impl<E> Clone for EntityClient<E> {
    fn clone(&self) -> Self {
        Self {
            router: self.router.clone(),
            entity_type: self.entity_type.clone(),
            _entity: PhantomData,
        }
    }
}

impl<E> fmt::Debug for EntityClient<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntityClient")
            .field("entity_type", &self.entity_type)
            .finish()
    }
}

impl<E: Entity> EntityClient<E> {
    pub(crate) fn new(router: Router) -> Self {
        Self {
            router,
            entity_type: EntityType::from_static(E::TYPE),
            _entity: PhantomData,
        }
    }
}

impl DynamicClient {
    pub(crate) fn new(router: Router, entity_type: EntityType, group: GroupSelector) -> Self {
        Self {
            router,
            entity_type,
            group,
        }
    }

    /// A client for a type registered on the runner of `router`, with the registration's
    /// shard group mapping.
    fn registered(router: &Router, entity_type: &EntityType) -> Option<Self> {
        let group = router.local().group_selector(entity_type)?;
        Some(Self::new(router.clone(), entity_type.clone(), group))
    }
}

impl Sharding {
    /// A client for entities of type `E`.
    pub fn client<E: Entity>(&self) -> EntityClient<E> {
        EntityClient::new(self.router().clone())
    }

    /// A client that sends encoded messages to entities of `entity_type` (for gateways and
    /// bridges). `group` maps ids to shard groups; it must match the hosts' mapping.
    pub fn dynamic_client(&self, entity_type: EntityType, group: GroupSelector) -> DynamicClient {
        DynamicClient::new(self.router().clone(), entity_type, group)
    }

    /// A dynamic client for a type registered on this runner, with the registration's shard
    /// group mapping.
    pub fn dynamic_client_for(&self, entity_type: &EntityType) -> Option<DynamicClient> {
        DynamicClient::registered(self.router(), entity_type)
    }
}

impl EntityContext {
    /// A client to call entities of type `E` (a call to this entity itself waits behind the
    /// running handler: send it as a notification, or from a spawned task).
    pub fn client<E: Entity>(&self) -> EntityClient<E> {
        EntityClient::new(self.router().clone())
    }

    /// A client that sends encoded messages to entities of `entity_type` (see
    /// [`Sharding::dynamic_client`]).
    pub fn dynamic_client(&self, entity_type: EntityType, group: GroupSelector) -> DynamicClient {
        DynamicClient::new(self.router().clone(), entity_type, group)
    }
}

impl SingletonContext {
    /// A client to call entities of type `E`.
    pub fn client<E: Entity>(&self) -> EntityClient<E> {
        EntityClient::new(self.router().clone())
    }

    /// A client that sends encoded messages to entities of `entity_type` (see
    /// [`Sharding::dynamic_client`]).
    pub fn dynamic_client(&self, entity_type: EntityType, group: GroupSelector) -> DynamicClient {
        DynamicClient::new(self.router().clone(), entity_type, group)
    }
}

/// Sends a request and waits for its reply (a persisted request is stored first).
async fn send_unary(router: &Router, out: Outgoing) -> Result<ReplyValue, CallError> {
    if out.persist.is_some() {
        router.call_persisted(out).await
    } else {
        router.call_unary(out).await
    }
}

/// Sends a request and waits only for its acceptance: a persisted one is stored (then run), a
/// volatile one is put in the entity's mailbox.
async fn send_notify(router: &Router, out: Outgoing) -> Result<(), CallError> {
    if out.persist.is_some() {
        router.submit_persisted(out).await.map(drop)
    } else {
        router.call_notify(out).await
    }
}

/// Sends a request and returns its stream of replies.
async fn send_stream(router: &Router, out: Outgoing) -> Result<ReplyItems, CallError> {
    if out.persist.is_some() {
        router.call_persisted_stream(out).await
    } else {
        router.call_stream(out).await
    }
}

impl<E: Entity> EntityClient<E> {
    /// The address of the entity `id` and the tag of `M`.
    fn target<M: Message>(&self, id: &str) -> Result<(EntityAddress, Tag), CallError> {
        let entity_id =
            EntityId::new(id).map_err(|reason| CallError::invalid_entity_id(id, reason))?;
        let entity_type = self
            .entity_type
            .clone()
            .map_err(|reason| CallError::invalid_entity_id(E::TYPE, reason))?;
        let tag = Tag::from_static(M::TAG)
            .map_err(|reason| CallError::invalid_entity_id(M::TAG, reason))?;
        let shard = self
            .router
            .shard_in(&E::shard_group(&entity_id), &entity_id);
        Ok((EntityAddress::new(shard, entity_type, entity_id), tag))
    }

    fn outgoing<M: Message>(
        &self,
        id: &str,
        msg: M,
        options: CallOptions,
    ) -> Result<Outgoing, CallError> {
        let (address, tag) = self.target::<M>(id)?;
        let persist = M::PERSISTED.then(|| PersistSpec {
            primary_key: msg.primary_key(),
            deliver_at: msg.deliver_at(),
            uninterruptible: M::UNINTERRUPTIBLE,
        });
        Ok(Outgoing {
            address,
            tag,
            headers: options.headers,
            timeout: options
                .timeout
                .unwrap_or(self.router.config().default_call_timeout()),
            typed: Some(Typed {
                entity: TypeId::of::<E>(),
                encode: encode_json::<M>,
                value: Some(Box::new(msg)),
            }),
            encoded: None,
            persist,
        })
    }

    /// Sends `msg` to the entity `id` and waits for the reply.
    pub async fn call<M: Message>(&self, id: &str, msg: M) -> Result<M::Reply, CallError>
    where
        E: Handler<M>,
    {
        self.call_with(id, msg, CallOptions::default()).await
    }

    /// [`EntityClient::call`] with options.
    pub async fn call_with<M: Message>(
        &self,
        id: &str,
        msg: M,
        options: CallOptions,
    ) -> Result<M::Reply, CallError>
    where
        E: Handler<M>,
    {
        let out = self.outgoing(id, msg, options)?;
        let address = out.address.clone();
        let reply = send_unary(&self.router, out).await?;
        decode_reply::<M::Reply>(&address, reply)
    }

    /// Sends `msg` without waiting for the handler: returns once the entity's runner accepted it
    /// into the mailbox.
    pub async fn notify<M: Message>(&self, id: &str, msg: M) -> Result<(), CallError>
    where
        E: Handler<M>,
    {
        let out = self.outgoing(id, msg, CallOptions::default())?;
        send_notify(&self.router, out).await
    }

    /// Stores the persisted message `msg` for the entity `id` and returns its request id as soon
    /// as it is stored, without waiting for the handler (which runs as for
    /// [`EntityClient::call`]). Keep the id to interrupt the request
    /// ([`EntityClient::interrupt`]). A duplicate primary key returns the original's id.
    /// Volatile messages are refused ([`CallErrorKind::NotSupported`]): use
    /// [`EntityClient::notify`].
    pub async fn submit<M: Message>(&self, id: &str, msg: M) -> Result<Snowflake, CallError>
    where
        E: Handler<M>,
    {
        let out = self.outgoing(id, msg, CallOptions::default())?;
        if out.persist.is_none() {
            return Err(CallError::new(
                CallErrorKind::NotSupported {
                    tag: M::TAG.to_owned(),
                    action: "submitted (the message is volatile)",
                },
                out.address,
                "",
            ));
        }
        self.router.submit_persisted(out).await
    }

    /// Interrupts the persisted request `request` (of message type `M`, from
    /// [`EntityClient::submit`] or [`crate::EntityContext::request_id`]) of the entity `id`.
    /// The interrupt is stored: the shard's owner stops the handler if it is running, or answers
    /// the request without running it; either way its reply is [`CallErrorKind::Interrupted`] and it
    /// does not run again. Interrupting a finished request does nothing. Messages declared
    /// [`Message::UNINTERRUPTIBLE`], and volatile ones, are refused with
    /// [`CallErrorKind::NotSupported`].
    pub async fn interrupt<M: Message>(
        &self,
        id: &str,
        request: Snowflake,
    ) -> Result<(), CallError> {
        let (address, tag) = self.target::<M>(id)?;
        if !M::PERSISTED || M::UNINTERRUPTIBLE {
            let action = if M::PERSISTED {
                "interrupted (the message is uninterruptible)"
            } else {
                "interrupted by id (the message is volatile)"
            };
            return Err(CallError::new(
                CallErrorKind::NotSupported {
                    tag: M::TAG.to_owned(),
                    action,
                },
                address,
                "",
            ));
        }
        let out = Outgoing {
            address,
            tag,
            headers: Headers::new(),
            timeout: self.router.config().default_call_timeout(),
            typed: None,
            encoded: None,
            persist: None,
        };
        self.router.interrupt_persisted(&out, request).await
    }

    /// Sends `msg` and returns the stream of replies.
    ///
    /// A persisted stream ([`Message::PERSISTED`]) yields each item once, in order, even when
    /// its entity's runner dies mid-stream: the shard's next owner resumes it after the items
    /// already stored (see [`crate::ChunkSink`]).
    pub async fn stream<M: Message>(
        &self,
        id: &str,
        msg: M,
    ) -> Result<BoxStream<'static, Result<M::Reply, CallError>>, CallError>
    where
        E: StreamHandler<M>,
    {
        self.stream_with(id, msg, CallOptions::default()).await
    }

    /// [`EntityClient::stream`] with options. The timeout bounds the wait for the first item of
    /// a volatile stream, and the wait for each item of a persisted stream.
    pub async fn stream_with<M: Message>(
        &self,
        id: &str,
        msg: M,
        options: CallOptions,
    ) -> Result<BoxStream<'static, Result<M::Reply, CallError>>, CallError>
    where
        E: StreamHandler<M>,
    {
        let out = self.outgoing(id, msg, options)?;
        let address = out.address.clone();
        let items = send_stream(&self.router, out).await?;
        Ok(items
            .map(move |item| item.and_then(|value| decode_reply::<M::Reply>(&address, value)))
            .boxed())
    }
}

fn decode_reply<T: serde::de::DeserializeOwned + 'static>(
    address: &EntityAddress,
    reply: ReplyValue,
) -> Result<T, CallError> {
    match reply {
        ReplyValue::Local(value) => value.downcast::<T>().map(|v| *v).map_err(|_| {
            CallError::new(
                CallErrorKind::MalformedMessage,
                address.clone(),
                "reply of an unexpected type",
            )
        }),
        ReplyValue::Encoded(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            CallError::new(
                CallErrorKind::MalformedMessage,
                address.clone(),
                format!("reply does not decode: {e}"),
            )
            .with_source(e)
        }),
    }
}

/// Sends already-encoded messages to entities of one type.
#[derive(Debug, Clone)]
pub struct DynamicClient {
    router: Router,
    entity_type: EntityType,
    group: GroupSelector,
}

impl DynamicClient {
    fn outgoing(
        &self,
        id: &str,
        tag: &str,
        payload: Bytes,
        options: CallOptions,
    ) -> Result<Outgoing, CallError> {
        let entity_id =
            EntityId::new(id).map_err(|reason| CallError::invalid_entity_id(id, reason))?;
        let shard = self
            .router
            .shard_in(&self.group.group_of(&entity_id), &entity_id);
        let address = EntityAddress::new(shard, self.entity_type.clone(), entity_id);
        let tag = Tag::new(tag).map_err(|reason| {
            CallError::new(
                CallErrorKind::UnknownTag {
                    tag: tag.to_owned(),
                },
                address.clone(),
                "",
            )
            .with_source(reason)
        })?;
        let persisted = options.persisted.unwrap_or_else(|| {
            self.router
                .local()
                .tag_info(&self.entity_type, &tag)
                .is_some_and(|info| info.persisted)
        });
        let persist = persisted.then_some(PersistSpec {
            primary_key: options.primary_key,
            deliver_at: options.deliver_at,
            uninterruptible: false,
        });
        Ok(Outgoing {
            address,
            tag,
            headers: options.headers,
            timeout: options
                .timeout
                .unwrap_or(self.router.config().default_call_timeout()),
            typed: None,
            encoded: Some(payload),
            persist,
        })
    }

    /// Sends an encoded message and waits for the encoded reply.
    pub async fn call(
        &self,
        id: &str,
        tag: &str,
        payload: Bytes,
        options: CallOptions,
    ) -> Result<Bytes, CallError> {
        let out = self.outgoing(id, tag, payload, options)?;
        let address = out.address.clone();
        match send_unary(&self.router, out).await? {
            ReplyValue::Encoded(bytes) => Ok(bytes),
            ReplyValue::Local(_) => Err(CallError::new(
                CallErrorKind::MalformedMessage,
                address,
                "reply was not encoded",
            )),
        }
    }

    /// Delivers an encoded message without waiting for the handler.
    pub async fn notify(
        &self,
        id: &str,
        tag: &str,
        payload: Bytes,
        options: CallOptions,
    ) -> Result<(), CallError> {
        let out = self.outgoing(id, tag, payload, options)?;
        send_notify(&self.router, out).await
    }

    /// Sends an encoded message and returns the stream of encoded replies.
    pub async fn stream(
        &self,
        id: &str,
        tag: &str,
        payload: Bytes,
        options: CallOptions,
    ) -> Result<BoxStream<'static, Result<Bytes, CallError>>, CallError> {
        let out = self.outgoing(id, tag, payload, options)?;
        let address = out.address.clone();
        let items = send_stream(&self.router, out).await?;
        Ok(items
            .map(move |item| {
                item.and_then(|value| match value {
                    ReplyValue::Encoded(bytes) => Ok(bytes),
                    ReplyValue::Local(_) => Err(CallError::new(
                        CallErrorKind::MalformedMessage,
                        address.clone(),
                        "reply was not encoded",
                    )),
                })
            })
            .boxed())
    }
}
