//! Errors: start-time guard rails ([`LanesConfigError`], [`LanesStartError`]) and call-time
//! failures ([`LanesCallError`], [`RunError`]). Every error has a stable id (`id()`) for logs,
//! metrics and tests. The names say `Lanes` so that they are not taken for the errors of the
//! sharding runtime (`shoal_sharding::CallError`, `shoal_sharding::StartError`).

use thiserror::Error;

use crate::auth::AuthError;
use crate::communicator::RemoteError;
use crate::id::IdKind;
use crate::queue::QueueError;

/// A topology, registry or mode that cannot start. Reported by [`crate::LanesBuilder::start`].
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum LanesConfigError {
    /// An id breaks the id rules (see [`crate::id::check_id`]).
    #[error("invalid {kind} id \"{id}\": {reason}")]
    InvalidId {
        /// What the id names.
        kind: IdKind,
        /// The id.
        id: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A task or event id is defined twice incompatibly.
    #[error("\"{id}\" is defined twice: {reason}")]
    DuplicateDefinition {
        /// The id.
        id: String,
        /// How.
        reason: &'static str,
    },
    /// A task has two handlers, or an event two handlers with one name.
    #[error("\"{target}\" has two handlers named \"{handler}\"")]
    DuplicateHandler {
        /// The task or event.
        target: String,
        /// The handler.
        handler: String,
    },
    /// Two lanes (of either system) share an id.
    #[error("lane \"{lane}\" is defined more than once")]
    DuplicateLane {
        /// The lane.
        lane: String,
    },
    /// A lane's `apply_to` names an id that is neither a registered task nor event.
    #[error("lane \"{lane}\" applies to \"{target}\", which is not registered")]
    UnknownTarget {
        /// The lane.
        lane: String,
        /// The unknown id.
        target: String,
    },
    /// A lane's `apply_to` names a target of the wrong kind (a task on an event lane).
    #[error("lane \"{lane}\" applies to \"{target}\", which is not {expected}")]
    TargetKind {
        /// The lane.
        lane: String,
        /// The target.
        target: String,
        /// What the lane accepts.
        expected: &'static str,
    },
    /// One definition is assigned to two different lanes of one system.
    #[error("\"{target}\" is assigned to two lanes: \"{first}\" and \"{second}\"")]
    AssignmentConflict {
        /// The task or event.
        target: String,
        /// One lane.
        first: String,
        /// The other lane.
        second: String,
    },
    /// An event is assigned to an event lane and to an RPC lane.
    #[error("event \"{event}\" is on event lane \"{event_lane}\" and on RPC lane \"{rpc_lane}\"")]
    EventInBothSystems {
        /// The event.
        event: String,
        /// Its event lane.
        event_lane: String,
        /// Its RPC lane.
        rpc_lane: String,
    },
    /// The active profile is not in the topology.
    #[error("profile \"{profile}\" is not in the topology")]
    ProfileNotFound {
        /// The profile.
        profile: String,
    },
    /// A profile or binding names a lane the topology does not define (or of the wrong system).
    #[error("{used_in} names {expected} \"{lane}\", which the topology does not define")]
    UnknownLane {
        /// The lane.
        lane: String,
        /// Where it is named.
        used_in: String,
        /// What was expected ("an event lane" or "an RPC lane").
        expected: &'static str,
    },
    /// A profile lists one lane twice.
    #[error("profile \"{profile}\" lists lane \"{lane}\" twice")]
    DuplicateProfileEntry {
        /// The profile.
        profile: String,
        /// The lane.
        lane: String,
    },
    /// A profile's handler allow-list names a handler that no event of the lane has.
    #[error(
        "profile \"{profile}\" allows handler \"{handler}\" on lane \"{lane}\", but no event of that lane has it"
    )]
    UnknownHandler {
        /// The profile.
        profile: String,
        /// The lane.
        lane: String,
        /// The handler.
        handler: String,
    },
    /// A lane is bound twice.
    #[error("lane \"{lane}\" is bound multiple times; define exactly one binding per lane")]
    DuplicateBinding {
        /// The lane.
        lane: String,
    },
    /// A lane that network mode needs has no binding.
    #[error("{system} lane \"{lane}\" has no binding")]
    BindingMissing {
        /// `event` or `RPC`.
        system: &'static str,
        /// The lane.
        lane: String,
    },
    /// An RPC lane this profile calls remotely has no communicator.
    #[error(
        "RPC lane \"{lane}\" is not served by profile \"{profile}\" and its binding has no communicator"
    )]
    CommunicatorMissing {
        /// The lane.
        lane: String,
        /// The active profile.
        profile: String,
    },
    /// A binding's retry policy is invalid.
    #[error("lane \"{lane}\": field \"{field}\" {reason}")]
    InvalidPolicy {
        /// The lane.
        lane: String,
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A profile consumes some, not all, of the lanes bound to one queue (delivery on a shared
    /// queue would bounce messages of the lanes it does not consume).
    #[error(
        "profile \"{profile}\" consumes {consumed:?} from queue \"{queue}\" but not {missing:?}; consume all lanes of a shared queue or none"
    )]
    SharedQueuePartialConsume {
        /// The profile.
        profile: String,
        /// The queue.
        queue: String,
        /// Consumed lanes.
        consumed: Vec<String>,
        /// Lanes bound to the queue but not consumed.
        missing: Vec<String>,
    },
    /// A served task has no handler in this process.
    #[error(
        "profile \"{profile}\" serves RPC lane \"{lane}\" but task \"{task}\" has no handler here"
    )]
    HandlerMissing {
        /// The profile.
        profile: String,
        /// The lane.
        lane: String,
        /// The task.
        task: String,
    },
    /// Exposure is configured in a mode other than network.
    #[error("RPC lane exposure needs network mode, not {mode}")]
    ExposureMode {
        /// The mode.
        mode: &'static str,
    },
    /// Signing or verifying material is missing for a lane this profile produces or consumes.
    #[error(transparent)]
    Auth(AuthError),
}

impl LanesConfigError {
    /// The stable id of the error.
    pub fn id(&self) -> &'static str {
        match self {
            LanesConfigError::InvalidId { .. } => "lanes-invalid-id",
            LanesConfigError::DuplicateDefinition { .. } => "lanes-duplicate-definition",
            LanesConfigError::DuplicateHandler { .. } => "lanes-duplicate-handler",
            LanesConfigError::DuplicateLane { .. } => "lanes-duplicate-lane",
            LanesConfigError::UnknownTarget { .. } => "lanes-unknown-target",
            LanesConfigError::TargetKind { .. } => "lanes-target-kind",
            LanesConfigError::AssignmentConflict { .. } => "lanes-assignment-conflict",
            LanesConfigError::EventInBothSystems { .. } => "lanes-event-in-both-systems",
            LanesConfigError::ProfileNotFound { .. } => "lanes-profile-not-found",
            LanesConfigError::UnknownLane { .. } => "lanes-unknown-lane",
            LanesConfigError::DuplicateProfileEntry { .. } => "lanes-duplicate-profile-entry",
            LanesConfigError::UnknownHandler { .. } => "lanes-unknown-handler",
            LanesConfigError::DuplicateBinding { .. } => "lanes-duplicate-binding",
            LanesConfigError::BindingMissing { .. } => "lanes-binding-missing",
            LanesConfigError::CommunicatorMissing { .. } => "lanes-communicator-missing",
            LanesConfigError::InvalidPolicy { .. } => "lanes-invalid-policy",
            LanesConfigError::SharedQueuePartialConsume { .. } => {
                "lanes-shared-queue-partial-consume"
            }
            LanesConfigError::HandlerMissing { .. } => "lanes-handler-missing",
            LanesConfigError::ExposureMode { .. } => "lanes-exposure-mode",
            LanesConfigError::Auth(err) => err.id(),
        }
    }
}

/// Why lanes did not start.
#[derive(Debug, Error)]
pub enum LanesStartError {
    /// Guard rails refused the configuration; every problem found is listed (the first is
    /// also the `Display`).
    #[error("{}", .0.first().map(ToString::to_string).unwrap_or_default())]
    Config(Vec<LanesConfigError>),
    /// A queue could not be initialized (connection, migrations).
    #[error("queue \"{queue}\" did not initialize: {source}")]
    Queue {
        /// The queue.
        queue: String,
        /// Why.
        source: QueueError,
    },
    /// The exposure server could not bind its address.
    #[error("RPC lane exposure could not listen: {0}")]
    Listen(std::io::Error),
}

impl LanesStartError {
    /// The stable id of the (first) error.
    pub fn id(&self) -> &'static str {
        match self {
            LanesStartError::Config(errors) => {
                errors.first().map_or("lanes-config", LanesConfigError::id)
            }
            LanesStartError::Queue { .. } => "lanes-queue-init",
            LanesStartError::Listen(_) => "lanes-exposure-listen",
        }
    }

    /// The configuration errors, if that is why start failed.
    pub fn config_errors(&self) -> &[LanesConfigError] {
        match self {
            LanesStartError::Config(errors) => errors,
            _ => &[],
        }
    }
}

/// Why a task call or an emission failed (apart from a task's own typed error).
#[derive(Debug, Error)]
pub enum LanesCallError {
    /// The id is not in the registry.
    #[error("\"{0}\" is not registered")]
    NotRegistered(String),
    /// The definition's types differ from the registered ones.
    #[error("\"{0}\" is registered with other types")]
    TypeMismatch(String),
    /// The task runs locally but this process has no handler for it.
    #[error("task \"{0}\" has no handler in this process")]
    HandlerMissing(String),
    /// The task handler failed with an untyped error (local call: the error is kept).
    #[error("task \"{task}\" failed: {source}")]
    Handler {
        /// The task.
        task: String,
        /// The handler's error.
        source: crate::BoxError,
    },
    /// The task failed on the serving side; details stay in that process's logs.
    #[error("task \"{0}\" failed (details withheld by the serving process)")]
    Internal(String),
    /// An event handler failed.
    #[error("event \"{event}\" handler \"{handler}\" failed: {source}")]
    EventHandler {
        /// The event.
        event: String,
        /// The handler.
        handler: String,
        /// Its error.
        source: crate::BoxError,
    },
    /// The input, output, payload or typed error did not survive serialization.
    #[error("\"{target}\": {what} does not (de)serialize: {message}")]
    Codec {
        /// The task or event.
        target: String,
        /// Which value.
        what: &'static str,
        /// The codec's message.
        message: String,
    },
    /// A lane token could not be made or was refused.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The remote side refused or could not be reached.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// Enqueueing the event failed.
    #[error("enqueueing on lane \"{lane}\" failed: {source}")]
    Queue {
        /// The lane.
        lane: String,
        /// The queue's error.
        source: QueueError,
    },
    /// Lanes are shutting down; nothing new is accepted.
    #[error("lanes are shutting down")]
    ShuttingDown,
}

impl LanesCallError {
    /// The stable id of the error.
    pub fn id(&self) -> &'static str {
        match self {
            LanesCallError::NotRegistered(_) => "lanes-not-registered",
            LanesCallError::TypeMismatch(_) => "lanes-type-mismatch",
            LanesCallError::HandlerMissing(_) => "lanes-handler-missing",
            LanesCallError::Handler { .. } => "lanes-task-failed",
            LanesCallError::Internal(_) => "lanes-internal",
            LanesCallError::EventHandler { .. } => "lanes-event-handler-failed",
            LanesCallError::Codec { .. } => "lanes-codec",
            LanesCallError::Auth(err) => err.id(),
            LanesCallError::Remote(err) => err.id(),
            LanesCallError::Queue { .. } => "lanes-queue",
            LanesCallError::ShuttingDown => "lanes-shutting-down",
        }
    }
}

/// The result of [`crate::Lanes::run_task`]: the task's typed error, or a [`LanesCallError`].
#[derive(Debug, Error)]
pub enum RunError<E> {
    /// The task's own typed error, as the handler returned it (decoded, if it crossed a lane).
    #[error("task error: {0:?}")]
    Task(E),
    /// Anything else.
    #[error(transparent)]
    Call(#[from] LanesCallError),
}

impl<E> RunError<E> {
    /// The typed task error, if that is what this is.
    pub fn task_error(&self) -> Option<&E> {
        match self {
            RunError::Task(e) => Some(e),
            RunError::Call(_) => None,
        }
    }

    /// The call error, if that is what this is.
    pub fn call_error(&self) -> Option<&LanesCallError> {
        match self {
            RunError::Task(_) => None,
            RunError::Call(e) => Some(e),
        }
    }
}
