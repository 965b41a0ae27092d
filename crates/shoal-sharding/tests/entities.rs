//! Entity behaviour on one runner: routing by id, isolation, ordering, streams, failures,
//! mailboxes, passivation and the resident cap.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use shoal_protocol::{ErrorCode, Failure};
use shoal_sharding::{CallErrorKind, CallOptions, InboundHandler};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_id_same_instance_and_state_isolated_per_id() {
    let mut cluster = Cluster::new(Backend::Memory).await;
    let runner = cluster.runner(fast_config().build().unwrap()).await;
    wait_balanced(&[&runner], 60).await;
    let counters = runner.client::<Counter>();
    for i in 1..=5 {
        assert_eq!(
            counters
                .call("iso/a", Increment { by: 1, work_ms: 0 })
                .await
                .unwrap(),
            i
        );
    }
    assert_eq!(
        counters
            .call("iso/b", Increment { by: 10, work_ms: 0 })
            .await
            .unwrap(),
        10
    );
    assert_eq!(counters.call("iso/a", Get).await.unwrap(), 5);
    assert_eq!(counters.call("iso/b", Get).await.unwrap(), 10);
    // One activation per id.
    assert_eq!(journal("iso").activations.load(Ordering::SeqCst), 2);
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_is_fifo_with_concurrency_one() {
    let mut cluster = Cluster::new(Backend::Memory).await;
    let runner = cluster.runner(fast_config().build().unwrap()).await;
    wait_balanced(&[&runner], 60).await;
    let lists = runner.client::<Lists>();
    // Notifications are accepted into the mailbox in order; a final call sees them all, in order.
    for item in 0..200u32 {
        lists.notify("fifo", common::Append { item }).await.unwrap();
    }
    let all = lists
        .call("fifo", common::Append { item: 200 })
        .await
        .unwrap();
    assert_eq!(all, (0..=200).collect::<Vec<_>>());
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_deliver_every_item_in_order() {
    let mut cluster = Cluster::new(Backend::Memory).await;
    let runner = cluster.runner(fast_config().build().unwrap()).await;
    wait_balanced(&[&runner], 60).await;
    let items: Vec<u32> = runner
        .client::<Counter>()
        .stream("stream/a", Count { count: 100 })
        .await
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(items, (0..100).collect::<Vec<_>>());
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_failures_reach_the_caller_and_keep_the_instance() {
    let mut cluster = Cluster::new(Backend::Memory).await;
    let runner = cluster.runner(fast_config().build().unwrap()).await;
    wait_balanced(&[&runner], 60).await;
    let counters = runner.client::<Counter>();
    counters
        .call("plain/a", Increment { by: 7, work_ms: 0 })
        .await
        .unwrap();
    let err = counters
        .call(
            "plain/a",
            Crash {
                fatal: false,
                panic: false,
                times: 1,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), CallErrorKind::Handler), "{err:?}");
    // The handler's failure, as the entity's runner answered it, is the cause.
    let cause = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<Failure>());
    assert!(
        matches!(cause, Some(f) if f.code == ErrorCode::Handler && f.message == err.message()),
        "{err:?}"
    );
    // The state survived: no restart.
    assert_eq!(counters.call("plain/a", Get).await.unwrap(), 7);
    assert_eq!(journal("plain").activations.load(Ordering::SeqCst), 1);
    runner.shutdown().await;
}

// Paused time: idle periods, passivation and backoff run on tokio's clock, not the machine's.
#[tokio::test(start_paused = true)]
async fn defects_restart_the_instance_and_replay_the_request() {
    let mut cluster = Cluster::new(Backend::Memory).await;
    let runner = cluster
        .runner(fast_config().defect_max_retries(3).build().unwrap())
        .await;
    wait_balanced(&[&runner], 60).await;
    let counters = runner.client::<Counter>();
    counters
        .call("defect/a", Increment { by: 5, work_ms: 0 })
        .await
        .unwrap();
    // Fails fatally twice, then succeeds on the third attempt: replayed after two restarts.
    let attempt = counters
        .call(
            "defect/a",
            Crash {
                fatal: true,
                panic: false,
                times: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(attempt, 2);
    // State was rebuilt from scratch by the restarts.
    assert_eq!(counters.call("defect/a", Get).await.unwrap(), 0);
    assert_eq!(journal("defect").activations.load(Ordering::SeqCst), 3);

    // Panics are defects too.
    let attempt = counters
        .call(
            "defect/b",
            Crash {
                fatal: false,
                panic: true,
                times: 4,
            },
        )
        .await
        .unwrap();
    assert_eq!(attempt, 4);

    // A defect that outlasts the retries fails the request with `Defect`.
    let err = counters
        .call(
            "defect/c",
            Crash {
                fatal: true,
                panic: false,
                times: 100,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), CallErrorKind::Defect), "{err:?}");
    // ...and the entity still answers afterwards.
    assert_eq!(
        counters
            .call("defect/c", Increment { by: 1, work_ms: 0 })
            .await
            .unwrap(),
        1
    );
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_refuses_with_mailbox_full() {
    let mut cluster = Cluster::new(Backend::Memory).await;
    let runner = cluster
        .runner(fast_config().entity_mailbox_capacity(4).build().unwrap())
        .await;
    wait_balanced(&[&runner], 60).await;
    let counters = runner.client::<Counter>();
    // A slow request occupies the entity; fill the rest of the mailbox behind it.
    let mut accepted = 0;
    let mut refused = 0;
    for _ in 0..10 {
        match counters
            .notify(
                "full/a",
                Increment {
                    by: 1,
                    work_ms: 200,
                },
            )
            .await
        {
            Ok(()) => accepted += 1,
            Err(e) if matches!(e.kind(), CallErrorKind::MailboxFull) => refused += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(accepted >= 4, "accepted {accepted}");
    assert!(refused >= 1, "refused {refused}");
    assert_eq!(accepted + refused, 10);
    runner.shutdown().await;
}

// Paused time: idle periods, passivation and backoff run on tokio's clock, not the machine's.
#[tokio::test(start_paused = true)]
async fn idle_entities_are_passivated_and_come_back() {
    let mut cluster = Cluster::new(Backend::Memory).await;
    let runner = cluster
        .runner(
            fast_config()
                .entity_max_idle_time(Duration::from_millis(100))
                .build()
                .unwrap(),
        )
        .await;
    wait_balanced(&[&runner], 60).await;
    let counters = runner.client::<Counter>();
    counters
        .call("idle/a", Increment { by: 1, work_ms: 0 })
        .await
        .unwrap();
    assert_eq!(runner.active_entity_count(), 1);
    eventually(Duration::from_secs(5), "entity passivated", || {
        runner.active_entity_count() == 0
    })
    .await;
    assert_eq!(journal("idle").deactivations.load(Ordering::SeqCst), 1);
    // The next message activates it again (with fresh state: counters keep none).
    assert_eq!(counters.call("idle/a", Get).await.unwrap(), 0);
    assert_eq!(journal("idle").activations.load(Ordering::SeqCst), 2);
    runner.shutdown().await;
}

// Paused time: idle periods, passivation and backoff run on tokio's clock, not the machine's.
#[tokio::test(start_paused = true)]
async fn the_resident_cap_passivates_idle_entities_to_make_room() {
    let mut cluster = Cluster::new(Backend::Memory).await;
    let runner = cluster
        .runner(fast_config().max_resident_entities(2).build().unwrap())
        .await;
    wait_balanced(&[&runner], 60).await;
    let counters = runner.client::<Counter>();
    for i in 0..6 {
        let id = format!("cap/{i}");
        assert_eq!(
            counters
                .call(&id, Increment { by: 1, work_ms: 0 })
                .await
                .unwrap(),
            1
        );
        assert!(
            runner.active_entity_count() <= 2,
            "{} resident",
            runner.active_entity_count()
        );
    }
    // Two busy entities fill the cap: a third, new entity is refused.
    let busy = runner.clone();
    let mut slow: Vec<_> = (0..2)
        .map(|i| {
            let c = busy.client::<Counter>();
            tokio::spawn(async move {
                c.call(
                    &format!("cap/busy{i}"),
                    Increment {
                        by: 1,
                        work_ms: 500,
                    },
                )
                .await
            })
        })
        .collect();
    eventually(Duration::from_secs(5), "two busy entities resident", || {
        journal("cap").activations.load(Ordering::SeqCst) >= 8
            || slow.iter().any(|s| s.is_finished())
    })
    .await;
    for s in &mut slow {
        if s.is_finished() {
            panic!("a busy call ended early: {:?}", s.await);
        }
    }
    let err = counters
        .call("cap/new", Increment { by: 1, work_ms: 0 })
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), CallErrorKind::MailboxFull), "{err:?}");
    for s in slow {
        if let Err(e) = s.await.unwrap() {
            panic!("busy call failed: {e:?}");
        }
    }
    runner.shutdown().await;
}

// Paused time: the idle periods below pass on tokio's clock, and every timer due within them
// has fired when the wait ends, so "still resident" does not depend on the machine's speed.
#[tokio::test(start_paused = true)]
async fn keep_alive_prevents_passivation() {
    use serde::{Deserialize, Serialize};
    use shoal_sharding::{Entity, EntityContext, EntityDefinition, Handler, HandlerError, Message};

    struct Sticky;
    impl Entity for Sticky {
        const TYPE: &'static str = "sticky";
        type State = ();
        async fn activate(ctx: &EntityContext, _: &Arc<()>) -> Result<Self, HandlerError> {
            ctx.keep_alive(true);
            Ok(Sticky)
        }
    }
    #[derive(Clone, Serialize, Deserialize)]
    struct Ping;
    impl Message for Ping {
        const TAG: &'static str = "ping";
        type Reply = ();
    }
    impl Handler<Ping> for Sticky {
        async fn handle(&mut self, _: Ping, _: &EntityContext) -> Result<(), HandlerError> {
            Ok(())
        }
    }

    let mut cluster = Cluster::new(Backend::Memory).await;
    let runner = cluster
        .runner(
            fast_config()
                .entity_max_idle_time(Duration::from_millis(50))
                .build()
                .unwrap(),
        )
        .await;
    runner
        .register(EntityDefinition::<Sticky>::new().handle::<Ping>())
        .unwrap();
    wait_balanced(&[&runner], 60).await;
    runner.client::<Sticky>().call("s", Ping).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        runner.active_entity_count(),
        1,
        "kept alive past several idle periods"
    );
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors() {
    let mut cluster = Cluster::new(Backend::Memory).await;
    let runner = cluster.runner(fast_config().build().unwrap()).await;
    wait_balanced(&[&runner], 60).await;
    let counters = runner.client::<Counter>();
    let err = counters.call("", Get).await.unwrap_err();
    assert!(
        matches!(err.kind(), CallErrorKind::InvalidEntityId { .. }),
        "{err:?}"
    );

    // Untyped callers: unknown type, unknown tag, undecodable payload.
    use shoal_protocol::EntityType;
    use shoal_sharding::GroupSelector;
    let default = GroupSelector::fixed(shoal_protocol::ShardGroup::default_group());
    let ghost = runner.dynamic_client(EntityType::new("ghost").unwrap(), default.clone());
    let err = ghost
        .call("x", "get", "null".into(), CallOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), CallErrorKind::UnknownEntityType),
        "{err:?}"
    );
    let raw = runner.dynamic_client(EntityType::new("counter").unwrap(), default);
    let err = raw
        .call("x", "nope", "null".into(), CallOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), CallErrorKind::UnknownTag { .. }),
        "{err:?}"
    );
    let err = raw
        .call("x", "increment", "{not json".into(), CallOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), CallErrorKind::MalformedMessage),
        "{err:?}"
    );
    // Streaming a unary message, and calling a streaming one, are refused clearly.
    let err = raw
        .call("x", "count", "{\"count\":1}".into(), CallOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), CallErrorKind::MalformedMessage),
        "{err:?}"
    );
    // A good encoded call works.
    let reply = raw
        .call(
            "x",
            "increment",
            "{\"by\":3}".into(),
            CallOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(&reply[..], b"3");
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_serialization_round_trips_local_calls() {
    let mut cluster = Cluster::new(Backend::Memory).await;
    let runner = cluster
        .runner(
            fast_config()
                .simulate_remote_serialization(true)
                .build()
                .unwrap(),
        )
        .await;
    wait_balanced(&[&runner], 60).await;
    let counters = runner.client::<Counter>();
    assert_eq!(
        counters
            .call("sim/a", Increment { by: 2, work_ms: 0 })
            .await
            .unwrap(),
        2
    );
    let items: Vec<u32> = counters
        .stream("sim/a", Count { count: 3 })
        .await
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(items, vec![0, 1, 2]);
    runner.shutdown().await;
}

/// A flood of interrupts for requests an entity never sees (from any peer of the runner) is
/// dropped past a bound instead of queueing in memory, and the entity keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_interrupts_is_bounded_and_harmless() {
    let mut cluster = Cluster::new(Backend::Memory).await;
    let runner = cluster.runner(fast_config().build().unwrap()).await;
    wait_balanced(&[&runner], 60).await;
    let counters = runner.client::<Counter>();
    let address = {
        let id: shoal_protocol::EntityId = "flood/a".parse().unwrap();
        shoal_protocol::EntityAddress::new(
            runner.shard_of::<Counter>(&id),
            "counter".parse().unwrap(),
            id,
        )
    };
    // A slow request keeps the instance busy while the interrupts arrive.
    let busy = tokio::spawn({
        let counters = counters.clone();
        async move {
            counters
                .call(
                    "flood/a",
                    Increment {
                        by: 1,
                        work_ms: 500,
                    },
                )
                .await
        }
    });
    eventually(Duration::from_secs(5), "the slow request started", || {
        journal("flood").activations.load(Ordering::SeqCst) == 1
    })
    .await;
    for raw in 1..=100_000u64 {
        let interrupt = shoal_protocol::Interrupt {
            id: shoal_protocol::Snowflake::from_raw(raw),
            request_id: shoal_protocol::Snowflake::from_raw(raw),
            address: address.clone(),
            persisted: false,
        };
        runner
            .handle_notification(shoal_protocol::Notification::Interrupt(interrupt))
            .await
            .unwrap();
    }
    assert_eq!(busy.await.unwrap().unwrap(), 1);
    assert_eq!(
        counters
            .call("flood/a", Increment { by: 1, work_ms: 0 })
            .await
            .unwrap(),
        2
    );
    runner.shutdown().await;
}
