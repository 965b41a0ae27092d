//! Errors callers and registrants see.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use shoal_protocol::{EntityAddress, ErrorCode, Failure, RunnerAddress, Snowflake};

/// The underlying error of a [`CallError`], shared so that the error stays cheap to clone.
pub(crate) type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Why a call to an entity failed.
///
/// It tells what went wrong ([`CallError::kind`], with the data of that kind), the entity the call
/// was for ([`CallError::address`]), a description ([`CallError::message`]) and, through
/// [`std::error::Error::source`], the underlying error where there is one:
///
/// - the [`Failure`] the serving runner (or message storage, for a persisted request) answered,
///   for errors built with [`CallError::from_failure`] (handler failures, defects, refusals...);
/// - the [`TransportError`](crate::TransportError) when the connection to the entity's runner
///   broke;
/// - the [`shoal_storage::StorageError`] when message storage failed;
/// - the decoding error of a reply that does not decode, the [`shoal_protocol::InvalidName`] of
///   a refused id, the [`shoal_protocol::IdsExhausted`] of a process that cannot make request
///   ids.
///
/// Its `Display` names the entity and what happened, including the cause's description, so
/// that one line (a log, the gateway's error body) says it all.
///
/// The error is one pointer wide: results carrying it stay small.
///
/// ```
/// use std::time::Duration;
/// use shoal_sharding::{CallError, CallErrorKind};
///
/// /// How long to wait before trying again, when trying again may help.
/// fn retry_after(error: &CallError) -> Option<Duration> {
///     match error.kind() {
///         CallErrorKind::MailboxFull | CallErrorKind::RunnerUnavailable { .. } => {
///             Some(Duration::from_millis(100))
///         }
///         CallErrorKind::EntityNotAssignedToRunner { .. } => Some(Duration::from_secs(1)),
///         _ => None,
///     }
/// }
/// ```
#[derive(Clone)]
pub struct CallError(Box<Inner>);

#[derive(Clone)]
struct Inner {
    kind: CallErrorKind,
    address: Option<EntityAddress>,
    message: String,
    source: Option<Cause>,
}

/// What went wrong in a call to an entity (see [`CallError::kind`]). The entity's address is not
/// repeated here: it is [`CallError::address`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallErrorKind {
    /// The entity id (or the entity type or message tag naming it) is not valid; the error has no
    /// address, and its source is the [`shoal_protocol::InvalidName`].
    InvalidEntityId {
        /// The refused id.
        id: String,
    },
    /// No runner held the entity's shard before the call's deadline (the cluster may have no
    /// runner for the entity's group, or shards are moving).
    EntityNotAssignedToRunner {
        /// How long the call kept retrying.
        waited: Duration,
    },
    /// The entity's mailbox (or the runner's resident-entity cap) is full.
    MailboxFull,
    /// The runner owning the entity could not be reached, or the connection broke after the
    /// request was sent (its outcome is unknown).
    RunnerUnavailable {
        /// The runner, when known.
        runner: Option<RunnerAddress>,
    },
    /// Message storage failed (the request was not accepted).
    Persistence,
    /// The message could not be encoded or decoded.
    MalformedMessage,
    /// A request with the same id is already being processed.
    AlreadyProcessing {
        /// The request id.
        request_id: Snowflake,
    },
    /// No entity of this type is registered on the runner that owns the shard.
    UnknownEntityType,
    /// The entity type has no handler for the message tag.
    UnknownTag {
        /// The tag.
        tag: String,
    },
    /// The handler failed (returned an error that is not fatal).
    Handler,
    /// The handler panicked or failed fatally, also after the configured replays.
    Defect,
    /// The request was interrupted, or its entity was stopped while processing it (the outcome is
    /// unknown).
    Interrupted,
    /// The caller tried to interrupt a request of an uninterruptible message
    /// ([`crate::Message::UNINTERRUPTIBLE`]), or to interrupt or submit a volatile one.
    NotSupported {
        /// The message tag.
        tag: String,
        /// What was refused ("interrupted", "submitted").
        action: &'static str,
    },
    /// This runner is shutting down and no longer sends.
    ShuttingDown,
    /// The message is larger than the receiving runner accepts.
    MessageTooLarge,
    /// The call's deadline passed before a reply.
    Timeout {
        /// The deadline.
        timeout: Duration,
    },
    /// Storage may or may not have stored the request (it did not answer in time, or the
    /// connection broke mid-write): whether it will run is unknown. Retrying with the same
    /// primary key (the gateway's `Idempotency-Key`) is safe.
    OutcomeUnknown,
    /// This process cannot make request ids: its machine id lease has not been renewed for
    /// longer than it lasts (storage unreachable, or the process was frozen).
    NoRequestId,
    /// The runner owning the entity refused this process's credentials (runner token).
    Unauthenticated,
    /// A failure code this runner does not know (from a newer peer).
    Other,
}

impl CallError {
    /// An error of `kind` for a call to the entity at `address`, described by `message` (the
    /// part after the address in `Display`; some kinds, such as
    /// [`CallErrorKind::Timeout`], say all there is to say without it).
    pub fn new(kind: CallErrorKind, address: EntityAddress, message: impl Into<String>) -> Self {
        Self(Box::new(Inner {
            kind,
            address: Some(address),
            message: message.into(),
            source: None,
        }))
    }

    /// The id `id` (or the entity type or tag that would name the entity) was refused: an error
    /// of kind [`CallErrorKind::InvalidEntityId`], without address, whose source is `reason`.
    pub fn invalid_entity_id(id: impl Into<String>, reason: shoal_protocol::InvalidName) -> Self {
        let message = reason.to_string();
        Self(Box::new(Inner {
            kind: CallErrorKind::InvalidEntityId { id: id.into() },
            address: None,
            message,
            source: Some(Arc::new(reason)),
        }))
    }

    /// The same error, caused by `source` (returned by [`std::error::Error::source`]).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.0.source = Some(Arc::new(source));
        self
    }

    /// The same error, caused by `cause` when there is one.
    pub(crate) fn with_cause(mut self, cause: Option<Cause>) -> Self {
        self.0.source = cause;
        self
    }

    /// The call to the entity at `address` did not end within `timeout`.
    pub(crate) fn timed_out(address: &EntityAddress, timeout: Duration) -> Self {
        Self::new(CallErrorKind::Timeout { timeout }, address.clone(), "")
    }

    /// What went wrong.
    pub fn kind(&self) -> &CallErrorKind {
        &self.0.kind
    }

    /// The entity the call was for (`None` when the id itself was invalid).
    pub fn address(&self) -> Option<&EntityAddress> {
        self.0.address.as_ref()
    }

    /// What happened, in words, without the entity's address: the handler's message for a
    /// handler failure, the transport's or storage's description for an unavailable runner or a
    /// persistence failure. May be empty when the kind says it all.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The kind, to adjust what a builder set (for example the deadline of a timeout answered by
    /// the serving runner).
    pub(crate) fn kind_mut(&mut self) -> &mut CallErrorKind {
        &mut self.0.kind
    }

    /// The wire code of this error.
    pub fn code(&self) -> ErrorCode {
        match self.kind() {
            CallErrorKind::InvalidEntityId { .. } => ErrorCode::MalformedMessage,
            CallErrorKind::EntityNotAssignedToRunner { .. } => ErrorCode::EntityNotAssigned,
            CallErrorKind::MailboxFull => ErrorCode::MailboxFull,
            CallErrorKind::RunnerUnavailable { .. } => ErrorCode::RunnerUnavailable,
            CallErrorKind::Persistence => ErrorCode::Persistence,
            CallErrorKind::OutcomeUnknown => ErrorCode::OutcomeUnknown,
            CallErrorKind::NoRequestId => ErrorCode::RunnerUnavailable,
            CallErrorKind::MalformedMessage => ErrorCode::MalformedMessage,
            CallErrorKind::AlreadyProcessing { .. } => ErrorCode::AlreadyProcessing,
            CallErrorKind::UnknownEntityType => ErrorCode::UnknownEntityType,
            CallErrorKind::UnknownTag { .. } => ErrorCode::UnknownTag,
            CallErrorKind::Handler => ErrorCode::Handler,
            CallErrorKind::Defect => ErrorCode::Defect,
            CallErrorKind::Interrupted => ErrorCode::Interrupted,
            CallErrorKind::NotSupported { .. } => ErrorCode::MalformedMessage,
            CallErrorKind::ShuttingDown => ErrorCode::ShuttingDown,
            CallErrorKind::MessageTooLarge => ErrorCode::MessageTooLarge,
            CallErrorKind::Timeout { .. } => ErrorCode::DeadlineExceeded,
            CallErrorKind::Unauthenticated => ErrorCode::Unauthenticated,
            CallErrorKind::Other => ErrorCode::Unknown,
        }
    }

    /// Builds the error from a wire failure answered for the request `request_id` to the entity
    /// at `address`. The failure is kept as the error's source.
    pub fn from_failure(address: EntityAddress, failure: Failure, request_id: Snowflake) -> Self {
        let kind = match failure.code {
            ErrorCode::EntityNotAssigned => CallErrorKind::EntityNotAssignedToRunner {
                waited: Duration::ZERO,
            },
            ErrorCode::MailboxFull => CallErrorKind::MailboxFull,
            ErrorCode::AlreadyProcessing => CallErrorKind::AlreadyProcessing { request_id },
            ErrorCode::Persistence => CallErrorKind::Persistence,
            ErrorCode::OutcomeUnknown => CallErrorKind::OutcomeUnknown,
            ErrorCode::MalformedMessage => CallErrorKind::MalformedMessage,
            ErrorCode::UnknownEntityType => CallErrorKind::UnknownEntityType,
            ErrorCode::UnknownTag => CallErrorKind::UnknownTag {
                tag: failure.message.clone(),
            },
            ErrorCode::Handler => CallErrorKind::Handler,
            ErrorCode::Defect => CallErrorKind::Defect,
            ErrorCode::Interrupted => CallErrorKind::Interrupted,
            ErrorCode::ShuttingDown => CallErrorKind::ShuttingDown,
            ErrorCode::MessageTooLarge => CallErrorKind::MessageTooLarge,
            ErrorCode::DeadlineExceeded => CallErrorKind::Timeout {
                timeout: Duration::ZERO,
            },
            ErrorCode::Unauthenticated => CallErrorKind::Unauthenticated,
            ErrorCode::RunnerUnavailable => CallErrorKind::RunnerUnavailable { runner: None },
            _ => CallErrorKind::Other,
        };
        let message = failure.message.clone();
        Self::new(kind, address, message).with_source(failure)
    }

    /// The wire failure for this error.
    pub fn to_failure(&self) -> Failure {
        let message = match self.kind() {
            CallErrorKind::UnknownTag { tag } => tag.clone(),
            _ => self.to_string(),
        };
        let failure = Failure::new(self.code(), message);
        match self.address() {
            Some(address) => failure.with_address(address.clone()),
            None => failure,
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let address = Address(self.address());
        let message = self.message();
        match self.kind() {
            CallErrorKind::InvalidEntityId { id } => {
                write!(f, "invalid entity id {id:?}: {message}")
            }
            CallErrorKind::EntityNotAssignedToRunner { waited } => write!(
                f,
                "no runner holds the shard of {address} (gave up after {waited:?})"
            ),
            CallErrorKind::MailboxFull => write!(f, "mailbox of {address} is full"),
            CallErrorKind::RunnerUnavailable { .. } => {
                write!(f, "the runner owning {address} is unavailable: {message}")
            }
            CallErrorKind::Persistence => write!(f, "persistence failed for {address}: {message}"),
            CallErrorKind::MalformedMessage => {
                write!(f, "malformed message for {address}: {message}")
            }
            CallErrorKind::AlreadyProcessing { request_id } => write!(
                f,
                "request {request_id} is already being processed by {address}"
            ),
            CallErrorKind::UnknownEntityType => write!(
                f,
                "entity type {:?} is not registered on the runner owning {address}",
                self.address().map_or("", |a| a.entity_type.as_str())
            ),
            CallErrorKind::UnknownTag { tag } => {
                write!(f, "entity {address} has no handler for message {tag:?}")
            }
            CallErrorKind::Handler => write!(f, "handler of {address} failed: {message}"),
            CallErrorKind::Defect => {
                write!(f, "entity {address} failed with a defect: {message}")
            }
            CallErrorKind::Interrupted => {
                write!(f, "request to {address} was interrupted: {message}")
            }
            CallErrorKind::NotSupported { tag, action } => write!(
                f,
                "requests of message {tag:?} to {address} cannot be {action}"
            ),
            CallErrorKind::ShuttingDown => {
                write!(f, "cannot call {address}: the runner is shutting down")
            }
            CallErrorKind::MessageTooLarge => {
                write!(f, "message to {address} is too large: {message}")
            }
            CallErrorKind::Timeout { timeout } => {
                write!(f, "call to {address} timed out after {timeout:?}")
            }
            CallErrorKind::OutcomeUnknown => {
                write!(f, "the outcome is unknown for {address}: {message}")
            }
            CallErrorKind::NoRequestId => write!(f, "cannot send to {address}: {message}"),
            CallErrorKind::Unauthenticated => {
                write!(f, "the runner owning {address} refused the call: {message}")
            }
            CallErrorKind::Other => write!(f, "call to {address} failed: {message}"),
        }
    }
}

impl fmt::Debug for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallError")
            .field("kind", &self.0.kind)
            .field("address", &self.0.address)
            .field("message", &self.0.message)
            .field("source", &self.0.source)
            .finish()
    }
}

impl std::error::Error for CallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|source| source as &(dyn std::error::Error + 'static))
    }
}

/// An entity address in a message, or a placeholder when there is none.
struct Address<'a>(Option<&'a EntityAddress>);

impl fmt::Display for Address<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(address) => address.fmt(f),
            None => f.write_str("an entity with an invalid id"),
        }
    }
}

/// Why an entity type or singleton could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// The type name (or a tag) is not a valid name.
    #[error("invalid name in registration: {0}")]
    InvalidName(#[from] shoal_protocol::InvalidName),
    /// Another registration already uses this entity type.
    #[error("entity type {0:?} is already registered")]
    DuplicateEntityType(String),
    /// Two handlers of one entity type use the same tag.
    #[error("entity type {entity_type:?} registers tag {tag:?} twice")]
    DuplicateTag {
        /// The entity type.
        entity_type: String,
        /// The tag.
        tag: String,
    },
    /// A singleton with this name exists already.
    #[error("singleton {0:?} is already registered")]
    DuplicateSingleton(String),
    /// The entity's shard group is not among the cluster's available groups.
    #[error(
        "entity type {entity_type:?} uses shard group {group:?}, which is not an available group"
    )]
    UnknownGroup {
        /// The entity type.
        entity_type: String,
        /// The group.
        group: String,
    },
    /// An option is out of range.
    #[error("invalid option for entity type {entity_type:?}: {reason}")]
    InvalidOption {
        /// The entity type.
        entity_type: String,
        /// What is wrong.
        reason: String,
    },
    /// The runtime is shutting down.
    #[error("the sharding runtime is shutting down")]
    ShuttingDown,
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use shoal_protocol::{EntityId, EntityType, ShardGroup, ShardId};

    use super::*;
    use crate::TransportError;

    fn address() -> EntityAddress {
        EntityAddress::new(
            ShardId::try_new(ShardGroup::default_group(), 3).unwrap(),
            EntityType::new("account").unwrap(),
            EntityId::new("alice").unwrap(),
        )
    }

    #[test]
    fn is_one_pointer_wide() {
        assert!(size_of::<CallError>() <= size_of::<usize>());
        assert!(size_of::<Result<(), CallError>>() <= 2 * size_of::<usize>());
    }

    #[test]
    fn keeps_a_remote_handler_failure_as_its_source() {
        let failure = Failure::new(ErrorCode::Handler, "insufficient funds")
            .with_detail(bytes::Bytes::from_static(b"{\"Insufficient\":3}"));
        let error = CallError::from_failure(address(), failure.clone(), Snowflake::from_raw(7));
        assert_eq!(error.kind(), &CallErrorKind::Handler);
        assert_eq!(error.address(), Some(&address()));
        assert_eq!(error.message(), "insufficient funds");
        assert_eq!(error.code(), ErrorCode::Handler);
        let source = error.source().and_then(|s| s.downcast_ref::<Failure>());
        assert_eq!(source, Some(&failure));
        assert_eq!(
            error.to_string(),
            format!("handler of {} failed: insufficient funds", address())
        );
    }

    #[test]
    fn keeps_a_transport_failure_as_its_source() {
        let runner: RunnerAddress = "10.0.0.7:34431".parse().unwrap();
        let lost = TransportError::Lost {
            runner: runner.clone(),
            reason: "connection reset".to_owned(),
        };
        let error = CallError::new(
            CallErrorKind::RunnerUnavailable {
                runner: Some(runner.clone()),
            },
            address(),
            "connection reset",
        )
        .with_source(lost.clone());
        let source = error
            .source()
            .and_then(|s| s.downcast_ref::<TransportError>());
        assert_eq!(source, Some(&lost));
        assert_eq!(
            error.to_string(),
            format!(
                "the runner owning {} is unavailable: connection reset",
                address()
            )
        );
        // Clones share the source.
        let clone = error.clone();
        assert_eq!(
            clone
                .source()
                .and_then(|s| s.downcast_ref::<TransportError>()),
            Some(&lost)
        );
    }

    #[test]
    fn an_invalid_id_has_no_address_and_keeps_the_reason() {
        let reason = EntityId::new("").unwrap_err();
        let error = CallError::invalid_entity_id("", reason.clone());
        assert_eq!(error.address(), None);
        assert_eq!(
            error.kind(),
            &CallErrorKind::InvalidEntityId { id: String::new() }
        );
        assert_eq!(error.source().and_then(|s| s.downcast_ref()), Some(&reason));
        assert_eq!(error.to_failure().address, None);
        assert_eq!(error.code(), ErrorCode::MalformedMessage);
    }

    #[test]
    fn round_trips_through_a_wire_failure() {
        let error = CallError::new(
            CallErrorKind::UnknownTag {
                tag: "deposit".to_owned(),
            },
            address(),
            "",
        );
        let failure = error.to_failure();
        assert_eq!(failure.code, ErrorCode::UnknownTag);
        assert_eq!(failure.message, "deposit");
        assert_eq!(failure.address, Some(address()));
        let back = CallError::from_failure(address(), failure, Snowflake::from_raw(0));
        assert_eq!(back.kind(), error.kind());
        assert_eq!(back.to_string(), error.to_string());
    }
}
