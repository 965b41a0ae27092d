//! The demo `counter` entity: `increment` (`{"by": n}`, default 1) returns the new value, `get`
//! returns the value.
//!
//! `increment` is a persisted message: it is stored before it runs and runs again after a crash
//! until its reply is stored. With the gateway's `Idempotency-Key` header, a retried increment
//! is applied once and answers the first reply. The value lives in the entity's durable
//! key-value storage when the runtime has one (as `shoal run` does), so it survives passivation,
//! shard moves and crashes; the ids of the latest increments are kept with it, so an increment
//! that ran before a crash but whose reply was not stored is not applied twice when it runs
//! again. Without key-value storage (embedded tests) the value lives in memory.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use shoal_sharding::{
    Entity, EntityContext, EntityDefinition, EntityKvHandle, Handler, HandlerError, Message,
};

/// The key under which the counter keeps its state.
const STATE_KEY: &str = "state";
/// How many recent increment ids are remembered to recognize a rerun. Reruns only concern the
/// requests that were running or queued when a runner died.
const REMEMBERED: usize = 256;

/// What the counter keeps.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    value: i64,
    /// Ids (raw Snowflakes) of the latest applied increments, oldest first.
    #[serde(default)]
    applied: VecDeque<u64>,
}

/// A counter.
#[derive(Debug, Default)]
pub struct Counter {
    state: State,
    kv: Option<EntityKvHandle>,
}

fn unavailable(what: &str, error: impl std::fmt::Display) -> HandlerError {
    HandlerError::unavailable(format!("counter storage: {what}: {error}"))
}

impl Entity for Counter {
    const TYPE: &'static str = "counter";

    async fn activate(ctx: &EntityContext) -> Result<Self, HandlerError> {
        let Some(kv) = ctx.kv() else {
            return Ok(Counter::default());
        };
        let state = match kv.get(STATE_KEY).await {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes)
                .map_err(|e| HandlerError::fatal(format!("counter state does not decode: {e}")))?,
            Ok(None) => State::default(),
            Err(e) => return Err(HandlerError::fatal(format!("counter storage: load: {e}"))),
        };
        Ok(Counter {
            state,
            kv: Some(kv),
        })
    }
}

/// Adds `by` (default 1) and returns the new value.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Increment {
    /// How much to add (may be negative).
    #[serde(default = "one")]
    pub by: i64,
}

fn one() -> i64 {
    1
}

impl Message for Increment {
    const TAG: &'static str = "increment";
    type Reply = i64;
    const PERSISTED: bool = true;
}

/// Returns the value.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Get {}

impl Message for Get {
    const TAG: &'static str = "get";
    type Reply = i64;
}

impl Handler<Increment> for Counter {
    async fn handle(&mut self, msg: Increment, ctx: &EntityContext) -> Result<i64, HandlerError> {
        let id = ctx.request_id().map(|id| id.raw());
        if let Some(id) = id
            && self.state.applied.contains(&id)
        {
            // This increment ran before (its reply was lost with a crash): do not apply it again.
            return Ok(self.state.value);
        }
        let value = self
            .state
            .value
            .checked_add(msg.by)
            .ok_or_else(|| HandlerError::failed("the counter would overflow"))?;
        let Some(kv) = &self.kv else {
            self.state.value = value;
            return Ok(value);
        };
        let mut applied = self.state.applied.clone();
        if let Some(id) = id {
            applied.push_back(id);
            while applied.len() > REMEMBERED {
                applied.pop_front();
            }
        }
        let next = State { value, applied };
        let bytes = serde_json::to_vec(&next).map_err(|e| unavailable("encode", e))?;
        // Saved before the reply: an acknowledged increment is durable.
        kv.put(STATE_KEY, bytes)
            .await
            .map_err(|e| unavailable("save", e))?;
        self.state = next;
        Ok(value)
    }
}

impl Handler<Get> for Counter {
    async fn handle(&mut self, _msg: Get, _ctx: &EntityContext) -> Result<i64, HandlerError> {
        Ok(self.state.value)
    }
}

/// The registration of the counter.
pub fn definition() -> EntityDefinition<Counter> {
    EntityDefinition::<Counter>::new()
        .handle::<Increment>()
        .handle::<Get>()
}
