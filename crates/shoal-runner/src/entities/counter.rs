//! The demo `counter` entity: `increment` (`{"by": n}`, default 1) returns the new value, `get`
//! returns the value.
//!
//! Its state lives in memory for now: it starts at 0 on every activation (after passivation, a
//! shard move or a crash). Durable state and persisted increments replace that once the runtime
//! offers them; the change stays inside this module.

use serde::{Deserialize, Serialize};
use shoal_sharding::{Entity, EntityContext, EntityDefinition, Handler, HandlerError, Message};

/// A counter.
#[derive(Debug, Default)]
pub struct Counter {
    value: i64,
}

impl Entity for Counter {
    const TYPE: &'static str = "counter";

    async fn activate(_ctx: &EntityContext) -> Result<Self, HandlerError> {
        Ok(Counter::default())
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
    async fn handle(&mut self, msg: Increment, _ctx: &EntityContext) -> Result<i64, HandlerError> {
        self.value = self
            .value
            .checked_add(msg.by)
            .ok_or_else(|| HandlerError::failed("the counter would overflow"))?;
        Ok(self.value)
    }
}

impl Handler<Get> for Counter {
    async fn handle(&mut self, _msg: Get, _ctx: &EntityContext) -> Result<i64, HandlerError> {
        Ok(self.value)
    }
}

/// The registration of the counter.
pub fn definition() -> EntityDefinition<Counter> {
    EntityDefinition::<Counter>::new()
        .handle::<Increment>()
        .handle::<Get>()
}
