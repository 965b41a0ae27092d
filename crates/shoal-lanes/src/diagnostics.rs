//! Tracing events for lane routing decisions. All are emitted with target `shoal_lanes::diag` and
//! a `diag` field naming the decision, so they can be filtered (`RUST_LOG=shoal_lanes::diag=debug`)
//! or captured by tests.

/// The tracing target of lane diagnostics.
pub const TARGET: &str = "shoal_lanes::diag";

/// An event was put on a queue.
pub const ENQUEUE: &str = "lanes.enqueue";
/// A consumed (or simulated) event is being handed to the local handlers.
pub const RELAY: &str = "lanes.relay";
/// A message of a lane this profile does not consume was given back to its queue.
pub const SKIP_INACTIVE_LANE: &str = "lanes.skip-inactive-lane";
/// A failed message was scheduled for another delivery.
pub const RETRY: &str = "lanes.retry";
/// A message was dead-lettered.
pub const DEAD_LETTER: &str = "lanes.dead-letter";
/// A lane token was refused.
pub const AUTH_FAILURE: &str = "lanes.auth-failure";
/// A call was refused because the exposure's replay guard is full of unexpired token ids.
pub const REPLAY_GUARD_FULL: &str = "lanes.replay-guard-full";
/// A task or event was sent to another process through an RPC lane.
pub const REMOTE_CALL: &str = "lanes.remote-call";
/// The exposure server was not started (nothing served).
pub const EXPOSURE_SKIPPED: &str = "lanes.exposure-skipped";
