//! Errors callers and registrants see.

use std::time::Duration;

use shoal_protocol::{EntityAddress, ErrorCode, Failure, RunnerAddress, Snowflake};

/// Why a call to an entity failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The entity id is not valid.
    #[error("invalid entity id {id:?}: {reason}")]
    InvalidEntityId {
        /// The refused id.
        id: String,
        /// Why.
        reason: shoal_protocol::InvalidName,
    },
    /// No runner held the entity's shard before the call's deadline (the cluster may have no
    /// runner for the entity's group, or shards are moving).
    #[error("no runner holds the shard of {address} (gave up after {waited:?})")]
    EntityNotAssignedToRunner {
        /// The entity.
        address: EntityAddress,
        /// How long the call kept retrying.
        waited: Duration,
    },
    /// The entity's mailbox (or the runner's resident-entity cap) is full.
    #[error("mailbox of {address} is full")]
    MailboxFull {
        /// The entity.
        address: EntityAddress,
    },
    /// The runner owning the entity could not be reached, or the connection broke after the
    /// request was sent (its outcome is unknown).
    #[error("the runner owning {address} is unavailable: {reason}")]
    RunnerUnavailable {
        /// The entity.
        address: EntityAddress,
        /// The runner, when known.
        runner: Option<RunnerAddress>,
        /// What the transport reported.
        reason: String,
    },
    /// Message storage failed (the request was not accepted).
    #[error("persistence failed for {address}: {message}")]
    Persistence {
        /// The entity.
        address: EntityAddress,
        /// The storage error.
        message: String,
    },
    /// The message could not be encoded or decoded.
    #[error("malformed message for {address}: {message}")]
    MalformedMessage {
        /// The entity.
        address: EntityAddress,
        /// What was wrong.
        message: String,
    },
    /// A request with the same id is already being processed.
    #[error("request {request_id} is already being processed by {address}")]
    AlreadyProcessing {
        /// The entity.
        address: EntityAddress,
        /// The request id.
        request_id: Snowflake,
    },
    /// No entity of this type is registered on the runner that owns the shard.
    #[error("entity type {entity_type:?} is not registered on the runner owning {address}")]
    UnknownEntityType {
        /// The entity.
        address: EntityAddress,
        /// The type name.
        entity_type: String,
    },
    /// The entity type has no handler for the message tag.
    #[error("entity {address} has no handler for message {tag:?}")]
    UnknownTag {
        /// The entity.
        address: EntityAddress,
        /// The tag.
        tag: String,
    },
    /// The handler failed (returned an error that is not fatal).
    #[error("handler of {address} failed: {message}")]
    Handler {
        /// The entity.
        address: EntityAddress,
        /// The handler's error.
        message: String,
    },
    /// The handler panicked or failed fatally, also after the configured replays.
    #[error("entity {address} failed with a defect: {message}")]
    Defect {
        /// The entity.
        address: EntityAddress,
        /// What happened.
        message: String,
    },
    /// The request was interrupted, or its entity was stopped while processing it (the outcome is
    /// unknown).
    #[error("request to {address} was interrupted: {message}")]
    Interrupted {
        /// The entity.
        address: EntityAddress,
        /// Why.
        message: String,
    },
    /// The caller tried to interrupt a request of an uninterruptible message
    /// ([`crate::Message::UNINTERRUPTIBLE`]), or to interrupt or submit a volatile one.
    #[error("requests of message {tag:?} to {address} cannot be {action}")]
    NotSupported {
        /// The entity.
        address: EntityAddress,
        /// The message tag.
        tag: String,
        /// What was refused ("interrupted", "submitted").
        action: &'static str,
    },
    /// This runner is shutting down and no longer sends.
    #[error("cannot call {address}: the runner is shutting down")]
    ShuttingDown {
        /// The entity.
        address: EntityAddress,
    },
    /// The message is larger than the receiving runner accepts.
    #[error("message to {address} is too large: {message}")]
    MessageTooLarge {
        /// The entity.
        address: EntityAddress,
        /// The limit that was hit.
        message: String,
    },
    /// The call's deadline passed before a reply.
    #[error("call to {address} timed out after {timeout:?}")]
    Timeout {
        /// The entity.
        address: EntityAddress,
        /// The deadline.
        timeout: Duration,
    },
    /// Storage may or may not have stored the request (it did not answer in time, or the
    /// connection broke mid-write): whether it will run is unknown. Retrying with the same
    /// primary key (the gateway's `Idempotency-Key`) is safe.
    #[error("the outcome is unknown for {address}: {message}")]
    OutcomeUnknown {
        /// The entity.
        address: EntityAddress,
        /// What happened.
        message: String,
    },
    /// This process cannot make request ids: its machine id lease has not been renewed for
    /// longer than it lasts (storage unreachable, or the process was frozen).
    #[error("cannot send to {address}: {message}")]
    NoRequestId {
        /// The entity.
        address: EntityAddress,
        /// Why.
        message: String,
    },
    /// The runner owning the entity refused this process's credentials (runner token).
    #[error("the runner owning {address} refused the call: {message}")]
    Unauthenticated {
        /// The entity.
        address: EntityAddress,
        /// Why.
        message: String,
    },
    /// A failure code this runner does not know (from a newer peer).
    #[error("call to {address} failed: {message}")]
    Other {
        /// The entity.
        address: EntityAddress,
        /// The message.
        message: String,
    },
}

impl CallError {
    /// The entity the call was for (`None` when the id itself was invalid).
    pub fn address(&self) -> Option<&EntityAddress> {
        Some(match self {
            Self::InvalidEntityId { .. } => return None,
            Self::EntityNotAssignedToRunner { address, .. }
            | Self::MailboxFull { address }
            | Self::RunnerUnavailable { address, .. }
            | Self::Persistence { address, .. }
            | Self::OutcomeUnknown { address, .. }
            | Self::NoRequestId { address, .. }
            | Self::MalformedMessage { address, .. }
            | Self::AlreadyProcessing { address, .. }
            | Self::UnknownEntityType { address, .. }
            | Self::UnknownTag { address, .. }
            | Self::Handler { address, .. }
            | Self::Defect { address, .. }
            | Self::Interrupted { address, .. }
            | Self::NotSupported { address, .. }
            | Self::ShuttingDown { address }
            | Self::MessageTooLarge { address, .. }
            | Self::Timeout { address, .. }
            | Self::Unauthenticated { address, .. }
            | Self::Other { address, .. } => address,
        })
    }

    /// The wire code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidEntityId { .. } => ErrorCode::MalformedMessage,
            Self::EntityNotAssignedToRunner { .. } => ErrorCode::EntityNotAssigned,
            Self::MailboxFull { .. } => ErrorCode::MailboxFull,
            Self::RunnerUnavailable { .. } => ErrorCode::RunnerUnavailable,
            Self::Persistence { .. } => ErrorCode::Persistence,
            Self::OutcomeUnknown { .. } => ErrorCode::OutcomeUnknown,
            Self::NoRequestId { .. } => ErrorCode::RunnerUnavailable,
            Self::MalformedMessage { .. } => ErrorCode::MalformedMessage,
            Self::AlreadyProcessing { .. } => ErrorCode::AlreadyProcessing,
            Self::UnknownEntityType { .. } => ErrorCode::UnknownEntityType,
            Self::UnknownTag { .. } => ErrorCode::UnknownTag,
            Self::Handler { .. } => ErrorCode::Handler,
            Self::Defect { .. } => ErrorCode::Defect,
            Self::Interrupted { .. } => ErrorCode::Interrupted,
            Self::NotSupported { .. } => ErrorCode::MalformedMessage,
            Self::ShuttingDown { .. } => ErrorCode::ShuttingDown,
            Self::MessageTooLarge { .. } => ErrorCode::MessageTooLarge,
            Self::Timeout { .. } => ErrorCode::DeadlineExceeded,
            Self::Unauthenticated { .. } => ErrorCode::Unauthenticated,
            Self::Other { .. } => ErrorCode::Unknown,
        }
    }

    /// Builds the error from a wire failure.
    pub fn from_failure(address: EntityAddress, failure: Failure, request_id: Snowflake) -> Self {
        let message = failure.message;
        match failure.code {
            ErrorCode::EntityNotAssigned => Self::EntityNotAssignedToRunner {
                address,
                waited: Duration::ZERO,
            },
            ErrorCode::MailboxFull => Self::MailboxFull { address },
            ErrorCode::AlreadyProcessing => Self::AlreadyProcessing {
                address,
                request_id,
            },
            ErrorCode::Persistence => Self::Persistence { address, message },
            ErrorCode::OutcomeUnknown => Self::OutcomeUnknown { address, message },
            ErrorCode::MalformedMessage => Self::MalformedMessage { address, message },
            ErrorCode::UnknownEntityType => Self::UnknownEntityType {
                entity_type: address.entity_type.to_string(),
                address,
            },
            ErrorCode::UnknownTag => Self::UnknownTag {
                address,
                tag: message,
            },
            ErrorCode::Handler => Self::Handler { address, message },
            ErrorCode::Defect => Self::Defect { address, message },
            ErrorCode::Interrupted => Self::Interrupted { address, message },
            ErrorCode::ShuttingDown => Self::ShuttingDown { address },
            ErrorCode::MessageTooLarge => Self::MessageTooLarge { address, message },
            ErrorCode::DeadlineExceeded => Self::Timeout {
                address,
                timeout: Duration::ZERO,
            },
            ErrorCode::Unauthenticated => Self::Unauthenticated { address, message },
            ErrorCode::RunnerUnavailable => Self::RunnerUnavailable {
                address,
                runner: None,
                reason: message,
            },
            _ => Self::Other { address, message },
        }
    }

    /// The wire failure for this error.
    pub fn to_failure(&self) -> Failure {
        let message = match self {
            Self::UnknownTag { tag, .. } => tag.clone(),
            other => other.to_string(),
        };
        let failure = Failure::new(self.code(), message);
        match self.address() {
            Some(address) => failure.with_address(address.clone()),
            None => failure,
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
