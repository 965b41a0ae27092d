//! Lane definitions: which tasks and events a lane carries.

use std::fmt;
use std::sync::Arc;

use crate::auth::TargetKind;
use crate::registry::Target;

/// A task or an event, as an `apply_to` predicate sees it.
#[derive(Debug, Clone, Copy)]
pub struct TargetInfo<'a> {
    /// Its id.
    pub id: &'a str,
    /// Task or event.
    pub kind: TargetKind,
}

type Predicate = Arc<dyn Fn(&TargetInfo<'_>) -> bool + Send + Sync>;

/// Which definitions a lane carries: a list of ids, or a predicate over every registered one.
#[derive(Clone)]
pub enum ApplyTo {
    /// These ids (each must be registered, of a kind the lane accepts).
    Ids(Vec<String>),
    /// Every registered definition of a kind the lane accepts for which this returns true.
    Predicate(Predicate),
}

impl fmt::Debug for ApplyTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyTo::Ids(ids) => f.debug_tuple("Ids").field(ids).finish(),
            ApplyTo::Predicate(_) => f.write_str("Predicate(..)"),
        }
    }
}

impl Default for ApplyTo {
    fn default() -> Self {
        ApplyTo::Ids(Vec::new())
    }
}

impl ApplyTo {
    fn push(&mut self, id: &str) {
        match self {
            ApplyTo::Ids(ids) => ids.push(id.to_owned()),
            ApplyTo::Predicate(_) => *self = ApplyTo::Ids(vec![id.to_owned()]),
        }
    }
}

/// An event lane: events that travel through a queue to the processes that consume the lane.
///
/// ```
/// use shoal_lanes::{EventDef, EventLane};
///
/// const CREATED: EventDef<u64> = EventDef::new("orders:created");
/// let lane = EventLane::new("orders").apply_to([CREATED]);
/// assert_eq!(lane.id(), "orders");
/// ```
#[derive(Debug, Clone)]
pub struct EventLane {
    pub(crate) id: String,
    pub(crate) apply_to: ApplyTo,
}

impl EventLane {
    /// A lane named `id` that carries nothing yet.
    pub fn new(id: impl Into<String>) -> Self {
        EventLane {
            id: id.into(),
            apply_to: ApplyTo::default(),
        }
    }

    /// Adds these events (definitions or ids).
    pub fn apply_to<T: Target>(mut self, targets: impl IntoIterator<Item = T>) -> Self {
        for target in targets {
            self.apply_to.push(target.target_id());
        }
        self
    }

    /// Carries every registered event for which `predicate` returns true (replaces a list).
    pub fn apply_when(
        mut self,
        predicate: impl Fn(&TargetInfo<'_>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.apply_to = ApplyTo::Predicate(Arc::new(predicate));
        self
    }

    /// The lane's id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// An RPC lane: tasks (and events) that run in the processes serving the lane, called from the
/// others through a communicator.
///
/// ```
/// use shoal_lanes::{RpcLane, TaskDef};
///
/// const CHARGE: TaskDef<i64, String> = TaskDef::new("billing:charge");
/// let lane = RpcLane::new("billing").apply_to([CHARGE]);
/// assert_eq!(lane.id(), "billing");
/// ```
#[derive(Debug, Clone)]
pub struct RpcLane {
    pub(crate) id: String,
    pub(crate) apply_to: ApplyTo,
}

impl RpcLane {
    /// A lane named `id` that carries nothing yet.
    pub fn new(id: impl Into<String>) -> Self {
        RpcLane {
            id: id.into(),
            apply_to: ApplyTo::default(),
        }
    }

    /// Adds these tasks or events (definitions or ids).
    pub fn apply_to<T: Target>(mut self, targets: impl IntoIterator<Item = T>) -> Self {
        for target in targets {
            self.apply_to.push(target.target_id());
        }
        self
    }

    /// Carries every registered task and event for which `predicate` returns true.
    pub fn apply_when(
        mut self,
        predicate: impl Fn(&TargetInfo<'_>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.apply_to = ApplyTo::Predicate(Arc::new(predicate));
        self
    }

    /// The lane's id.
    pub fn id(&self) -> &str {
        &self.id
    }
}
