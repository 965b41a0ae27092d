//! The topology: lanes, profiles (who consumes and serves what) and bindings (what backs a lane).

use std::sync::Arc;
use std::time::Duration;

use crate::auth::LaneAuth;
use crate::communicator::Communicator;
use crate::lane::{EventLane, RpcLane};
use crate::queue::EventQueue;

/// One lane a profile consumes, optionally restricted to some handlers.
#[derive(Debug, Clone)]
pub struct ConsumeEntry {
    pub(crate) lane: String,
    pub(crate) only_handlers: Option<Vec<String>>,
}

/// What one kind of process does: the event lanes it consumes and the RPC lanes it serves.
///
/// ```
/// use shoal_lanes::Profile;
///
/// let worker = Profile::new().consume("emails").serve("billing");
/// let api = Profile::new(); // produces and calls, consumes and serves nothing
/// # let _ = (worker, api);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub(crate) consume: Vec<ConsumeEntry>,
    pub(crate) serve: Vec<String>,
}

impl Profile {
    /// A profile that consumes and serves nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes event lane `lane`: its queued events run this process's handlers.
    pub fn consume(mut self, lane: impl Into<String>) -> Self {
        self.consume.push(ConsumeEntry {
            lane: lane.into(),
            only_handlers: None,
        });
        self
    }

    /// Consumes event lane `lane`, running only the named handlers for its events (handlers not
    /// listed do not run for relayed events; local emissions are not affected).
    pub fn consume_only<S: Into<String>>(
        mut self,
        lane: impl Into<String>,
        handlers: impl IntoIterator<Item = S>,
    ) -> Self {
        self.consume.push(ConsumeEntry {
            lane: lane.into(),
            only_handlers: Some(handlers.into_iter().map(Into::into).collect()),
        });
        self
    }

    /// Serves RPC lane `lane`: its tasks and events run here, and are exposed to other processes.
    pub fn serve(mut self, lane: impl Into<String>) -> Self {
        self.serve.push(lane.into());
        self
    }
}

/// What backs an event lane: a queue, the consumer's retry policy and the lane's auth.
#[derive(Debug, Clone)]
pub struct EventBinding {
    pub(crate) lane: String,
    pub(crate) queue: Arc<dyn EventQueue>,
    pub(crate) prefetch: usize,
    pub(crate) max_attempts: u32,
    pub(crate) retry_delay: Duration,
    pub(crate) auth: LaneAuth,
    pub(crate) allowed_context: Vec<String>,
}

impl EventBinding {
    /// Binds `lane` to `queue`, with prefetch 1, one attempt, no retry delay and no auth.
    pub fn new(lane: impl Into<String>, queue: Arc<dyn EventQueue>) -> Self {
        EventBinding {
            lane: lane.into(),
            queue,
            prefetch: 1,
            max_attempts: 1,
            retry_delay: Duration::ZERO,
            auth: LaneAuth::none(),
            allowed_context: Vec::new(),
        }
    }

    /// How many messages of this queue a consumer handles at once (at least 1). When several
    /// lanes share a queue, the largest prefetch among the consumed lanes applies.
    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// How many deliveries a message gets before it is dead-lettered (at least 1).
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// How long a failed message waits before its next delivery. The wait happens in the queue:
    /// it holds no consumer slot and blocks no other message.
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    /// The lane's token auth.
    pub fn auth(mut self, auth: LaneAuth) -> Self {
        self.auth = auth;
        self
    }

    /// Context keys forwarded with the lane's events (none by default).
    pub fn allow_context<S: Into<String>>(mut self, keys: impl IntoIterator<Item = S>) -> Self {
        self.allowed_context = keys.into_iter().map(Into::into).collect();
        self
    }
}

/// What backs an RPC lane: how to reach the processes serving it, and its auth.
#[derive(Debug, Clone)]
pub struct RpcBinding {
    pub(crate) lane: String,
    pub(crate) communicator: Option<Arc<dyn Communicator>>,
    pub(crate) auth: LaneAuth,
    pub(crate) allowed_context: Vec<String>,
}

impl RpcBinding {
    /// Binds `lane`, with no communicator (enough for the serving side) and no auth.
    pub fn new(lane: impl Into<String>) -> Self {
        RpcBinding {
            lane: lane.into(),
            communicator: None,
            auth: LaneAuth::none(),
            allowed_context: Vec::new(),
        }
    }

    /// How callers that do not serve the lane reach it.
    pub fn communicator(mut self, communicator: Arc<dyn Communicator>) -> Self {
        self.communicator = Some(communicator);
        self
    }

    /// The lane's token auth.
    pub fn auth(mut self, auth: LaneAuth) -> Self {
        self.auth = auth;
        self
    }

    /// Context keys forwarded with the lane's calls (none by default).
    pub fn allow_context<S: Into<String>>(mut self, keys: impl IntoIterator<Item = S>) -> Self {
        self.allowed_context = keys.into_iter().map(Into::into).collect();
        self
    }
}

/// Lanes, profiles and bindings: one value shared by every process of a deployment, each process
/// picking its profile at start.
///
/// ```
/// use std::sync::Arc;
/// use shoal_lanes::{EventBinding, EventLane, MemoryQueue, Profile, Topology};
///
/// let queue = Arc::new(MemoryQueue::new("main"));
/// let topology = Topology::new()
///     .event_lane(EventLane::new("emails").apply_to(["users:signed-up"]))
///     .profile("api", Profile::new())
///     .profile("worker", Profile::new().consume("emails"))
///     .bind_event(EventBinding::new("emails", queue).max_attempts(3));
/// # let _ = topology;
/// ```
#[derive(Debug, Clone, Default)]
pub struct Topology {
    pub(crate) event_lanes: Vec<EventLane>,
    pub(crate) rpc_lanes: Vec<RpcLane>,
    pub(crate) profiles: Vec<(String, Profile)>,
    pub(crate) event_bindings: Vec<EventBinding>,
    pub(crate) rpc_bindings: Vec<RpcBinding>,
}

impl Topology {
    /// An empty topology.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an event lane.
    pub fn event_lane(mut self, lane: EventLane) -> Self {
        self.event_lanes.push(lane);
        self
    }

    /// Adds an RPC lane.
    pub fn rpc_lane(mut self, lane: RpcLane) -> Self {
        self.rpc_lanes.push(lane);
        self
    }

    /// Adds (or replaces) profile `name`.
    pub fn profile(mut self, name: impl Into<String>, profile: Profile) -> Self {
        let name = name.into();
        self.profiles.retain(|(n, _)| *n != name);
        self.profiles.push((name, profile));
        self
    }

    /// Binds an event lane.
    pub fn bind_event(mut self, binding: EventBinding) -> Self {
        self.event_bindings.push(binding);
        self
    }

    /// Binds an RPC lane.
    pub fn bind_rpc(mut self, binding: RpcBinding) -> Self {
        self.rpc_bindings.push(binding);
        self
    }
}
