//! Event lanes over the memory queue: the reference scenarios (adapted) and the queue contract.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::{HMAC_SECRET, wait_until};
use serde::{Deserialize, Serialize};
use shoal_lanes::*;
use tokio::sync::{Semaphore, mpsc};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    note: Option<String>,
    tags: Vec<String>,
    total: f64,
    hops: u8,
}

fn order(id: u64) -> Order {
    Order {
        id,
        note: Some("fragile ✓".into()),
        tags: vec!["a".into(), "b".into()],
        total: 12.5,
        hops: 0,
    }
}

const CREATED: EventDef<Order> = EventDef::new("orders:created");
const AUDITED: EventDef<Order> = EventDef::new("orders:audited");

/// Counts calls per event and forwards each handled payload.
#[derive(Clone)]
struct Probe {
    calls: Arc<AtomicUsize>,
    seen: mpsc::UnboundedSender<(String, Order, EventContext)>,
}

fn probe() -> (
    Probe,
    mpsc::UnboundedReceiver<(String, Order, EventContext)>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Probe {
            calls: Arc::new(AtomicUsize::new(0)),
            seen: tx,
        },
        rx,
    )
}

fn register(registry: &mut Registry, event: EventDef<Order>, handler: &str, probe: &Probe) {
    let probe = probe.clone();
    let name = event.id().to_owned();
    registry.on(event, handler, move |payload, cx| {
        let probe = probe.clone();
        let name = name.clone();
        async move {
            probe.calls.fetch_add(1, Ordering::SeqCst);
            let _ = probe.seen.send((name, payload, cx));
            Ok(())
        }
    });
}

fn orders_topology(
    queue: Arc<dyn EventQueue>,
    binding: impl FnOnce(EventBinding) -> EventBinding,
) -> Topology {
    Topology::new()
        .event_lane(EventLane::new("orders").apply_to([CREATED]))
        .profile("api", Profile::new())
        .profile("worker", Profile::new().consume("orders"))
        .bind_event(binding(EventBinding::new("orders", queue)))
}

/// A queue that counts every call, to prove which modes touch infrastructure.
#[derive(Debug)]
struct CountingQueue {
    inner: MemoryQueue,
    calls: AtomicUsize,
}

impl CountingQueue {
    fn new() -> Self {
        CountingQueue {
            inner: MemoryQueue::new("counting"),
            calls: AtomicUsize::new(0),
        }
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl EventQueue for CountingQueue {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn init(&self) -> Result<(), QueueError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn enqueue(&self, message: NewEnvelope) -> Result<String, QueueError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.enqueue(message).await
    }
    async fn receive(&self, max: usize) -> Result<Vec<Envelope>, QueueError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.receive(max).await
    }
    async fn ack(&self, message: &Envelope) -> Result<(), QueueError> {
        self.inner.ack(message).await
    }
    async fn retry(&self, message: &Envelope, delay: Duration) -> Result<(), QueueError> {
        self.inner.retry(message, delay).await
    }
    async fn release(&self, message: &Envelope, delay: Duration) -> Result<(), QueueError> {
        self.inner.release(message, delay).await
    }
    async fn dead_letter(&self, message: &Envelope, reason: &str) -> Result<(), QueueError> {
        self.inner.dead_letter(message, reason).await
    }
}

/// Scenario 1.
#[tokio::test]
async fn the_producer_enqueues_and_suppresses_local_hooks() {
    let queue = Arc::new(MemoryQueue::new("q"));
    let (probe, _rx) = probe();
    let mut registry = Registry::new();
    register(&mut registry, CREATED, "h", &probe);
    let lanes = Lanes::builder(
        registry,
        orders_topology(queue.clone(), |b| b.max_attempts(3)),
        "api",
    )
    .start()
    .await
    .unwrap();
    lanes.emit(CREATED, order(1)).await.unwrap();
    assert_eq!(probe.calls.load(Ordering::SeqCst), 0);
    let waiting = queue.waiting();
    assert_eq!(waiting.len(), 1);
    let message = &waiting[0];
    assert_eq!(
        (message.lane.as_str(), message.event.as_str()),
        ("orders", "orders:created")
    );
    assert_eq!(message.source, "profile:api");
    assert_eq!(message.attempts, 0);
    assert_eq!(
        serde_json::from_slice::<Order>(&message.payload).unwrap(),
        order(1)
    );
    lanes.shutdown().await;
}

/// Scenario 2: the payload survives the queue, the handler runs once, and a relayed re-emit stays
/// local (never re-enqueued).
#[tokio::test]
async fn serializer_boundary_without_relay_loops() {
    let queue = Arc::new(MemoryQueue::new("q"));
    let calls = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut registry = Registry::new();
    let lanes_slot: Arc<tokio::sync::OnceCell<Arc<Lanes>>> = Arc::new(tokio::sync::OnceCell::new());
    {
        let calls = calls.clone();
        let slot = lanes_slot.clone();
        registry.on(CREATED, "relay-again", move |payload: Order, cx| {
            let calls = calls.clone();
            let slot = slot.clone();
            let tx = tx.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                if payload.hops == 0 {
                    let lanes = slot.get().ok_or("lanes not ready")?;
                    let again = Order {
                        hops: 1,
                        ..payload.clone()
                    };
                    lanes
                        .emit_with(
                            CREATED,
                            again,
                            EmitOptions::new().source(cx.source().clone()),
                        )
                        .await?;
                }
                let _ = tx.send(payload);
                Ok(())
            }
        });
    }
    let lanes = Arc::new(
        Lanes::builder(registry, orders_topology(queue.clone(), |b| b), "worker")
            .start()
            .await
            .unwrap(),
    );
    let _ = lanes_slot.set(lanes.clone());
    lanes.emit(CREATED, order(7)).await.unwrap();
    let relayed_local = rx.recv().await.unwrap();
    let from_queue = rx.recv().await.unwrap();
    assert_eq!(
        relayed_local,
        Order {
            hops: 1,
            ..order(7)
        }
    );
    assert_eq!(from_queue, order(7));
    wait_until("ack", || queue.stats().acked == 1).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        queue.stats().enqueued,
        1,
        "the relayed emit was not re-enqueued"
    );
}

/// Scenario 3.
#[tokio::test]
async fn many_lanes_on_one_queue() {
    let queue = Arc::new(CountingQueue::new());
    let (probe, mut rx) = probe();
    let mut registry = Registry::new();
    register(&mut registry, CREATED, "h", &probe);
    register(&mut registry, AUDITED, "h", &probe);
    let topology = Topology::new()
        .event_lane(EventLane::new("orders").apply_to([CREATED]))
        .event_lane(EventLane::new("audit").apply_to([AUDITED]))
        .profile("worker", Profile::new().consume("orders").consume("audit"))
        .bind_event(EventBinding::new("orders", queue.clone()))
        .bind_event(EventBinding::new("audit", queue.clone()));
    let lanes = Lanes::builder(registry, topology, "worker")
        .start()
        .await
        .unwrap();
    lanes.emit(CREATED, order(1)).await.unwrap();
    lanes.emit(AUDITED, order(2)).await.unwrap();
    let mut got = vec![rx.recv().await.unwrap().0, rx.recv().await.unwrap().0];
    got.sort();
    assert_eq!(got, vec!["orders:audited", "orders:created"]);
    lanes.shutdown().await;
}

/// Scenario 6: default max attempts settles at once; with 2 attempts: one retry then a dead letter.
#[tokio::test]
async fn retry_and_final_settlement() {
    for (max_attempts, retries) in [(1u32, 0u64), (2, 1), (4, 3)] {
        let queue = Arc::new(MemoryQueue::new("q"));
        let attempts = Arc::new(AtomicUsize::new(0));
        let mut registry = Registry::new();
        let seen = attempts.clone();
        registry.on(CREATED, "fails", move |_p, _cx| {
            seen.fetch_add(1, Ordering::SeqCst);
            async move { Err("boom".into()) }
        });
        let lanes = Lanes::builder(
            registry,
            orders_topology(queue.clone(), |b| b.max_attempts(max_attempts)),
            "worker",
        )
        .start()
        .await
        .unwrap();
        lanes.emit(CREATED, order(1)).await.unwrap();
        wait_until("dead letter", || queue.stats().dead_lettered == 1).await;
        let stats = queue.stats();
        assert_eq!(stats.retried, retries);
        assert_eq!(stats.acked, 0);
        assert_eq!(attempts.load(Ordering::SeqCst), max_attempts as usize);
        let dead = queue.dead_letters();
        assert_eq!(dead[0].envelope.attempts, max_attempts);
        assert!(
            dead[0].reason.starts_with("lanes-handler-failed"),
            "{}",
            dead[0].reason
        );
        lanes.shutdown().await;
    }
}

/// The retry delay waits in the queue: it holds no consumer slot and blocks no other message.
#[tokio::test]
async fn retry_delay_holds_no_consumer_slot() {
    let queue = Arc::new(MemoryQueue::new("q"));
    let (probe, mut rx) = probe();
    let mut registry = Registry::new();
    let p = probe.clone();
    registry.on(CREATED, "h", move |payload: Order, cx| {
        let p = p.clone();
        async move {
            if payload.id == 1 {
                return Err("first one fails".into());
            }
            let _ = p.seen.send(("ok".into(), payload, cx));
            Ok(())
        }
    });
    let lanes = Lanes::builder(
        registry,
        orders_topology(queue.clone(), |b| {
            b.prefetch(1)
                .max_attempts(2)
                .retry_delay(Duration::from_secs(3600))
        }),
        "worker",
    )
    .start()
    .await
    .unwrap();
    lanes.emit(CREATED, order(1)).await.unwrap();
    wait_until("retry scheduled", || queue.stats().retried == 1).await;
    lanes.emit(CREATED, order(2)).await.unwrap();
    let (_, handled, _) = rx.recv().await.unwrap();
    assert_eq!(
        handled.id, 2,
        "the second message is not blocked by the first one's retry delay"
    );
    let stats = queue.stats();
    assert_eq!(
        (stats.waiting, stats.in_flight, stats.dead_lettered),
        (1, 0, 0)
    );
    lanes.shutdown().await;
}

/// A complete order with an extra field holding a byte that is not UTF-8.
const INVALID_UTF8: &[u8] =
    b"{\"id\":1,\"note\":null,\"tags\":[],\"total\":1.0,\"hops\":0,\"extra\":\"\xff\"}";

/// Scenario 7: wrong event, wrong lane, bad token, malformed payload: dead-lettered at once.
#[tokio::test]
async fn poison_messages_are_dead_lettered_at_once() {
    const STRAY: EventDef<Order> = EventDef::new("orders:stray");
    let queue = Arc::new(MemoryQueue::new("q"));
    let auth = LaneAuth::hmac(HMAC_SECRET).unwrap();
    let (probe, _rx) = probe();
    let mut registry = Registry::new();
    register(&mut registry, CREATED, "h", &probe);
    register(&mut registry, STRAY, "h", &probe);
    let lanes = Lanes::builder(
        registry,
        orders_topology(queue.clone(), |b| b.max_attempts(5).auth(auth.clone())),
        "worker",
    )
    .start()
    .await
    .unwrap();
    let payload = bytes::Bytes::from(serde_json::to_vec(&order(1)).unwrap());
    let signed = |event: &str, payload: &[u8]| {
        auth.sign(&Subject {
            lane: "orders",
            kind: TargetKind::Event,
            target: event,
            payload,
            context: &CallContext::new(),
        })
        .unwrap()
    };
    let cases: Vec<(&str, &str, bytes::Bytes, Option<String>, &str)> = vec![
        (
            "orders",
            "orders:unknown",
            payload.clone(),
            signed("orders:unknown", &payload),
            "lanes-event-not-registered",
        ),
        (
            "orders",
            "orders:stray",
            payload.clone(),
            signed("orders:stray", &payload),
            "lanes-wrong-lane",
        ),
        (
            "orders",
            "orders:created",
            payload.clone(),
            Some("no".into()),
            "lanes-auth-unauthorized",
        ),
        (
            "orders",
            "orders:created",
            payload.clone(),
            None,
            "lanes-auth-unauthorized",
        ),
        (
            "orders",
            "orders:created",
            bytes::Bytes::from_static(b"{invalid-json"),
            signed("orders:created", b"{invalid-json"),
            "lanes-payload-malformed",
        ),
        (
            "orders",
            "orders:created",
            bytes::Bytes::from_static(b"{\"id\":\"not a number\"}"),
            signed("orders:created", b"{\"id\":\"not a number\"}"),
            "lanes-payload-malformed",
        ),
        (
            // Invalid UTF-8 inside a string of a field the handler's type ignores: not JSON.
            "orders",
            "orders:created",
            bytes::Bytes::from_static(INVALID_UTF8),
            signed("orders:created", INVALID_UTF8),
            "lanes-payload-malformed",
        ),
    ];
    let count = cases.len();
    for (lane, event, payload, token, _) in &cases {
        queue
            .enqueue(NewEnvelope {
                lane: (*lane).into(),
                event: (*event).into(),
                payload: payload.clone(),
                source: "test".into(),
                context: CallContext::new(),
                auth_token: token.clone(),
            })
            .await
            .unwrap();
    }
    wait_until("all dead-lettered", || {
        queue.stats().dead_lettered == count as u64
    })
    .await;
    let dead = queue.dead_letters();
    for (_, event, payload, _, reason) in &cases {
        assert!(
            dead.iter().any(|d| d.envelope.event == *event
                && d.envelope.payload == *payload
                && d.reason.starts_with(reason)),
            "{event}: {reason} not in {dead:#?}"
        );
    }
    let stats = queue.stats();
    assert_eq!((stats.retried, stats.acked), (0, 0));
    assert_eq!(probe.calls.load(Ordering::SeqCst), 0, "no handler ran");
    lanes.shutdown().await;
}

/// Scenario 8.
#[tokio::test]
async fn retries_reuse_the_token() {
    let queue = Arc::new(MemoryQueue::new("q"));
    let mut registry = Registry::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    registry.on(CREATED, "flaky", move |_p, cx| {
        let tx = tx.clone();
        async move {
            if cx.attempt() == 1 {
                return Err("transient".into());
            }
            let _ = tx.send(cx.attempt());
            Ok(())
        }
    });
    let auth = LaneAuth::hmac(HMAC_SECRET).unwrap();
    let lanes = Lanes::builder(
        registry,
        orders_topology(queue.clone(), |b| b.max_attempts(2).auth(auth)),
        "worker",
    )
    .start()
    .await
    .unwrap();
    lanes.emit(CREATED, order(1)).await.unwrap();
    assert_eq!(rx.recv().await, Some(2));
    wait_until("ack", || queue.stats().acked == 1).await;
    let stats = queue.stats();
    assert_eq!((stats.retried, stats.dead_lettered), (1, 0));
    lanes.shutdown().await;
}

/// Scenario 9: an inactive lane is given back uncounted, an unknown event is dead-lettered, and
/// nothing is consumed after shutdown.
#[tokio::test]
async fn consumer_branches() {
    let queue = Arc::new(MemoryQueue::new("q"));
    let (probe, _rx) = probe();
    let mut registry = Registry::new();
    register(&mut registry, CREATED, "h", &probe);
    let lanes = Lanes::builder(registry, orders_topology(queue.clone(), |b| b), "worker")
        .start()
        .await
        .unwrap();
    let message = |lane: &str, event: &str| NewEnvelope {
        lane: lane.into(),
        event: event.into(),
        payload: "{}".into(),
        source: "test".into(),
        context: CallContext::new(),
        auth_token: None,
    };
    queue
        .enqueue(message("elsewhere", "orders:created"))
        .await
        .unwrap();
    queue
        .enqueue(message("orders", "orders:unknown"))
        .await
        .unwrap();
    wait_until("unknown event dead-lettered", || {
        queue.stats().dead_lettered == 1
    })
    .await;
    wait_until("inactive lane released", || queue.stats().released >= 1).await;
    let waiting = queue.waiting();
    assert_eq!(waiting.len(), 1);
    assert_eq!(
        (waiting[0].lane.as_str(), waiting[0].attempts),
        ("elsewhere", 0),
        "a release is not an attempt"
    );
    lanes.shutdown().await;
    queue
        .enqueue(message("orders", "orders:created"))
        .await
        .unwrap();
    let stats = queue.stats();
    assert_eq!(
        (stats.waiting, stats.in_flight),
        (2, 0),
        "nothing is consumed after shutdown"
    );
    assert_eq!(probe.calls.load(Ordering::SeqCst), 0);
}

/// Scenario 10: enqueue, relay (with the relay source id) and skip-inactive-lane diagnostics.
#[tokio::test]
async fn diagnostics() {
    let (captured, _guard) = common::capture();
    let queue = Arc::new(MemoryQueue::new("q"));
    let (probe, mut rx) = probe();
    let mut registry = Registry::new();
    register(&mut registry, CREATED, "h", &probe);
    let lanes = Lanes::builder(registry, orders_topology(queue.clone(), |b| b), "worker")
        .start()
        .await
        .unwrap();
    lanes.emit(CREATED, order(1)).await.unwrap();
    rx.recv().await.unwrap();
    queue
        .enqueue(NewEnvelope {
            lane: "elsewhere".into(),
            event: "orders:created".into(),
            payload: "{}".into(),
            source: "test".into(),
            context: CallContext::new(),
            auth_token: None,
        })
        .await
        .unwrap();
    wait_until("skip", || queue.stats().released >= 1).await;
    let enqueue = captured.with_diag(diagnostics::ENQUEUE);
    assert_eq!(enqueue.len(), 1);
    assert_eq!(enqueue[0]["lane"], "orders");
    assert_eq!(enqueue[0]["event"], "orders:created");
    assert_eq!(enqueue[0]["mode"], "network");
    let relay = captured.with_diag(diagnostics::RELAY);
    assert_eq!(relay[0]["relay_source"], "lanes-relay:worker:orders");
    let skip = captured.with_diag(diagnostics::SKIP_INACTIVE_LANE);
    assert_eq!(skip[0]["routing_decision"], "lane-not-consumed-by-profile");
    assert_eq!(skip[0]["active_lanes"], "[\"orders\"]");
    lanes.shutdown().await;
}

/// Diagnostics for retries, dead letters and auth failures.
#[tokio::test]
async fn retry_dead_letter_and_auth_failure_diagnostics() {
    let (captured, _guard) = common::capture();
    let queue = Arc::new(MemoryQueue::new("q"));
    let mut registry = Registry::new();
    registry.on(
        CREATED,
        "fails",
        |_p, _cx| async move { Err("boom".into()) },
    );
    let auth = LaneAuth::hmac(HMAC_SECRET).unwrap();
    let lanes = Lanes::builder(
        registry,
        orders_topology(queue.clone(), |b| b.max_attempts(2).auth(auth)),
        "worker",
    )
    .start()
    .await
    .unwrap();
    lanes.emit(CREATED, order(1)).await.unwrap();
    queue
        .enqueue(NewEnvelope {
            lane: "orders".into(),
            event: "orders:created".into(),
            payload: "{}".into(),
            source: "forger".into(),
            context: CallContext::new(),
            auth_token: Some("forged".into()),
        })
        .await
        .unwrap();
    wait_until("two dead letters", || queue.stats().dead_lettered == 2).await;
    assert_eq!(captured.with_diag(diagnostics::RETRY).len(), 1);
    assert_eq!(captured.with_diag(diagnostics::DEAD_LETTER).len(), 2);
    let auth_failures = captured.with_diag(diagnostics::AUTH_FAILURE);
    assert_eq!(auth_failures.len(), 1);
    assert_eq!(
        auth_failures[0]["reason"],
        "lane \"orders\": unauthorized (malformed lane token)"
    );
    lanes.shutdown().await;
}

/// Scenarios 11 and 13: transparent mode runs handlers locally and touches no queue.
#[tokio::test]
async fn transparent_mode() {
    let queue = Arc::new(CountingQueue::new());
    let (probe, _rx) = probe();
    let mut registry = Registry::new();
    register(&mut registry, CREATED, "h", &probe);
    let lanes = Lanes::builder(registry, orders_topology(queue.clone(), |b| b), "worker")
        .mode(Mode::Transparent)
        .start()
        .await
        .unwrap();
    lanes.emit(CREATED, order(1)).await.unwrap();
    assert_eq!(
        probe.calls.load(Ordering::SeqCst),
        1,
        "ran synchronously, before emit returned"
    );
    assert_eq!(queue.calls(), 0, "the queue was never touched");
    lanes.shutdown().await;
}

/// Scenarios 12 and 13: local-simulated delivers asynchronously, signs and verifies, and touches
/// no queue.
#[tokio::test]
async fn local_simulated_mode_is_asynchronous() {
    let queue = Arc::new(CountingQueue::new());
    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut registry = Registry::new();
    let g = gate.clone();
    registry.on(CREATED, "h", move |payload: Order, cx| {
        let g = g.clone();
        let tx = tx.clone();
        async move {
            let _permit = g.acquire().await?;
            let _ = tx.send((payload, cx.source().id(), cx.context().clone()));
            Ok(())
        }
    });
    let auth = LaneAuth::eddsa()
        .with_private_key_pem(common::ED_PRIVATE)
        .unwrap()
        .with_public_key_pem(common::ED_PUBLIC)
        .unwrap();
    let lanes = Lanes::builder(
        registry,
        orders_topology(queue.clone(), |b| b.auth(auth).allow_context(["tenant"])),
        "api",
    )
    .mode(Mode::LocalSimulated)
    .start()
    .await
    .unwrap();
    let cx = CallContext::new()
        .with("tenant", "acme")
        .with("secret", "s");
    lanes
        .emit_with(CREATED, order(3), EmitOptions::new().context(cx))
        .await
        .unwrap();
    assert!(
        rx.try_recv().is_err(),
        "emit returned before the handler ran"
    );
    gate.add_permits(1);
    let (payload, source, context) = rx.recv().await.unwrap();
    assert_eq!(payload, order(3));
    assert_eq!(source, "lanes-relay:api:orders:local-simulated");
    assert_eq!(
        context,
        CallContext::new().with("tenant", "acme"),
        "only allowed keys cross the lane"
    );
    lanes.settle_simulated().await;
    assert_eq!(queue.calls(), 0);
    lanes.shutdown().await;
}

/// Scenario 14: a handler allow-list limits relayed deliveries, not local emits; lane ids with ':'
/// work.
#[tokio::test]
async fn hook_isolation() {
    let queue = Arc::new(MemoryQueue::new("q"));
    let (other, _other_rx) = probe();
    let (probe, mut rx) = probe();
    let mut registry = Registry::new();
    register(&mut registry, CREATED, "mailer", &probe);
    register(&mut registry, CREATED, "analytics", &other);
    let topology = |mode_profile: Profile| {
        Topology::new()
            .event_lane(EventLane::new("orders:v2").apply_to([CREATED]))
            .profile("worker", mode_profile)
            .bind_event(EventBinding::new("orders:v2", queue.clone()))
    };
    let lanes = Lanes::builder(
        registry,
        topology(Profile::new().consume_only("orders:v2", ["mailer"])),
        "worker",
    )
    .start()
    .await
    .unwrap();
    lanes.emit(CREATED, order(1)).await.unwrap();
    let (_, _, cx) = rx.recv().await.unwrap();
    assert_eq!(cx.source().id(), "lanes-relay:worker:orders:v2");
    wait_until("ack", || queue.stats().acked == 1).await;
    assert_eq!(
        other.calls.load(Ordering::SeqCst),
        0,
        "analytics is not on the allow-list"
    );
    lanes.shutdown().await;

    // Transparent (local) emits run every handler.
    let mut registry = Registry::new();
    register(&mut registry, CREATED, "mailer", &probe);
    register(&mut registry, CREATED, "analytics", &other);
    let lanes = Lanes::builder(
        registry,
        topology(Profile::new().consume_only("orders:v2", ["mailer"])),
        "worker",
    )
    .mode(Mode::Transparent)
    .start()
    .await
    .unwrap();
    lanes.emit(CREATED, order(2)).await.unwrap();
    assert_eq!(other.calls.load(Ordering::SeqCst), 1);
    lanes.shutdown().await;
}

/// Scenario 15: no context is forwarded by default; only allowed keys otherwise.
#[tokio::test]
async fn context_allow_list() {
    for (allowed, expected) in [
        (vec![], CallContext::new()),
        (vec!["tenant"], CallContext::new().with("tenant", "acme")),
    ] {
        let queue = Arc::new(MemoryQueue::new("q"));
        let (probe, mut rx) = probe();
        let mut registry = Registry::new();
        register(&mut registry, CREATED, "h", &probe);
        let auth = LaneAuth::hmac(HMAC_SECRET).unwrap();
        let lanes = Lanes::builder(
            registry,
            orders_topology(queue.clone(), |b| {
                b.auth(auth).allow_context(allowed.clone())
            }),
            "worker",
        )
        .start()
        .await
        .unwrap();
        let cx = CallContext::new()
            .with("tenant", "acme")
            .with("password", "hunter2");
        lanes
            .emit_with(CREATED, order(1), EmitOptions::new().context(cx))
            .await
            .unwrap();
        let (_, _, seen) = rx.recv().await.unwrap();
        assert_eq!(seen.context(), &expected);
        assert_eq!(queue.stats().dead_lettered, 0);
        lanes.shutdown().await;
    }
}

/// A context altered in the queue is refused: the token covers it.
#[tokio::test]
async fn an_altered_context_is_refused() {
    let queue = Arc::new(MemoryQueue::new("q"));
    let auth = LaneAuth::hmac(HMAC_SECRET).unwrap();
    let payload = bytes::Bytes::from(serde_json::to_vec(&order(1)).unwrap());
    let signed_context = CallContext::new().with("tenant", "acme");
    let token = auth
        .sign(&Subject {
            lane: "orders",
            kind: TargetKind::Event,
            target: "orders:created",
            payload: &payload,
            context: &signed_context,
        })
        .unwrap();
    let (probe, _rx) = probe();
    let mut registry = Registry::new();
    register(&mut registry, CREATED, "h", &probe);
    let lanes = Lanes::builder(
        registry,
        orders_topology(queue.clone(), |b| b.auth(auth).allow_context(["tenant"])),
        "worker",
    )
    .start()
    .await
    .unwrap();
    queue
        .enqueue(NewEnvelope {
            lane: "orders".into(),
            event: "orders:created".into(),
            payload,
            source: "test".into(),
            context: CallContext::new().with("tenant", "evil"),
            auth_token: token,
        })
        .await
        .unwrap();
    wait_until("dead letter", || queue.stats().dead_lettered == 1).await;
    assert!(
        queue.dead_letters()[0]
            .reason
            .contains("context hash mismatch")
    );
    assert_eq!(probe.calls.load(Ordering::SeqCst), 0);
    lanes.shutdown().await;
}

/// Prefetch bounds the messages in flight per consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_is_respected() {
    let queue = Arc::new(MemoryQueue::new("q"));
    let gate = Arc::new(Semaphore::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut registry = Registry::new();
    {
        let (gate, running, peak) = (gate.clone(), running.clone(), peak.clone());
        registry.on(CREATED, "slow", move |_p, _cx| {
            let (gate, running, peak) = (gate.clone(), running.clone(), peak.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                let _permit = gate.acquire().await?;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        });
    }
    let lanes = Lanes::builder(
        registry,
        orders_topology(queue.clone(), |b| b.prefetch(3)),
        "worker",
    )
    .start()
    .await
    .unwrap();
    for i in 0..10 {
        lanes.emit(CREATED, order(i)).await.unwrap();
    }
    wait_until("three in flight", || running.load(Ordering::SeqCst) == 3).await;
    assert_eq!(
        queue.stats().in_flight,
        3,
        "no fourth message is claimed while three are in flight"
    );
    gate.add_permits(100);
    wait_until("all acked", || queue.stats().acked == 10).await;
    assert_eq!(peak.load(Ordering::SeqCst), 3);
    assert_eq!(queue.stats().max_in_flight, 3);
    lanes.shutdown().await;
}

/// A consumer dropped mid-message: after the visibility timeout the message comes back.
#[tokio::test]
async fn a_killed_consumer_s_message_comes_back() {
    let queue = Arc::new(MemoryQueue::new("q").with_visibility_timeout(Duration::from_millis(300)));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let mut registry = Registry::new();
    registry.on(CREATED, "hangs", move |_p, _cx| {
        let started_tx = started_tx.clone();
        async move {
            let _ = started_tx.send(());
            std::future::pending::<()>().await;
            Ok(())
        }
    });
    let doomed = Lanes::builder(
        registry,
        orders_topology(queue.clone(), |b| b.max_attempts(3)),
        "worker",
    )
    .start()
    .await
    .unwrap();
    doomed.emit(CREATED, order(1)).await.unwrap();
    started.recv().await.unwrap();
    drop(doomed); // killed: no ack, no retry
    let (probe, mut rx) = probe();
    let mut registry = Registry::new();
    register(&mut registry, CREATED, "h", &probe);
    let survivor = Lanes::builder(
        registry,
        orders_topology(queue.clone(), |b| b.max_attempts(3)),
        "worker",
    )
    .start()
    .await
    .unwrap();
    let (_, payload, cx) = rx.recv().await.unwrap();
    assert_eq!(payload, order(1));
    assert_eq!(cx.attempt(), 2);
    survivor.shutdown().await;
}

/// Scenario 19: the memory queue's contract.
#[tokio::test]
async fn memory_queue_semantics() {
    let queue = MemoryQueue::new("q").with_visibility_timeout(Duration::from_millis(100));
    let message = |n: u8| NewEnvelope {
        lane: "l".into(),
        event: "e".into(),
        payload: bytes::Bytes::from(vec![b'0' + n]),
        source: "s".into(),
        context: CallContext::new(),
        auth_token: None,
    };
    queue.enqueue(message(1)).await.unwrap();
    queue.enqueue(message(2)).await.unwrap();
    let batch = queue.receive(10).await.unwrap();
    assert_eq!(batch.len(), 2);
    assert!(batch.iter().all(|m| m.attempts == 1));
    // Ack removes; a second settle of the same delivery is refused.
    queue.ack(&batch[0]).await.unwrap();
    assert_eq!(
        queue.ack(&batch[0]).await,
        Err(QueueError::ClaimLost {
            id: batch[0].id.clone()
        })
    );
    // Retry requeues with the attempt counted.
    queue.retry(&batch[1], Duration::ZERO).await.unwrap();
    let again = queue.receive(10).await.unwrap();
    assert_eq!(again[0].attempts, 2);
    // A stale delivery cannot settle the newer one.
    assert!(queue.ack(&batch[1]).await.is_err());
    // Release gives back uncounted.
    queue.release(&again[0], Duration::ZERO).await.unwrap();
    let third = queue.receive(10).await.unwrap();
    assert_eq!(third[0].attempts, 2);
    // Dead-letter keeps the message and the reason.
    queue.dead_letter(&third[0], "why").await.unwrap();
    assert_eq!(queue.dead_letters()[0].reason, "why");
    // An unsettled claim comes back after the visibility timeout; the queue never requeues otherwise.
    queue.enqueue(message(3)).await.unwrap();
    let claimed = queue.receive(1).await.unwrap();
    let back = queue.receive(1).await.unwrap();
    assert_eq!(back[0].id, claimed[0].id);
    assert_eq!(back[0].attempts, 2);
    // After close, receive and enqueue fail.
    queue.close().await;
    assert_eq!(queue.receive(1).await, Err(QueueError::Closed));
    assert_eq!(queue.enqueue(message(4)).await, Err(QueueError::Closed));
}
