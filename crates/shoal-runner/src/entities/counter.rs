//! The demo `counter` entity: `increment` (`{"by": n}`, default 1) returns the new value, `get`
//! returns the value.
//!
//! Both also take `"served_by": true`: the reply is then an object that says who served it,
//! `{"value": n, "runner": "host:port", "incarnation": "…", "epoch": n}` — the runner's address,
//! the incarnation of its process and the shard lease epoch the instance started under (the
//! fencing token of its writes), plus `"replayed": true` when the increment had already been
//! applied (perhaps by another owner, under an older epoch) and the reply repeats its value. `cargo xtask test-cluster` asks for it on every call to check
//! shard ownership from the outside.
//!
//! `increment` is a persisted message: it is stored before it runs and runs again after a crash
//! until its reply is stored. With the gateway's `Idempotency-Key` header, a retried increment
//! is applied once and answers the first reply. The value lives in the entity's durable
//! key-value storage when the runtime has one (as `shoal run` does), so it survives passivation,
//! shard moves and crashes; the ids of the latest increments are kept with it, with the value each
//! returned, so an increment that ran before but whose reply was not stored (a crash, storage
//! failing as the reply was saved) is not applied twice when it runs again, and answers the value
//! it returned the first time, even when other increments ran in between. Without key-value
//! storage (embedded tests) the value lives in memory.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shoal_sharding::{
    Entity, EntityContext, EntityDefinition, EntityKvHandle, HandlerError, Message, handlers,
};

/// The key under which the counter keeps its state.
const STATE_KEY: &str = "state";
/// How many recent increment ids are remembered to recognize a rerun. Reruns only concern the
/// requests that were running or queued when a runner died.
const REMEMBERED: usize = 256;

/// What the counter keeps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct State {
    value: i64,
    /// The latest applied increments, oldest first.
    #[serde(default)]
    applied: VecDeque<Applied>,
}

/// An applied increment: its id (a raw Snowflake) and the value it returned, `[id, value]`;
/// states saved before the values were kept hold bare ids.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Applied {
    WithValue(u64, i64),
    Id(u64),
}

impl Applied {
    fn id(self) -> u64 {
        match self {
            Applied::WithValue(id, _) | Applied::Id(id) => id,
        }
    }
}

impl State {
    /// What increment `id` returned, when it ran already: the value it made (the value now, for
    /// a state saved before the values were kept).
    fn replay(&self, id: u64) -> Option<i64> {
        self.applied
            .iter()
            .rev()
            .find(|a| a.id() == id)
            .map(|applied| match applied {
                Applied::WithValue(_, value) => *value,
                Applied::Id(_) => self.value,
            })
    }

    /// The state after adding `by` for increment `id`.
    fn apply(&self, id: Option<u64>, by: i64) -> Result<State, HandlerError> {
        let value = self
            .value
            .checked_add(by)
            .ok_or_else(|| HandlerError::failed("the counter would overflow"))?;
        let mut applied = self.applied.clone();
        if let Some(id) = id {
            applied.push_back(Applied::WithValue(id, value));
            while applied.len() > REMEMBERED {
                applied.pop_front();
            }
        }
        Ok(State { value, applied })
    }
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
    type State = ();

    async fn activate(ctx: &EntityContext, _: &Arc<()>) -> Result<Self, HandlerError> {
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
    /// Answer with who served the call ([`CounterReply::ServedBy`]) instead of the bare value.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub served_by: bool,
}

fn one() -> i64 {
    1
}

impl Message for Increment {
    const TAG: &'static str = "increment";
    type Reply = CounterReply;
    const PERSISTED: bool = true;
}

/// Returns the value.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Get {
    /// Answer with who served the call ([`CounterReply::ServedBy`]) instead of the bare value.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub served_by: bool,
}

impl Message for Get {
    const TAG: &'static str = "get";
    type Reply = CounterReply;
}

/// What `increment` and `get` answer: the bare value (`3`), or, when the call asked with
/// `"served_by": true`, the value with who served it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CounterReply {
    /// The value.
    Value(i64),
    /// The value and who served the call.
    ServedBy(ServedBy),
}

impl CounterReply {
    /// The counter's value in the reply.
    pub fn value(&self) -> i64 {
        match self {
            CounterReply::Value(value) => *value,
            CounterReply::ServedBy(served) => served.value,
        }
    }
}

/// Who served a call: `{"value": 3, "runner": "127.0.0.1:7100", "incarnation": "…", "epoch": 12}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServedBy {
    /// The counter's value.
    pub value: i64,
    /// The address of the runner hosting the instance.
    pub runner: String,
    /// The incarnation of that runner's process (16 hex digits).
    pub incarnation: String,
    /// The shard lease epoch the instance started under: the fencing token of its writes.
    pub epoch: u64,
    /// The increment had been applied before (by whichever owner ran it first, under its
    /// epoch) and this reply repeats its value: nothing was written under `epoch`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
}

/// The reply to a call that asked `served_by` or not (`replayed`: see [`ServedBy::replayed`]).
fn reply(value: i64, served_by: bool, replayed: bool, ctx: &EntityContext) -> CounterReply {
    if !served_by {
        return CounterReply::Value(value);
    }
    CounterReply::ServedBy(ServedBy {
        value,
        runner: ctx
            .runner_address()
            .map(ToString::to_string)
            .unwrap_or_default(),
        incarnation: ctx.incarnation().to_string(),
        epoch: ctx.epoch().0,
        replayed,
    })
}

#[handlers]
impl Counter {
    #[handle]
    async fn increment(
        &mut self,
        msg: Increment,
        ctx: &EntityContext,
    ) -> Result<CounterReply, HandlerError> {
        let id = ctx.request_id().map(|id| id.raw());
        if let Some(value) = id.and_then(|id| self.state.replay(id)) {
            // This increment ran before (its reply was not stored): do not apply it again, and
            // answer what it answered then.
            return Ok(reply(value, msg.served_by, true, ctx));
        }
        let next = self.state.apply(id, msg.by)?;
        let value = next.value;
        if let Some(kv) = &self.kv {
            let bytes = serde_json::to_vec(&next).map_err(|e| unavailable("encode", e))?;
            // Saved before the reply: an acknowledged increment is durable.
            kv.put(STATE_KEY, bytes)
                .await
                .map_err(|e| unavailable("save", e))?;
        }
        self.state = next;
        Ok(reply(value, msg.served_by, false, ctx))
    }

    #[handle]
    async fn get(&mut self, msg: Get, ctx: &EntityContext) -> Result<CounterReply, HandlerError> {
        Ok(reply(self.state.value, msg.served_by, false, ctx))
    }
}

/// The registration of the counter: every handler of its `#[handlers]` block.
pub fn definition() -> EntityDefinition<Counter> {
    EntityDefinition::<Counter>::declared()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;
    use std::time::Duration;

    use shoal_protocol::RunnerAddress;
    use shoal_sharding::{InProcessNetwork, Sharding, ShardingConfig};
    use shoal_storage::{MemoryEntityKv, MemoryMessageStorage, MemoryRunnerStorage};

    use super::*;

    #[test]
    fn a_rerun_answers_what_it_answered_the_first_time() {
        let state = State::default();
        let state = state.apply(Some(10), 1).unwrap();
        let state = state.apply(Some(11), 1).unwrap();
        let state = state.apply(None, 5).unwrap();
        assert_eq!(state.value, 7);
        // Increment 10 runs again after 11 ran: it answers 1, not 7, and changes nothing.
        assert_eq!(state.replay(10), Some(1));
        assert_eq!(state.replay(11), Some(2));
        assert_eq!(state.replay(12), None);
        // Saved and loaded again.
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(json, r#"{"value":7,"applied":[[10,1],[11,2]]}"#);
        assert_eq!(serde_json::from_str::<State>(&json).unwrap(), state);
        // A state saved before the values were kept: its ids still stop a second application.
        let old: State = serde_json::from_str(r#"{"value":5,"applied":[7,8]}"#).unwrap();
        assert_eq!(old.replay(7), Some(5));
        let next = old.apply(Some(9), 1).unwrap();
        assert_eq!(next.replay(8), Some(6));
        assert_eq!(next.replay(9), Some(6));
        // Only the latest are remembered.
        let mut many = State::default();
        for id in 0..(REMEMBERED as u64 + 10) {
            many = many.apply(Some(id), 1).unwrap();
        }
        assert_eq!(many.applied.len(), REMEMBERED);
        assert_eq!(many.replay(0), None);
        assert_eq!(many.replay(REMEMBERED as u64 + 9), Some(many.value));
        assert!(
            State {
                value: i64::MAX,
                applied: VecDeque::new()
            }
            .apply(None, 1)
            .is_err()
        );
    }

    #[test]
    fn messages_and_bare_replies_keep_their_json() {
        let increment: Increment = serde_json::from_str(r#"{"by":2}"#).unwrap();
        assert!(!increment.served_by);
        let increment: Increment = serde_json::from_str(r#"{"served_by":true}"#).unwrap();
        assert_eq!((increment.by, increment.served_by), (1, true));
        assert!(serde_json::from_str::<Get>(r#"{"served":true}"#).is_err());
        assert_eq!(serde_json::to_string(&CounterReply::Value(3)).unwrap(), "3");
        let served = CounterReply::ServedBy(ServedBy {
            value: 3,
            runner: "127.0.0.1:7100".to_owned(),
            incarnation: "00000000000000ff".to_owned(),
            epoch: 12,
            replayed: false,
        });
        let text = serde_json::to_string(&served).unwrap();
        assert_eq!(
            text,
            r#"{"value":3,"runner":"127.0.0.1:7100","incarnation":"00000000000000ff","epoch":12}"#
        );
        assert_eq!(serde_json::from_str::<CounterReply>(&text).unwrap(), served);
        let replayed = r#"{"value":3,"runner":"a:1","incarnation":"1","epoch":2,"replayed":true}"#;
        assert!(matches!(
            serde_json::from_str::<CounterReply>(replayed).unwrap(),
            CounterReply::ServedBy(ServedBy { replayed: true, .. })
        ));
        assert_eq!(
            serde_json::from_str::<CounterReply>("3").unwrap(),
            CounterReply::Value(3)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replies_say_who_served_them_when_asked() {
        let runners = Arc::new(MemoryRunnerStorage::new());
        let config = ShardingConfig::builder()
            .shards_per_group(4)
            .lease_ttl(Duration::from_secs(2))
            .build()
            .unwrap();
        let address = RunnerAddress::tcp("127.0.0.1", 7100).unwrap();
        let sharding = Sharding::builder(config)
            .storage(runners.clone())
            .message_storage(Arc::new(MemoryMessageStorage::new(runners.clone())))
            .entity_kv(Arc::new(MemoryEntityKv::new(runners)))
            .in_process(&InProcessNetwork::new())
            .runner(address.clone())
            .entity(definition())
            .start()
            .await
            .unwrap();
        let counters = sharding.client::<Counter>();

        let bare = counters
            .call(
                "a",
                Increment {
                    by: 2,
                    served_by: false,
                },
            )
            .await
            .unwrap();
        assert_eq!(bare, CounterReply::Value(2));

        let served = counters
            .call(
                "a",
                Increment {
                    by: 1,
                    served_by: true,
                },
            )
            .await
            .unwrap();
        let shard = sharding.shard_of::<Counter>(&shoal_protocol::EntityId::new("a").unwrap());
        let epoch = sharding
            .shard_epoch(&shard)
            .expect("the runner holds the shard");
        let expected = ServedBy {
            value: 3,
            runner: address.to_string(),
            incarnation: sharding.incarnation().to_string(),
            epoch: epoch.0,
            replayed: false,
        };
        assert_eq!(served, CounterReply::ServedBy(expected.clone()));
        assert_eq!(served.value(), 3);

        let got = counters.call("a", Get { served_by: true }).await.unwrap();
        assert_eq!(got, CounterReply::ServedBy(expected));
        assert_eq!(
            counters.call("a", Get::default()).await.unwrap(),
            CounterReply::Value(3)
        );
        sharding.shutdown().await;
    }
}
