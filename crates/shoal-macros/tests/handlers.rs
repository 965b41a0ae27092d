//! Entities whose handlers are declared with `#[handlers]`, served by one in-process runner:
//! unary, streaming and persisted messages reach the marked methods, with shared state, and a
//! declared definition composes with handlers added by hand.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use shoal_sharding::{
    ChunkSink, Entity, EntityContext, EntityDefinition, Handler, HandlerError, Handlers,
    InProcessNetwork, Message, Sharding, ShardingConfig, handlers,
};
use shoal_storage::{MemoryMessageStorage, MemoryRunnerStorage};

/// The shared state of every tally: how many deposits ran, on any tally.
#[derive(Debug, Default)]
struct Audit {
    deposits: AtomicUsize,
}

/// A tally of deposits, with the audit it reports to.
struct Tally {
    total: i64,
    audit: Arc<Audit>,
}

impl Entity for Tally {
    const TYPE: &'static str = "tally";
    type State = Audit;

    async fn activate(_ctx: &EntityContext, audit: &Arc<Audit>) -> Result<Self, HandlerError> {
        Ok(Tally {
            total: 0,
            audit: audit.clone(),
        })
    }
}

/// Adds `amount`; persisted, deduplicated by `key`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Deposit {
    key: String,
    amount: i64,
}

impl Message for Deposit {
    const TAG: &'static str = "deposit";
    type Reply = i64;
    const PERSISTED: bool = true;

    fn primary_key(&self) -> Option<String> {
        Some(self.key.clone())
    }
}

/// The total.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Total;

impl Message for Total {
    const TAG: &'static str = "total";
    type Reply = i64;
}

/// Streams the running totals `total + step, total + 2 * step, …` (`count` of them).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Project {
    step: i64,
    count: usize,
}

impl Message for Project {
    const TAG: &'static str = "project";
    type Reply = i64;
}

/// Sets the total back to zero: handled by a `Handler` written by hand, added to the
/// definition with `.handle::<Reset>()`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Reset;

impl Message for Reset {
    const TAG: &'static str = "reset";
    type Reply = ();
}

/// A message whose handler is compiled out: it is neither implemented nor registered.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Never;

impl Message for Never {
    const TAG: &'static str = "never";
    type Reply = ();
}

#[handlers]
impl Tally {
    #[handle]
    async fn deposit(&mut self, msg: Deposit, ctx: &EntityContext) -> Result<i64, HandlerError> {
        assert!(ctx.request_id().is_some(), "a persisted request has an id");
        self.audit.deposits.fetch_add(1, Ordering::SeqCst);
        self.total += msg.amount;
        Ok(self.total)
    }

    #[handle]
    async fn total(&mut self, _msg: Total, _ctx: &EntityContext) -> Result<i64, HandlerError> {
        Ok(self.total)
    }

    #[stream]
    async fn project(
        &mut self,
        msg: Project,
        _ctx: &EntityContext,
        out: &mut ChunkSink<i64>,
    ) -> Result<(), HandlerError> {
        for n in 1..=msg.count {
            out.send(self.projected(msg.step, n)).await?;
        }
        Ok(())
    }

    #[cfg(any())]
    #[handle]
    async fn never(&mut self, _msg: Never, _ctx: &EntityContext) -> Result<(), HandlerError> {
        Ok(())
    }

    /// Not a handler: it stays an ordinary method.
    fn projected(&self, step: i64, n: usize) -> i64 {
        self.total + step * i64::try_from(n).unwrap_or(i64::MAX)
    }
}

impl Handler<Reset> for Tally {
    async fn handle(&mut self, _msg: Reset, _ctx: &EntityContext) -> Result<(), HandlerError> {
        self.total = 0;
        Ok(())
    }
}

/// An entity without shared state, defined with `declared()`.
#[derive(Default)]
struct Echo;

impl Entity for Echo {
    const TYPE: &'static str = "echo";
    type State = ();

    async fn activate(_ctx: &EntityContext, _: &Arc<()>) -> Result<Self, HandlerError> {
        Ok(Echo)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Say(String);

impl Message for Say {
    const TAG: &'static str = "say";
    type Reply = String;
}

#[handlers]
impl Echo {
    #[handle]
    async fn say(&mut self, Say(text): Say, ctx: &EntityContext) -> Result<String, HandlerError> {
        Ok(format!("{} says {text}", ctx.address().entity_id))
    }
}

/// A generic entity type: the generated impls carry the block's generics.
struct Cell<T>(PhantomData<fn() -> T>);

impl<T: 'static> Entity for Cell<T> {
    const TYPE: &'static str = "cell";
    type State = ();

    async fn activate(_ctx: &EntityContext, _: &Arc<()>) -> Result<Self, HandlerError> {
        Ok(Cell(PhantomData))
    }
}

#[handlers]
impl<T> Cell<T>
where
    T: 'static,
{
    #[handle]
    async fn total(&mut self, _msg: Total, _ctx: &EntityContext) -> Result<i64, HandlerError> {
        Ok(0)
    }
}

async fn start(audit: Arc<Audit>) -> Sharding {
    let storage = Arc::new(MemoryRunnerStorage::new());
    let config = ShardingConfig::builder()
        .shards_per_group(4)
        .lease_ttl(Duration::from_secs(2))
        .build()
        .unwrap();
    Sharding::builder(config)
        .storage(storage.clone())
        .message_storage(Arc::new(MemoryMessageStorage::new(storage)))
        .in_process(&InProcessNetwork::new())
        .runner("127.0.0.1:47101".parse().unwrap())
        .entity(EntityDefinition::<Tally>::declared_with_state(audit).handle::<Reset>())
        .entity(EntityDefinition::<Echo>::declared())
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_handlers_serve_unary_streamed_and_persisted_messages() {
    let audit = Arc::new(Audit::default());
    let sharding = start(audit.clone()).await;
    let tallies = sharding.client::<Tally>();

    // Persisted, through the `#[handle]` method; a second send with the same key is answered
    // from storage without running the handler again.
    let deposit = |key: &str, amount| Deposit {
        key: key.to_owned(),
        amount,
    };
    assert_eq!(tallies.call("a", deposit("first", 5)).await.unwrap(), 5);
    assert_eq!(tallies.call("a", deposit("second", 2)).await.unwrap(), 7);
    assert_eq!(tallies.call("a", deposit("first", 5)).await.unwrap(), 5);
    assert_eq!(audit.deposits.load(Ordering::SeqCst), 2);

    // Unary and volatile.
    assert_eq!(tallies.call("a", Total).await.unwrap(), 7);
    assert_eq!(tallies.call("b", Total).await.unwrap(), 0);

    // Streamed, through the `#[stream]` method.
    let items: Vec<i64> = tallies
        .stream("a", Project { step: 10, count: 3 })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(items, [17, 27, 37]);

    // The handler added by hand next to the declared ones.
    tallies.call("a", Reset).await.unwrap();
    assert_eq!(tallies.call("a", Total).await.unwrap(), 0);

    // An entity without shared state.
    let echo = sharding.client::<Echo>();
    assert_eq!(
        echo.call("e", Say("hi".to_owned())).await.unwrap(),
        "e says hi"
    );
    sharding.shutdown().await;
}

#[test]
fn declared_definitions_list_every_marked_method() {
    let tally = format!(
        "{:?}",
        EntityDefinition::<Tally>::declared_with_state(Audit::default())
    );
    assert!(
        tally.contains(r#"tags: ["deposit", "total", "project"]"#),
        "{tally}"
    );
    let echo = format!("{:?}", EntityDefinition::<Echo>::declared());
    assert!(echo.contains(r#"tags: ["say"]"#), "{echo}");
    let cell = format!("{:?}", EntityDefinition::<Cell<u8>>::declared());
    assert!(cell.contains(r#"tags: ["total"]"#), "{cell}");
    // `register_handlers` adds the same handlers to a definition built another way.
    let composed = Tally::register_handlers(EntityDefinition::with_state(Audit::default()));
    assert_eq!(format!("{composed:?}"), tally);
    // The compiled-out handler is neither implemented nor registered.
    let _ = Never;
}
