//! The runtime's promises under the ways they used to break without any storage fault: process
//! identity (machine ids, incarnations, cluster parameters) and entity lifecycle (one live
//! instance per entity, writes fenced by the epoch an instance started under, no delivery on an
//! unconfirmed lease).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use common::{counter_definition, eventually, fast_config, init_logs};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use shoal_protocol::{
    EntityAddress, ErrorCode, Headers, Incarnation, ReplyFrame, Request, Runner, RunnerAddress,
    RunnerId, ShardGroup, Snowflake,
};
use shoal_sharding::{
    Entity, EntityContext, EntityDefinition, Handler, HandlerError, InProcessNetwork,
    InboundHandler, Message, Sharding, ShardingConfig,
};
use shoal_storage::testing::{Fault, FaultyRunnerStorage};
use shoal_storage::{EntityKv, MemoryEntityKv, MemoryRunnerStorage, RunnerStorage};
use tokio::sync::Notify;

fn address(port: u16) -> RunnerAddress {
    format!("127.0.0.1:{port}").parse().unwrap()
}

async fn start_runner(
    config: ShardingConfig,
    storage: Arc<dyn RunnerStorage>,
    network: &Arc<InProcessNetwork>,
    at: RunnerAddress,
) -> Result<Sharding, shoal_sharding::StartError> {
    Sharding::builder(config)
        .storage(storage)
        .in_process(network)
        .runner(at)
        .entity(counter_definition())
        .start()
        .await
}

// ---------------------------------------------------------------------------------------------
// Identity.

/// After many registrations in a long-lived cluster (every restart is one), and for client-only
/// processes, no two live processes stamp ids with the same machine bits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_processes_never_share_machine_bits() {
    init_logs();
    let memory = Arc::new(MemoryRunnerStorage::new());
    let storage: Arc<dyn RunnerStorage> = memory.clone();
    let network = InProcessNetwork::new();
    let config = fast_config().build().unwrap();
    let first = start_runner(config.clone(), storage.clone(), &network, address(42_001))
        .await
        .unwrap();
    // Processes come and go (restarts, deploys) while the first one lives on: each registers,
    // leases a machine id, and gives both back when it stops.
    for port in 0..1023u16 {
        let churn = Runner::new(
            address(50_000 + port),
            [ShardGroup::default_group()],
            1.try_into().unwrap(),
        );
        let id = RunnerId::new(churn.address.clone(), Incarnation::random());
        storage
            .register(&churn, id.incarnation, true, Duration::from_secs(5))
            .await
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let machine = storage
            .lease_machine_id(id.incarnation, now, Duration::from_secs(60))
            .await
            .unwrap();
        storage
            .release_machine_id(machine.machine_id, id.incarnation, now)
            .await
            .unwrap();
        storage.unregister(&id).await.unwrap();
    }
    let second = start_runner(config.clone(), storage.clone(), &network, address(42_002))
        .await
        .unwrap();
    let clients = [
        Sharding::builder(config.clone())
            .storage(storage.clone())
            .in_process(&network)
            .client_only()
            .start()
            .await
            .unwrap(),
        Sharding::builder(config.clone())
            .storage(storage.clone())
            .in_process(&network)
            .client_only()
            .start()
            .await
            .unwrap(),
    ];
    let mut seen = HashMap::new();
    for (who, process) in [
        ("first runner", &first),
        ("second runner", &second),
        ("first client", &clients[0]),
        ("second client", &clients[1]),
    ] {
        let machine = process
            .machine_id()
            .unwrap_or_else(|| panic!("the {who} has no machine id from storage"));
        let bits = machine.0 & 1023;
        if let Some(other) = seen.insert(bits, who) {
            panic!("the {who} and the {other} both stamp ids with machine bits {bits}");
        }
    }
    for process in clients.iter().chain([&first, &second]) {
        process.shutdown().await;
    }
}

/// A second process given the address of a live runner (a duplicated `advertise_host`, a
/// restart while the old process is frozen) must not become a second owner of its shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_at_a_live_runners_address_is_refused() {
    init_logs();
    let storage: Arc<dyn RunnerStorage> = Arc::new(MemoryRunnerStorage::new());
    let config = fast_config().build().unwrap();
    let at = address(42_011);
    let first = start_runner(
        config.clone(),
        storage.clone(),
        &InProcessNetwork::new(),
        at.clone(),
    )
    .await
    .unwrap();
    holds_every_shard(&first).await;
    let second = start_runner(
        config.clone(),
        storage.clone(),
        &InProcessNetwork::new(),
        at.clone(),
    )
    .await;
    match second {
        Err(error) => {
            let text = error.to_string();
            assert!(
                text.contains(at.as_str()),
                "the error names the address: {text}"
            );
        }
        Ok(second) => {
            let mine: HashSet<_> = first.active_shards().into_iter().collect();
            let both = second
                .active_shards()
                .into_iter()
                .filter(|s| mine.contains(s))
                .count();
            panic!("a second process at {at} started; {both} shards are served by both");
        }
    }
    first.shutdown().await;
}

/// Runners that map ids to shards differently must not share a cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_with_another_shard_count_refuses_to_start() {
    init_logs();
    let storage: Arc<dyn RunnerStorage> = Arc::new(MemoryRunnerStorage::new());
    let network = InProcessNetwork::new();
    let first = start_runner(
        fast_config().build().unwrap(),
        storage.clone(),
        &network,
        address(42_021),
    )
    .await
    .unwrap();
    let other = fast_config().shards_per_group(30).build().unwrap();
    let runner = start_runner(other.clone(), storage.clone(), &network, address(42_022)).await;
    let error = runner.expect_err("a runner with 30 shards per group is refused");
    assert!(
        error.to_string().contains("shards_per_group"),
        "the error names the setting: {error}"
    );
    let client = Sharding::builder(other)
        .storage(storage.clone())
        .in_process(&network)
        .client_only()
        .start()
        .await;
    let error = client.expect_err("a client with 30 shards per group is refused");
    assert!(error.to_string().contains("shards_per_group"), "{error}");
    first.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Entity lifecycle: an entity whose state lives in its KV, saved when it deactivates.

/// Test hooks per entity id (ids are unique per test).
#[derive(Default)]
struct Hooks {
    /// Set once `deactivate` has started.
    deactivating: Notify,
    /// `deactivate` waits for this before it saves.
    save: Notify,
    /// A task spawned by a handler waits for this before it writes.
    write: Notify,
    /// What that late write got.
    late_write: Mutex<Option<Result<(), String>>>,
}

static HOOKS: LazyLock<Mutex<HashMap<String, Arc<Hooks>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn hooks(id: &str) -> Arc<Hooks> {
    HOOKS.lock().entry(id.to_owned()).or_default().clone()
}

struct Saver {
    n: i64,
    hooks: Arc<Hooks>,
}

impl Entity for Saver {
    const TYPE: &'static str = "saver";
    type State = ();

    async fn activate(ctx: &EntityContext, _: &Arc<()>) -> Result<Self, HandlerError> {
        let kv = ctx.kv().expect("entity kv");
        let n = match kv.get("n").await.map_err(HandlerError::fatal)? {
            Some(bytes) => String::from_utf8_lossy(&bytes).parse().unwrap_or(0),
            None => 0,
        };
        Ok(Saver {
            n,
            hooks: hooks(ctx.address().entity_id.as_str()),
        })
    }

    async fn deactivate(&mut self, ctx: &EntityContext) {
        self.hooks.deactivating.notify_one();
        self.hooks.save.notified().await;
        if let Some(kv) = ctx.kv() {
            let _ = kv.put("n", self.n.to_string()).await;
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Bump;

impl Message for Bump {
    const TAG: &'static str = "bump";
    type Reply = i64;
}

impl Handler<Bump> for Saver {
    async fn handle(&mut self, _: Bump, _: &EntityContext) -> Result<i64, HandlerError> {
        self.n += 1;
        Ok(self.n)
    }
}

/// Spawns a task that keeps the handler's context and writes to the entity's KV later.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WriteLater;

impl Message for WriteLater {
    const TAG: &'static str = "write_later";
    type Reply = ();
}

impl Handler<WriteLater> for Saver {
    async fn handle(&mut self, _: WriteLater, ctx: &EntityContext) -> Result<(), HandlerError> {
        let ctx = ctx.clone();
        let hooks = self.hooks.clone();
        tokio::spawn(async move {
            hooks.write.notified().await;
            let result = match ctx.kv() {
                Some(kv) => kv.put("late", "stale").await.map_err(|e| e.to_string()),
                None => Err("no kv".to_owned()),
            };
            *hooks.late_write.lock() = Some(result);
        });
        Ok(())
    }
}

fn saver_definition() -> EntityDefinition<Saver> {
    EntityDefinition::<Saver>::new()
        .handle::<Bump>()
        .handle::<WriteLater>()
        .max_idle_time(Duration::from_millis(50))
}

/// A runner of `Saver` entities on `storage`, with entity KV fenced by `memory`'s leases, once it
/// holds every shard.
async fn saver_runner(
    memory: &Arc<MemoryRunnerStorage>,
    storage: Arc<dyn RunnerStorage>,
    port: u16,
) -> Sharding {
    init_logs();
    let kv: Arc<dyn EntityKv> = Arc::new(MemoryEntityKv::new(memory.clone()));
    let runner = Sharding::builder(fast_config().build().unwrap())
        .storage(storage)
        .entity_kv(kv)
        .in_process(&InProcessNetwork::new())
        .runner(address(port))
        .entity(saver_definition())
        .start()
        .await
        .unwrap();
    holds_every_shard(&runner).await;
    runner
}

/// Waits until `runner` holds all 60 shards.
async fn holds_every_shard(runner: &Sharding) {
    eventually(
        Duration::from_secs(10),
        "the runner holds every shard",
        || runner.active_shards().len() == 60,
    )
    .await;
}

fn unique(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{test}-{nanos:x}")
}

/// A new instance of an entity must not start while the previous one is still deactivating: it
/// would load state the old one has not saved yet, and the old one's late save would then
/// overwrite the new one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_waits_for_the_previous_one_to_deactivate() {
    let memory = Arc::new(MemoryRunnerStorage::new());
    let runner = saver_runner(&memory, memory.clone(), 42_031).await;
    let id = unique("passivation");
    let hooks = hooks(&id);
    let savers = runner.client::<Saver>();
    assert_eq!(savers.call(&id, Bump).await.unwrap(), 1);
    // The instance idles out and starts deactivating; its save is held back.
    hooks.deactivating.notified().await;
    let second = tokio::spawn({
        let savers = savers.clone();
        let id = id.clone();
        async move { savers.call(&id, Bump).await }
    });
    let mut second = second;
    let early = tokio::time::timeout(Duration::from_millis(300), &mut second).await;
    hooks.save.notify_one();
    let reply = match early {
        Ok(done) => done.unwrap(),
        Err(_) => second.await.unwrap(),
    };
    assert_eq!(
        reply.unwrap(),
        2,
        "the second instance must see the state the first one saved"
    );
    // Let the second instance save too, then stop.
    hooks.save.notify_one();
    runner.shutdown().await;
}

/// A task a handler spawned keeps its `EntityContext`; after the runner lost the shard and took
/// it again, that task must not write over the new instance's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_carry_the_epoch_the_instance_started_under() {
    let memory = Arc::new(MemoryRunnerStorage::new());
    let faulty = Arc::new(FaultyRunnerStorage::new(memory.clone()));
    let runner = saver_runner(&memory, faulty.clone(), 42_041).await;
    let id = unique("epoch");
    let hooks = hooks(&id);
    let shard = runner.shard_of::<Saver>(&id.parse().unwrap());
    runner
        .client::<Saver>()
        .call(&id, WriteLater)
        .await
        .unwrap();
    let before = runner.shard_epoch(&shard).unwrap();
    // Lease storage fails: the runner stops its entities before its leases can lapse.
    faulty.set_fault(Fault::Fail);
    eventually(
        Duration::from_secs(10),
        "the runner lets the shard go",
        || !runner.holds(&shard),
    )
    .await;
    // Storage is back: the runner takes the shard again.
    faulty.set_fault(Fault::None);
    eventually(
        Duration::from_secs(10),
        "the runner holds the shard again",
        || runner.holds(&shard),
    )
    .await;
    hooks.save.notify_one();
    hooks.write.notify_one();
    eventually(Duration::from_secs(10), "the late write finished", || {
        hooks.late_write.lock().is_some()
    })
    .await;
    let late = hooks.late_write.lock().clone().unwrap();
    assert!(
        late.as_ref().is_err_and(|e| e.contains("refused")),
        "a write from the instance of epoch {before} after the shard was taken again (epoch \
         {:?}) must be fenced, got {late:?}",
        runner.shard_epoch(&shard)
    );
    runner.shutdown().await;
}

/// A runner that was frozen (SIGSTOP, a VM pause) longer than its lease must not serve a call
/// before it has confirmed its lease again, even if its watchdog has not run yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_back_from_a_freeze_refuses_calls_until_its_lease_is_confirmed() {
    init_logs();
    let memory = Arc::new(MemoryRunnerStorage::new());
    let storage: Arc<dyn RunnerStorage> = memory.clone();
    let network = InProcessNetwork::new();
    let config = fast_config().build().unwrap();
    let (freeze_tx, freeze_rx) = tokio::sync::oneshot::channel::<()>();
    // The frozen runner runs alone on a current-thread runtime: blocking that thread stops
    // everything it does (lease keeper, watchdog, timers), as SIGSTOP would.
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let frozen = std::thread::spawn({
        let (storage, network, config) = (storage.clone(), network.clone(), config.clone());
        move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let a = start_runner(config, storage, &network, address(42_051))
                    .await
                    .unwrap();
                started_tx.send(a.clone()).ok();
                freeze_rx.await.ok();
                // Frozen: this thread is its runtime's only thread.
                std::thread::sleep(Duration::from_secs(4));
                a.shutdown().await;
            });
        }
    });
    let a = started_rx.await.unwrap();
    holds_every_shard(&a).await;
    freeze_tx.send(()).unwrap();
    // Another runner takes the shards once the frozen runner's leases lapse.
    let b = start_runner(config.clone(), storage.clone(), &network, address(42_052))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(3),
        "the second runner holds every shard",
        || b.active_shards().len() == 60,
    )
    .await;
    // The frozen runner still believes it holds them; a call delivered to it now is refused.
    let entity = "frozen-call".parse().unwrap();
    let request = Request {
        id: Snowflake::from_raw(1),
        address: EntityAddress::new(
            a.shard_in(&ShardGroup::default_group(), &entity),
            "counter".parse().unwrap(),
            entity,
        ),
        tag: "get".parse().unwrap(),
        payload: bytes::Bytes::from_static(b"null"),
        headers: Headers::new(),
        persisted: false,
        timeout: Some(Duration::from_secs(1)),
        streaming: false,
    };
    let answer = tokio::time::timeout(Duration::from_secs(1), a.handle_request(request)).await;
    match answer {
        Ok(ReplyFrame::Failure(failure)) if failure.code == ErrorCode::EntityNotAssigned => {}
        other => panic!(
            "a runner whose lease is not confirmed served a call while another runner holds the \
             shard: {other:?}"
        ),
    }
    frozen.join().unwrap();
    b.shutdown().await;
}

/// A crashed runner's shards move as soon as its leases lapse, not at the next poll: keepers
/// wake when the first lease of another runner they saw would lapse. Time is paused and polls
/// are an hour apart, so only that wake can move the shards within the test's window.
#[tokio::test(start_paused = true)]
async fn shards_move_when_their_leases_lapse_not_at_the_next_poll() {
    init_logs();
    let memory = Arc::new(MemoryRunnerStorage::new());
    let network = InProcessNetwork::new();
    let config = fast_config()
        .assignment_refresh_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let a = start_runner(config.clone(), memory.clone(), &network, address(42_071))
        .await
        .unwrap();
    holds_every_shard(&a).await;
    let b = start_runner(config.clone(), memory.clone(), &network, address(42_072))
        .await
        .unwrap();
    let crashed_at = tokio::time::Instant::now();
    a.crash();
    let bound = config.lease_ttl() + Duration::from_millis(100);
    eventually(bound, "the survivor holds every shard", || {
        b.active_shards().len() == 60
    })
    .await;
    assert!(crashed_at.elapsed() <= bound);
    b.shutdown().await;
}

/// A process whose machine-id lease was lost leases another one at its next renewal and keeps
/// making ids (under the new machine id, after the new id's previous reservation).
#[tokio::test(start_paused = true)]
async fn a_lost_machine_id_is_replaced_at_the_next_renewal() {
    init_logs();
    let memory = Arc::new(MemoryRunnerStorage::new());
    // Another live process holds machine id 0.
    memory
        .lease_machine_id(Incarnation::from_raw(7), 0, Duration::from_secs(3600))
        .await
        .unwrap();
    let client = Sharding::builder(fast_config().build().unwrap())
        .storage(memory.clone())
        .in_process(&InProcessNetwork::new())
        .client_only()
        .start()
        .await
        .unwrap();
    let first = client.machine_id().unwrap();
    assert_eq!(first.0, 1);
    // Its lease lapses (as if it had been frozen past it) and another process takes the id.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    memory
        .release_machine_id(first, client.incarnation(), now)
        .await
        .unwrap();
    let thief = memory
        .lease_machine_id(Incarnation::from_raw(8), now, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(thief.machine_id, first);
    // The next renewal (every 10 s) learns the lease is gone and leases another id.
    tokio::time::sleep(shoal_sharding::MACHINE_ID_TTL / 5).await;
    let second = client.machine_id().unwrap();
    assert_ne!(second, first, "the process kept a machine id it lost");
    let held = memory.machine_ids().await.unwrap();
    assert!(
        held.iter()
            .any(|l| l.machine_id == second && l.incarnation == client.incarnation()),
        "{held:?}"
    );
    client.shutdown().await;
}

/// A runner cut off from storage past its heartbeat, whose address another process registered
/// meanwhile, stops serving and stops altogether when it gets back: the address is the other
/// process's now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_whose_address_was_taken_while_it_was_away_stops() {
    init_logs();
    let memory = Arc::new(MemoryRunnerStorage::new());
    let faulty = Arc::new(FaultyRunnerStorage::new(memory.clone()));
    let at = address(42_061);
    let a = start_runner(
        fast_config().build().unwrap(),
        faulty.clone(),
        &InProcessNetwork::new(),
        at.clone(),
    )
    .await
    .unwrap();
    holds_every_shard(&a).await;
    // Cut off long enough for its heartbeat (900 ms) to lapse; another process registers there.
    faulty.set_fault(Fault::Fail);
    eventually(
        Duration::from_secs(10),
        "the runner stopped its shards",
        || a.active_shards().is_empty(),
    )
    .await;
    let other = Runner::new(
        at.clone(),
        [ShardGroup::default_group()],
        1.try_into().unwrap(),
    );
    let mut registered = false;
    for _ in 0..50 {
        if memory
            .register(&other, Incarnation::random(), true, Duration::from_secs(30))
            .await
            .is_ok()
        {
            registered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(registered, "the other process could not register at {at}");
    faulty.set_fault(Fault::None);
    tokio::time::timeout(Duration::from_secs(10), a.stopped())
        .await
        .expect("the runner stops once it finds its address taken");
    assert!(a.active_shards().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Calls that were queued when their entity's shard moved.

/// Holds every `Hold` call until the test opens it (the entity type's shared state).
struct Gate {
    open: tokio::sync::Semaphore,
}

struct Held {
    gate: Arc<Gate>,
}

impl Entity for Held {
    const TYPE: &'static str = "held";
    type State = Gate;

    async fn activate(_: &EntityContext, gate: &Arc<Gate>) -> Result<Self, HandlerError> {
        Ok(Held { gate: gate.clone() })
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct Hold;

impl Message for Hold {
    const TAG: &'static str = "hold";
    type Reply = String;
}

impl Handler<Hold> for Held {
    async fn handle(&mut self, _: Hold, ctx: &EntityContext) -> Result<String, HandlerError> {
        let _pass = self.gate.open.acquire().await;
        Ok(ctx
            .runner_address()
            .map(ToString::to_string)
            .unwrap_or_default())
    }
}

/// A typed local call waiting in its entity's mailbox when the shard moves away is sent on to
/// the next owner: the stopping instance hands its value back (typed calls travel unencoded
/// until they must leave the process). It used to fail with "message already handed over".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_local_call_follows_its_entity_to_the_next_owner() {
    init_logs();
    let memory = Arc::new(MemoryRunnerStorage::new());
    let network = InProcessNetwork::new();
    let gate = Arc::new(Gate {
        open: tokio::sync::Semaphore::new(0),
    });
    let start = |port: u16| {
        Sharding::builder(fast_config().build().unwrap())
            .storage(memory.clone())
            .in_process(&network)
            .runner(address(port))
            .entity(EntityDefinition::<Held>::with_state(gate.clone()).handle::<Hold>())
            .start()
    };
    let a = start(42_081).await.unwrap();
    holds_every_shard(&a).await;
    // Two calls per entity: the first runs and waits at the gate, the second waits behind it.
    let held = a.client::<Held>();
    let ids: Vec<String> = (0..24).map(|i| format!("e{i}")).collect();
    let mut calls = Vec::new();
    for id in &ids {
        for _ in 0..2 {
            let mut call = Box::pin(held.call(id, Hold));
            assert!(futures::poll!(&mut call).is_pending());
            calls.push(call);
        }
    }
    // A second runner joins: about half the shards leave `a` once their running calls end.
    let b = start(42_082).await.unwrap();
    eventually(Duration::from_secs(10), "a sees the newcomer", || {
        a.cluster_view().runners.len() == 2
    })
    .await;
    gate.open.add_permits(1_000);
    let mut served_by_b = 0;
    for call in calls {
        let runner = call.await.expect("every call is answered");
        served_by_b += usize::from(runner == address(42_082).to_string());
    }
    assert!(served_by_b > 0, "no entity moved; the test proved nothing");
    a.shutdown().await;
    b.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Singletons registered on the builder.

/// A singleton given to the builder is in place before the runner takes shards: it runs on
/// exactly one of two runners; a mistake in it fails `start`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn singletons_registered_before_start_run_once() {
    init_logs();
    let memory = Arc::new(MemoryRunnerStorage::new());
    let network = InProcessNetwork::new();
    let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = |port: u16, group: ShardGroup| {
        let running = running.clone();
        Sharding::builder(fast_config().build().unwrap())
            .storage(memory.clone())
            .in_process(&network)
            .runner(address(port))
            .singleton("leader", group, move |ctx| {
                let running = running.clone();
                async move {
                    running.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    ctx.cancelled().await;
                    running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                }
            })
            .start()
    };
    let refused = start(42_091, "nowhere".parse().unwrap()).await;
    assert!(
        matches!(
            refused,
            Err(shoal_sharding::StartError::Register(
                shoal_sharding::RegisterError::UnknownGroup { .. }
            ))
        ),
        "{refused:?}"
    );
    // The refused runner left no registration behind (others would assign it shards).
    let listed = memory.runners().await.unwrap();
    assert!(
        listed.iter().all(|r| r.runner.address != address(42_091)),
        "{listed:?}"
    );
    let a = start(42_092, ShardGroup::default_group()).await.unwrap();
    let b = start(42_093, ShardGroup::default_group()).await.unwrap();
    eventually(Duration::from_secs(10), "the singleton runs", || {
        running.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    let shard = a.shard_in(&ShardGroup::default_group(), &"leader".parse().unwrap());
    eventually(
        Duration::from_secs(10),
        "one runner holds its shard",
        || a.holds(&shard) != b.holds(&shard),
    )
    .await;
    assert_eq!(running.load(std::sync::atomic::Ordering::SeqCst), 1);
    a.shutdown().await;
    b.shutdown().await;
    assert_eq!(running.load(std::sync::atomic::Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------------------------------------
// Networks given to the builder.

/// Counts the calls it answered.
struct Tally(u64);

impl Entity for Tally {
    const TYPE: &'static str = "tally";
    type State = ();

    async fn activate(_: &EntityContext, _: &Arc<()>) -> Result<Self, HandlerError> {
        Ok(Tally(0))
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Add;

impl Message for Add {
    const TAG: &'static str = "add";
    type Reply = u64;
}

impl Handler<Add> for Tally {
    async fn handle(&mut self, _: Add, _: &EntityContext) -> Result<u64, HandlerError> {
        self.0 += 1;
        Ok(self.0)
    }
}

/// A network whose server cannot start (its port taken, a bad TLS setting): the runner
/// registered by then is taken back out.
struct Unservable(shoal_sharding::InProcessEndpoint);

impl shoal_sharding::Network for Unservable {
    fn transport(&self) -> Arc<dyn shoal_sharding::Transport> {
        self.0.transport()
    }

    fn address(&self) -> Option<shoal_protocol::RunnerAddress> {
        self.0.address()
    }

    fn serve(
        self: Box<Self>,
        _: Sharding,
    ) -> Result<Box<dyn shoal_sharding::Serving>, shoal_sharding::NetworkError> {
        Err("address already in use".into())
    }
}

/// A runtime given a network serves its requests while it runs and stops serving when it stops;
/// a network that cannot serve fails `start` and leaves no registration behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_serves_while_its_runtime_runs() {
    use shoal_sharding::Network as _;

    init_logs();
    let memory = Arc::new(MemoryRunnerStorage::new());
    let network = InProcessNetwork::new();
    let refused = Sharding::builder(fast_config().build().unwrap())
        .storage(memory.clone())
        .network(Unservable(network.endpoint(address(42_101))))
        .entity(EntityDefinition::<Tally>::new().handle::<Add>())
        .start()
        .await;
    assert!(
        matches!(refused, Err(shoal_sharding::StartError::Serve(_))),
        "{refused:?}"
    );
    let listed = memory.runners().await.unwrap();
    assert!(
        listed.iter().all(|r| r.runner.address != address(42_101)),
        "{listed:?}"
    );

    let runner = Sharding::builder(fast_config().build().unwrap())
        .storage(memory.clone())
        .network(network.endpoint(address(42_102)))
        .entity(EntityDefinition::<Tally>::new().handle::<Add>())
        .start()
        .await
        .unwrap();
    let front = Sharding::builder(fast_config().build().unwrap())
        .storage(memory.clone())
        .network(network.client_endpoint())
        .start()
        .await
        .unwrap();
    assert_eq!(front.client::<Tally>().call("t-1", Add).await.unwrap(), 1);
    runner.shutdown().await;
    let after = network
        .client_endpoint()
        .transport()
        .ping(&address(42_102))
        .await;
    assert!(
        after.is_err(),
        "the stopped runner is off the network: {after:?}"
    );
    front.shutdown().await;
}
