//! Persisted messages end to end (memory and Postgres): stored before delivery, answered once,
//! redelivered after crashes, deduplicated by primary key, scheduled, never blocked by a bad row.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::{
    Backend, Increment, config_for, counter_definition, eventually, eventually_async, init_logs,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use shoal_protocol::{
    EntityAddress, ErrorCode, Headers, MachineId, ReplyFrame, RunnerAddress, ShardId, Snowflake,
    SnowflakeGenerator, Tag,
};
use shoal_sharding::{
    CallError, CallErrorKind, CallOptions, ChunkSink, Entity, EntityContext, EntityDefinition,
    Handler, HandlerError, InProcessNetwork, InboundHandler, Message, MessageSettings, Sharding,
    ShardingConfig, StreamHandler,
};
use shoal_storage::testing::{Fault, FaultyRunnerStorage};
use shoal_storage::{
    Claim, MemoryMessageStorage, MemoryRunnerStorage, MessageEvent, MessageStorage,
    PersistedRequest, PostgresMessageStorage, PostgresRunnerStorage, RunnerStorage,
    StoredReplyKind,
};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// A persisted entity that records every run of its handler.

#[derive(Debug, Clone)]
struct Run {
    runner: RunnerAddress,
    started: SystemTime,
    finished: bool,
}

/// Runs per entity id (ids are unique per test).
static RUNS: LazyLock<Mutex<HashMap<String, Vec<Run>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn runs(id: &str) -> Vec<Run> {
    RUNS.lock().get(id).cloned().unwrap_or_default()
}

fn finished_runs(id: &str) -> usize {
    runs(id).iter().filter(|r| r.finished).count()
}

struct Durable;

impl Entity for Durable {
    const TYPE: &'static str = "durable";
    type State = ();

    async fn activate(_: &EntityContext, _: &Arc<()>) -> Result<Self, HandlerError> {
        Ok(Durable)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    key: Option<String>,
    work_ms: u64,
    /// Deliver at this Unix time in milliseconds.
    at_ms: Option<u64>,
}

impl Record {
    fn plain() -> Self {
        Record {
            key: None,
            work_ms: 0,
            at_ms: None,
        }
    }

    /// Delivered at `at_ms` (Unix milliseconds), not before.
    fn at(at_ms: u64) -> Self {
        Record {
            at_ms: Some(at_ms),
            ..Record::plain()
        }
    }
}

impl Message for Record {
    const TAG: &'static str = "record";
    /// The runner that ran it.
    type Reply = String;
    const PERSISTED: bool = true;

    fn primary_key(&self) -> Option<String> {
        self.key.clone()
    }

    fn deliver_at(&self) -> Option<SystemTime> {
        self.at_ms.map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
    }
}

impl Handler<Record> for Durable {
    async fn handle(&mut self, msg: Record, ctx: &EntityContext) -> Result<String, HandlerError> {
        let id = ctx.address().entity_id.to_string();
        let runner = ctx.runner_address().cloned().expect("a runner");
        let index = {
            let mut all = RUNS.lock();
            let list = all.entry(id.clone()).or_default();
            list.push(Run {
                runner: runner.clone(),
                started: SystemTime::now(),
                finished: false,
            });
            list.len() - 1
        };
        if msg.work_ms > 0 {
            tokio::time::sleep(Duration::from_millis(msg.work_ms)).await;
        }
        RUNS.lock().get_mut(&id).expect("recorded")[index].finished = true;
        Ok(runner.to_string())
    }
}

/// A persisted stream of the numbers `0..count`. Its first run stalls (until its runner dies)
/// after sending `stall_after` numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Numbers {
    count: u64,
    stall_after: u64,
    /// Continue from the resume point instead of producing the stored numbers again.
    seek: bool,
}

impl Message for Numbers {
    const TAG: &'static str = "numbers";
    type Reply = u64;
    const PERSISTED: bool = true;
}

/// Per entity id: each run of `Numbers` with its runner and the resume point it was given.
type StreamRuns = HashMap<String, Vec<(RunnerAddress, u64)>>;
static STREAM_RUNS: LazyLock<Mutex<StreamRuns>> = LazyLock::new(|| Mutex::new(HashMap::new()));

impl StreamHandler<Numbers> for Durable {
    async fn handle_stream(
        &mut self,
        msg: Numbers,
        ctx: &EntityContext,
        out: &mut ChunkSink<u64>,
    ) -> Result<(), HandlerError> {
        let id = ctx.address().entity_id.to_string();
        let runner = ctx.runner_address().cloned().expect("a runner");
        let first_run = {
            let mut all = STREAM_RUNS.lock();
            let list = all.entry(id).or_default();
            list.push((runner, out.resume_point()));
            list.len() == 1
        };
        let start = if msg.seek {
            out.skip_to_resume_point()
        } else {
            0
        };
        for n in start..msg.count {
            if first_run && n == msg.stall_after {
                tokio::time::sleep(Duration::from_secs(600)).await;
            }
            out.send(n).await?;
        }
        Ok(())
    }
}

/// Answers with its own text: what ran is visible in the reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Echo {
    text: String,
    /// Deliver at this Unix time in milliseconds.
    at_ms: Option<u64>,
}

impl Message for Echo {
    const TAG: &'static str = "echo";
    type Reply = String;
    const PERSISTED: bool = true;

    fn deliver_at(&self) -> Option<SystemTime> {
        self.at_ms.map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
    }
}

impl Handler<Echo> for Durable {
    async fn handle(&mut self, msg: Echo, _: &EntityContext) -> Result<String, HandlerError> {
        Ok(msg.text)
    }
}

/// A persisted message its callers may not interrupt; recorded like `Record`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Careful {
    work_ms: u64,
}

impl Message for Careful {
    const TAG: &'static str = "careful";
    type Reply = String;
    const PERSISTED: bool = true;
    const UNINTERRUPTIBLE: bool = true;
}

impl Handler<Careful> for Durable {
    async fn handle(&mut self, msg: Careful, ctx: &EntityContext) -> Result<String, HandlerError> {
        let record = Record {
            key: None,
            work_ms: msg.work_ms,
            at_ms: None,
        };
        <Durable as Handler<Record>>::handle(self, record, ctx).await
    }
}

fn durable_definition() -> EntityDefinition<Durable> {
    EntityDefinition::<Durable>::new()
        .handle::<Record>()
        .handle::<Echo>()
        .handle::<Careful>()
        .stream::<Numbers>()
}

/// One request at a time, one queued: a mailbox that is full most of the time.
struct Narrow;

impl Entity for Narrow {
    const TYPE: &'static str = "narrow";
    type State = ();

    async fn activate(_: &EntityContext, _: &Arc<()>) -> Result<Self, HandlerError> {
        Ok(Narrow)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Slow;

impl Message for Slow {
    const TAG: &'static str = "slow";
    type Reply = ();
    const PERSISTED: bool = true;
}

impl Handler<Slow> for Narrow {
    async fn handle(&mut self, _: Slow, _: &EntityContext) -> Result<(), HandlerError> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok(())
    }
}

fn narrow_definition() -> EntityDefinition<Narrow> {
    EntityDefinition::<Narrow>::new()
        .handle::<Slow>()
        .mailbox_capacity(1)
}

/// Message storage that counts claims and resets, and can be told to never answer saves.
struct Probe {
    inner: Arc<dyn MessageStorage>,
    claimed: std::sync::atomic::AtomicUsize,
    resets: std::sync::atomic::AtomicUsize,
    hang_saves: std::sync::atomic::AtomicBool,
}

impl Probe {
    fn new(inner: Arc<dyn MessageStorage>) -> Arc<Self> {
        Arc::new(Probe {
            inner,
            claimed: Default::default(),
            resets: Default::default(),
            hang_saves: Default::default(),
        })
    }
}

#[async_trait::async_trait]
impl MessageStorage for Probe {
    async fn save_request(
        &self,
        request: &PersistedRequest,
        claim: Option<&Claim>,
    ) -> Result<shoal_storage::SaveResult, shoal_storage::StorageError> {
        if self.hang_saves.load(std::sync::atomic::Ordering::SeqCst) {
            // Sent, and never answered: the write may or may not land.
            let _ = self.inner.save_request(request, claim).await;
            std::future::pending::<()>().await;
        }
        self.inner.save_request(request, claim).await
    }
    async fn save_envelope(
        &self,
        envelope: &shoal_storage::PersistedEnvelope,
    ) -> Result<(), shoal_storage::StorageError> {
        self.inner.save_envelope(envelope).await
    }
    async fn save_reply(
        &self,
        reply: &shoal_storage::StoredReply,
        fence: &shoal_storage::Fence,
    ) -> Result<(), shoal_storage::StorageError> {
        self.inner.save_reply(reply, fence).await
    }
    async fn pending_request(
        &self,
        id: Snowflake,
    ) -> Result<Option<PersistedRequest>, shoal_storage::StorageError> {
        self.inner.pending_request(id).await
    }
    async fn replies_for(
        &self,
        requests: &[Snowflake],
    ) -> Result<Vec<shoal_storage::StoredReply>, shoal_storage::StorageError> {
        self.inner.replies_for(requests).await
    }
    async fn claim_unprocessed(
        &self,
        shards: &[ShardId],
        limit: usize,
        claim: &Claim,
    ) -> Result<Vec<shoal_storage::ClaimedMessage>, shoal_storage::StorageError> {
        let claimed = self.inner.claim_unprocessed(shards, limit, claim).await?;
        self.claimed
            .fetch_add(claimed.len(), std::sync::atomic::Ordering::SeqCst);
        Ok(claimed)
    }
    async fn next_deliver_at(
        &self,
        shards: &[ShardId],
    ) -> Result<Option<SystemTime>, shoal_storage::StorageError> {
        self.inner.next_deliver_at(shards).await
    }
    async fn reset_shards(&self, shards: &[ShardId]) -> Result<(), shoal_storage::StorageError> {
        self.inner.reset_shards(shards).await
    }
    async fn reset_request(
        &self,
        request_id: Snowflake,
    ) -> Result<(), shoal_storage::StorageError> {
        self.resets
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.reset_request(request_id).await
    }
    async fn reset_runner(
        &self,
        runner: &RunnerAddress,
    ) -> Result<(), shoal_storage::StorageError> {
        self.inner.reset_runner(runner).await
    }
    async fn reset_address(
        &self,
        address: &EntityAddress,
    ) -> Result<(), shoal_storage::StorageError> {
        self.inner.reset_address(address).await
    }
    async fn clear_address(
        &self,
        address: &EntityAddress,
    ) -> Result<(), shoal_storage::StorageError> {
        self.inner.clear_address(address).await
    }
    async fn sweep(
        &self,
        older_than: Duration,
        limit: usize,
    ) -> Result<usize, shoal_storage::StorageError> {
        self.inner.sweep(older_than, limit).await
    }
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<MessageEvent> {
        self.inner.subscribe()
    }

    fn events_reach_other_processes(&self) -> bool {
        self.inner.events_reach_other_processes()
    }
}

// ---------------------------------------------------------------------------------------------
// Runners sharing runner storage and message storage.

struct Persisted {
    network: Arc<InProcessNetwork>,
    runners: Arc<dyn RunnerStorage>,
    messages: Arc<dyn MessageStorage>,
    next_port: u16,
    /// The SQLite file's directory (removed with the cluster).
    _dir: Option<tempfile::TempDir>,
}

impl Persisted {
    async fn new(backend: Backend) -> Self {
        init_logs();
        let mut dir = None;
        let (runners, messages): (Arc<dyn RunnerStorage>, Arc<dyn MessageStorage>) = match backend {
            Backend::Memory => {
                let memory = Arc::new(MemoryRunnerStorage::new());
                let messages = Arc::new(MemoryMessageStorage::new(memory.clone()));
                (memory, messages)
            }
            Backend::Sqlite => {
                let (tempdir, path) = common::sqlite_file();
                dir = Some(tempdir);
                let options = shoal_storage::StorageOptions::new()
                    .with_call_timeout(Duration::from_millis(450));
                let runners = shoal_storage::SqliteRunnerStorage::open_file(&path, options)
                    .await
                    .expect("sqlite runner storage");
                let messages = shoal_storage::SqliteMessageStorage::new(runners.inner())
                    .await
                    .expect("sqlite message storage");
                (Arc::new(runners), Arc::new(messages))
            }
            Backend::Postgres => {
                let url = common::database_url();
                let options = shoal_storage::StorageOptions::new()
                    .with_table_prefix(common::unique_prefix())
                    .with_call_timeout(Duration::from_millis(450));
                let runners = PostgresRunnerStorage::connect(&url, options)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("Postgres at {url} is required by this test (set DATABASE_URL): {e}")
                    });
                let messages = PostgresMessageStorage::new(runners.inner())
                    .await
                    .expect("message storage");
                (Arc::new(runners), Arc::new(messages))
            }
        };
        Persisted {
            network: InProcessNetwork::new(),
            runners,
            messages,
            next_port: 41_000,
            _dir: dir,
        }
    }

    fn settings() -> MessageSettings {
        MessageSettings {
            poll_interval: Duration::from_millis(200),
            reply_poll_interval: Duration::from_millis(50),
            registration_timeout: Duration::from_millis(300),
            ..MessageSettings::default()
        }
    }

    fn config(backend: Backend) -> ShardingConfig {
        config_for(backend)
            .default_call_timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    }

    async fn runner(&mut self, backend: Backend) -> Sharding {
        let storage = self.runners.clone();
        self.runner_on(backend, storage).await
    }

    /// A runner whose lease storage is `storage` (a faulty wrapper, say).
    async fn runner_on(&mut self, backend: Backend, storage: Arc<dyn RunnerStorage>) -> Sharding {
        self.next_port += 1;
        let address: RunnerAddress = format!("127.0.0.1:{}", self.next_port).parse().unwrap();
        Sharding::builder(Self::config(backend))
            .storage(storage)
            .message_storage(self.messages.clone())
            .message_settings(Self::settings())
            .in_process(&self.network)
            .runner(address)
            .entity(durable_definition())
            .entity(counter_definition())
            .entity(narrow_definition())
            .start()
            .await
            .expect("runner starts")
    }

    /// Puts `probe` between the runtimes started from now on and the message storage.
    fn probe(&mut self) -> Arc<Probe> {
        let probe = Probe::new(self.messages.clone());
        self.messages = probe.clone();
        probe
    }

    async fn client(&self, backend: Backend) -> Sharding {
        Sharding::builder(Self::config(backend))
            .storage(self.runners.clone())
            .message_storage(self.messages.clone())
            .message_settings(Self::settings())
            .in_process(&self.network)
            .client_only()
            .start()
            .await
            .expect("client starts")
    }

    /// Waits for the final reply of `request` in storage.
    async fn stored_reply(&self, request: Snowflake) -> ReplyFrame {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let replies = self.messages.replies_for(&[request]).await.unwrap();
            if let Some(frame) = replies.into_iter().find_map(|r| match r.kind {
                StoredReplyKind::Final(frame) => Some(frame),
                _ => None,
            }) {
                return frame;
            }
            assert!(Instant::now() < deadline, "no reply stored for {request}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn unique_id(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{test}-{nanos:x}")
}

/// Calls `record` on `id` from `sharding` in a task of its own, with a handler taking `work_ms`.
fn spawn_record(
    sharding: &Sharding,
    id: &str,
    work_ms: u64,
) -> tokio::task::JoinHandle<Result<String, CallError>> {
    let sharding = sharding.clone();
    let id = id.to_owned();
    tokio::spawn(async move {
        let record = Record {
            key: None,
            work_ms,
            at_ms: None,
        };
        sharding.client::<Durable>().call(&id, record).await
    })
}

async fn wait_holding(runner: &Sharding, count: usize) {
    eventually(
        Duration::from_secs(15),
        "the runner holds its shards",
        || runner.active_shards().len() >= count,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------

async fn a_request_sent_while_no_runner_is_up_is_answered_once_a_runner_starts(backend: Backend) {
    let mut cluster = Persisted::new(backend).await;
    let client = cluster.client(backend).await;
    let id = unique_id("nobody-up");
    let mut events = cluster.messages.subscribe();
    let call = spawn_record(&client, &id, 0);
    // The request is stored before anyone can run it.
    loop {
        match events.recv().await.unwrap() {
            MessageEvent::Saved { .. } => break,
            MessageEvent::Replied { .. } => {}
        }
    }
    assert!(runs(&id).is_empty());
    let runner = cluster.runner(backend).await;
    let reply = call.await.unwrap().expect("answered once a runner is up");
    assert_eq!(reply, runner.runner_address().unwrap().to_string());
    assert_eq!(finished_runs(&id), 1, "the handler ran exactly once");
    runner.shutdown().await;
    client.shutdown().await;
}

async fn a_runner_killed_mid_request_leaves_it_to_the_next_owner(backend: Backend) {
    let mut cluster = Persisted::new(backend).await;
    let a = cluster.runner(backend).await;
    wait_holding(&a, 60).await;
    let id = unique_id("killed");
    let call = spawn_record(&a, &id, 60_000);
    eventually(Duration::from_secs(10), "the handler started on a", || {
        runs(&id).len() == 1
    })
    .await;
    // A second runner waits; then `a` dies mid-request, holding its leases.
    let b = cluster.runner(backend).await;
    a.crash();
    drop(call);
    eventually(
        Duration::from_secs(20),
        "the request runs again on b",
        || runs(&id).len() == 2,
    )
    .await;
    let all = runs(&id);
    assert_eq!(&all[1].runner, b.runner_address().unwrap());
    assert!(!all[0].finished, "the first run died with its runner");
    b.shutdown().await;
}

async fn a_caller_on_another_runner_gets_the_reply_after_the_owner_dies(backend: Backend) {
    let mut cluster = Persisted::new(backend).await;
    let a = cluster.runner(backend).await;
    wait_holding(&a, 60).await;
    let client = cluster.client(backend).await;
    let id = unique_id("failover");
    let call = spawn_record(&client, &id, 3000);
    eventually(Duration::from_secs(10), "the handler started on a", || {
        runs(&id).len() == 1
    })
    .await;
    // The run on `a` outlasts starting `b`: it dies unfinished.
    let b = cluster.runner(backend).await;
    a.crash();
    let reply = call
        .await
        .unwrap()
        .expect("the caller gets the new owner's reply");
    assert_eq!(reply, b.runner_address().unwrap().to_string());
    assert_eq!(finished_runs(&id), 1, "exactly one run completed");
    b.shutdown().await;
    client.shutdown().await;
}

async fn a_duplicate_primary_key_returns_the_stored_reply(backend: Backend) {
    let mut cluster = Persisted::new(backend).await;
    let runner = cluster.runner(backend).await;
    let client = cluster.client(backend).await;
    let id = unique_id("dedupe");
    let keyed = |key: &str| Record {
        key: Some(key.to_owned()),
        work_ms: 0,
        at_ms: None,
    };
    let first = client
        .client::<Durable>()
        .call(&id, keyed("k1"))
        .await
        .unwrap();
    let again = runner
        .client::<Durable>()
        .call(&id, keyed("k1"))
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(
        finished_runs(&id),
        1,
        "a duplicate does not run the handler"
    );
    // Keys of any length.
    let long = "k".repeat(1000);
    client
        .client::<Durable>()
        .call(&id, keyed(&long))
        .await
        .unwrap();
    client
        .client::<Durable>()
        .call(&id, keyed(&long))
        .await
        .unwrap();
    assert_eq!(finished_runs(&id), 2);
    client
        .client::<Durable>()
        .call(&id, keyed("k2"))
        .await
        .unwrap();
    assert_eq!(finished_runs(&id), 3);
    runner.shutdown().await;
    client.shutdown().await;
}

async fn volatile_messages_are_never_stored(backend: Backend) {
    let mut cluster = Persisted::new(backend).await;
    let runner = cluster.runner(backend).await;
    wait_holding(&runner, 60).await;
    let id = unique_id("volatile");
    for _ in 0..5 {
        runner
            .client::<common::Counter>()
            .call(&id, Increment { by: 1, work_ms: 0 })
            .await
            .unwrap();
    }
    let shards: Vec<ShardId> = runner.active_shards();
    let claim = Claim {
        by: "127.0.0.1:1".parse().unwrap(),
        duration: Duration::from_secs(1),
    };
    let stored = cluster
        .messages
        .claim_unprocessed(&shards, 100, &claim)
        .await
        .unwrap();
    assert!(
        stored.is_empty(),
        "volatile messages were stored: {stored:?}"
    );
    runner.shutdown().await;
}

async fn a_scheduled_message_runs_at_its_time(backend: Backend) {
    let mut cluster = Persisted::new(backend).await;
    let runner = cluster.runner(backend).await;
    wait_holding(&runner, 60).await;
    let id = unique_id("scheduled");
    let at = SystemTime::now() + Duration::from_millis(400);
    let at_ms = at.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let reply = runner
        .client::<Durable>()
        .call(&id, Record::at(at_ms))
        .await
        .unwrap();
    assert_eq!(reply, runner.runner_address().unwrap().to_string());
    let run = &runs(&id)[0];
    let started_ms = run.started.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(
        started_ms >= at_ms,
        "ran {} ms before its time",
        at_ms - started_ms
    );
    runner.shutdown().await;
}

fn stored_request(
    shard: ShardId,
    entity_type: &str,
    id: &str,
    payload: &'static [u8],
) -> PersistedRequest {
    static IDS: LazyLock<SnowflakeGenerator> =
        LazyLock::new(|| SnowflakeGenerator::new(MachineId(1023)));
    PersistedRequest {
        id: IDS.next_id().unwrap(),
        address: EntityAddress::new(shard, entity_type.parse().unwrap(), id.parse().unwrap()),
        tag: Tag::new("record").unwrap(),
        payload: Bytes::from_static(payload),
        headers: Headers::new(),
        key: None,
        deliver_at: None,
        streaming: false,
        uninterruptible: false,
    }
}

async fn an_undecodable_stored_message_is_answered_and_blocks_nothing(backend: Backend) {
    let mut cluster = Persisted::new(backend).await;
    let runner = cluster.runner(backend).await;
    wait_holding(&runner, 60).await;
    let id = unique_id("garbage");
    let shard = runner.shard_of::<Durable>(&id.parse().unwrap());
    let bad = stored_request(shard, "durable", &id, b"\xff not json");
    cluster.messages.save_request(&bad, None).await.unwrap();
    match cluster.stored_reply(bad.id).await {
        ReplyFrame::Failure(failure) => assert_eq!(failure.code, ErrorCode::MalformedMessage),
        other => panic!("expected a failure, got {other:?}"),
    }
    // The entity still works.
    runner
        .client::<Durable>()
        .call(&id, Record::plain())
        .await
        .unwrap();
    assert_eq!(finished_runs(&id), 1);
    runner.shutdown().await;
}

async fn a_message_for_an_unregistered_type_is_held_then_answered(backend: Backend) {
    let mut cluster = Persisted::new(backend).await;
    let runner = cluster.runner(backend).await;
    wait_holding(&runner, 60).await;
    let shard = runner.shard_in(
        &shoal_protocol::ShardGroup::default_group(),
        &"x".parse().unwrap(),
    );
    let ghost = stored_request(shard, "ghost", "x", b"{}");
    cluster.messages.save_request(&ghost, None).await.unwrap();
    match cluster.stored_reply(ghost.id).await {
        ReplyFrame::Failure(failure) => assert_eq!(failure.code, ErrorCode::UnknownEntityType),
        other => panic!("expected a failure, got {other:?}"),
    }
    runner.shutdown().await;
}

async fn without_message_storage_a_persisted_send_fails_clearly(backend: Backend) {
    let cluster = Persisted::new(backend).await;
    let client = Sharding::builder(Persisted::config(backend))
        .storage(cluster.runners.clone())
        .in_process(&cluster.network)
        .client_only()
        .start()
        .await
        .unwrap();
    let error = client
        .client::<Durable>()
        .call_with(
            "x",
            Record::plain(),
            CallOptions::timeout(Duration::from_secs(1)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error.kind(), CallErrorKind::Persistence)
            && error.message().contains("message storage"),
        "{error:?}"
    );
    client.shutdown().await;
}

/// Streams 0..40 to a caller on another runner; the owner dies after 10 numbers; the next owner
/// resumes. The caller gets every number once, in order, and one end.
async fn stream_resumes_after_its_owner_is_killed(backend: Backend, seek: bool) {
    use futures::StreamExt;

    let mut cluster = Persisted::new(backend).await;
    let a = cluster.runner(backend).await;
    wait_holding(&a, 60).await;
    let client = cluster.client(backend).await;
    let id = unique_id(if seek { "stream-seek" } else { "stream" });
    let msg = Numbers {
        count: 40,
        stall_after: 10,
        seek,
    };
    let mut stream = client
        .client::<Durable>()
        .stream_with(&id, msg, CallOptions::timeout(Duration::from_secs(20)))
        .await
        .expect("the stream is stored and started");
    let mut received = Vec::new();
    while received.len() < 10 {
        let item = stream.next().await.expect("an item").expect("no error");
        received.push(item);
    }
    let b = cluster.runner(backend).await;
    a.crash();
    while let Some(item) = stream.next().await {
        received.push(item.expect("the stream goes on after its owner died"));
    }
    assert_eq!(
        received,
        (0..40).collect::<Vec<u64>>(),
        "every number once, in order"
    );
    let stream_runs = STREAM_RUNS.lock().get(&id).cloned().unwrap_or_default();
    assert_eq!(stream_runs.len(), 2, "{stream_runs:?}");
    assert_eq!(&stream_runs[0].0, a.runner_address().unwrap());
    assert_eq!(stream_runs[0].1, 0);
    assert_eq!(&stream_runs[1].0, b.runner_address().unwrap());
    assert_eq!(
        stream_runs[1].1, 10,
        "the second run resumes after the 10 stored numbers"
    );
    b.shutdown().await;
    client.shutdown().await;
}

async fn a_persisted_stream_resumes_after_its_owner_is_killed(backend: Backend) {
    stream_resumes_after_its_owner_is_killed(backend, false).await;
}

async fn a_persisted_stream_resumes_where_a_seeking_handler_continues(backend: Backend) {
    stream_resumes_after_its_owner_is_killed(backend, true).await;
}

async fn a_caller_interrupts_a_persisted_request(backend: Backend) {
    let mut cluster = Persisted::new(backend).await;
    let a = cluster.runner(backend).await;
    wait_holding(&a, 60).await;
    let client = cluster.client(backend).await;
    let durable = client.client::<Durable>();
    let interrupted = |frame: &ReplyFrame| matches!(frame, ReplyFrame::Failure(failure) if failure.code == ErrorCode::Interrupted);

    // Running: the handler is stopped and the stored reply is `Interrupted`.
    let id = unique_id("interrupt-running");
    let running = Record {
        key: None,
        work_ms: 60_000,
        at_ms: None,
    };
    let request = durable.submit(&id, running).await.expect("stored");
    eventually(Duration::from_secs(10), "the handler started", || {
        runs(&id).len() == 1
    })
    .await;
    durable
        .interrupt::<Record>(&id, request)
        .await
        .expect("the interrupt is stored");
    let reply = cluster.stored_reply(request).await;
    assert!(interrupted(&reply), "{reply:?}");
    assert!(!runs(&id)[0].finished, "the handler was stopped");

    // Not started yet (scheduled for later): answered `Interrupted` without running.
    let later = unique_id("interrupt-queued");
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 60_000;
    let scheduled = Record {
        key: None,
        work_ms: 0,
        at_ms: Some(at_ms),
    };
    let request = durable.submit(&later, scheduled).await.expect("stored");
    durable
        .interrupt::<Record>(&later, request)
        .await
        .expect("the interrupt is stored");
    let reply = cluster.stored_reply(request).await;
    assert!(interrupted(&reply), "{reply:?}");
    assert!(runs(&later).is_empty(), "it never ran");

    // Volatile messages cannot be submitted or interrupted by id.
    let counters = client.client::<common::Counter>();
    let error = counters
        .interrupt::<Increment>("c", request)
        .await
        .unwrap_err();
    assert!(
        matches!(error.kind(), CallErrorKind::NotSupported { .. }),
        "{error:?}"
    );
    let error = counters
        .submit("c", Increment { by: 1, work_ms: 0 })
        .await
        .unwrap_err();
    assert!(
        matches!(error.kind(), CallErrorKind::NotSupported { .. }),
        "{error:?}"
    );
    a.shutdown().await;
    client.shutdown().await;
}

fn in_ms(ms: u64) -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + ms
}

/// Anything that reaches a runner's port can push a `persisted` request with a victim's id. The
/// owner must run what storage holds for that id, never what the pusher says.
async fn a_forged_push_runs_only_what_storage_holds(backend: Backend) {
    let mut cluster = Persisted::new(backend).await;
    let a = cluster.runner(backend).await;
    wait_holding(&a, 60).await;
    let client = cluster.client(backend).await;
    let id = unique_id("forged");
    let echo = client.client::<Durable>();
    let real = Echo {
        text: "real".to_owned(),
        at_ms: Some(in_ms(1500)),
    };
    let request = echo.submit(&id, real).await.expect("stored");
    let entity = id.parse().unwrap();
    let forged = shoal_protocol::Request {
        id: request,
        address: EntityAddress::new(
            a.shard_in(&shoal_protocol::ShardGroup::default_group(), &entity),
            "durable".parse().unwrap(),
            entity,
        ),
        tag: "echo".parse().unwrap(),
        payload: Bytes::from_static(br#"{"text":"forged","at_ms":null}"#),
        headers: Headers::new(),
        persisted: true,
        timeout: Some(Duration::from_secs(5)),
        streaming: false,
    };
    let answer = a.handle_request(forged).await;
    assert!(
        !matches!(&answer, ReplyFrame::Value(v) if v.as_ref() == br#""forged""#),
        "the owner ran the pushed payload: {answer:?}"
    );
    match cluster.stored_reply(request).await {
        ReplyFrame::Value(v) => assert_eq!(v.as_ref(), br#""real""#),
        other => panic!("expected the real request's reply, got {other:?}"),
    }
    a.shutdown().await;
    client.shutdown().await;
}

/// An interrupt names a request by id; storage knows that request's entity and whether it may be
/// interrupted, whatever message type the caller names.
async fn interrupts_are_checked_against_the_stored_request(backend: Backend) {
    let mut cluster = Persisted::new(backend).await;
    let a = cluster.runner(backend).await;
    wait_holding(&a, 60).await;
    let client = cluster.client(backend).await;
    let durable = client.client::<Durable>();

    // Uninterruptible, interrupted "as" an interruptible message: refused, and it finishes.
    let id = unique_id("careful");
    let request = durable
        .submit(&id, Careful { work_ms: 500 })
        .await
        .expect("stored");
    eventually(Duration::from_secs(10), "the handler started", || {
        runs(&id).len() == 1
    })
    .await;
    let refused = durable.interrupt::<Record>(&id, request).await;
    assert!(
        refused.is_err(),
        "interrupting an uninterruptible request: {refused:?}"
    );
    match cluster.stored_reply(request).await {
        ReplyFrame::Value(_) => {}
        other => panic!("the uninterruptible request was not answered normally: {other:?}"),
    }
    assert!(runs(&id)[0].finished);

    // An interrupt naming another entity does not settle the request.
    let victim = unique_id("victim");
    let scheduled = Echo {
        text: "victim".to_owned(),
        at_ms: Some(in_ms(1000)),
    };
    let request = durable.submit(&victim, scheduled).await.expect("stored");
    let wrong = durable
        .interrupt::<Record>(&unique_id("someone-else"), request)
        .await;
    assert!(
        wrong.is_err(),
        "an interrupt naming another entity: {wrong:?}"
    );
    match cluster.stored_reply(request).await {
        ReplyFrame::Value(v) => assert_eq!(v.as_ref(), br#""victim""#),
        other => panic!("the request was settled by another entity's interrupt: {other:?}"),
    }
    a.shutdown().await;
    client.shutdown().await;
}

/// A full mailbox must not turn into a claim, fail, reset, claim loop at database speed.
async fn a_full_mailbox_does_not_make_the_owner_spin_on_claims(backend: Backend) {
    let mut cluster = Persisted::new(backend).await;
    let probe = cluster.probe();
    let a = cluster.runner(backend).await;
    wait_holding(&a, 60).await;
    let client = cluster.client(backend).await;
    let narrow = client.client::<Narrow>();
    let mut requests = Vec::new();
    for _ in 0..200 {
        requests.push(narrow.submit("one", Slow).await.expect("stored"));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let replies = cluster.messages.replies_for(&requests).await.unwrap();
        let done = replies
            .iter()
            .filter(|r| matches!(r.kind, StoredReplyKind::Final(_)))
            .count();
        if done == requests.len() {
            break;
        }
        assert!(Instant::now() < deadline, "{done} of 200 answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let claimed = probe.claimed.load(std::sync::atomic::Ordering::SeqCst);
    let resets = probe.resets.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        claimed + resets <= 300,
        "200 deliveries took {claimed} claims and {resets} claim resets"
    );
    a.shutdown().await;
    client.shutdown().await;
}

/// A save that times out may still land: its caller must not be told "not stored, safe to retry".
async fn a_save_that_times_out_reports_an_unknown_outcome(backend: Backend) {
    let mut cluster = Persisted::new(backend).await;
    let probe = cluster.probe();
    let a = cluster.runner(backend).await;
    wait_holding(&a, 60).await;
    probe
        .hang_saves
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let error = a
        .client::<Durable>()
        .call(&unique_id("unknown"), Record::plain())
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("outcome is unknown"),
        "a timed-out save must report an unknown outcome: {error}"
    );
    a.shutdown().await;
}

/// The owner freezes (server and lease renewals) while a persisted call's push waits for its
/// answer: once the shard is taken over, the stored request is pushed to the new owner and
/// answered there, instead of the caller waiting out its 60 s deadline on the frozen one.
async fn a_persisted_call_to_a_frozen_owner_is_answered_by_the_next_owner(backend: Backend) {
    let mut cluster = Persisted::new(backend).await;
    let frozen_storage = Arc::new(FaultyRunnerStorage::new(cluster.runners.clone()));
    let a = cluster.runner_on(backend, frozen_storage.clone()).await;
    wait_holding(&a, 60).await;
    let b = cluster.runner(backend).await;
    eventually(Duration::from_secs(15), "a and b share the shards", || {
        a.active_shards().len() == 30 && b.active_shards().len() == 30
    })
    .await;
    let client = cluster.client(backend).await;
    let id = (0..10_000)
        .map(|i| format!("{}-{i}", unique_id("frozen")))
        .find(|id| {
            a.active_shards()
                .contains(&a.shard_of::<Durable>(&id.as_str().try_into().unwrap()))
        })
        .unwrap();
    let frozen_at = a.runner_address().unwrap().clone();
    cluster.network.freeze(&frozen_at);
    let caller = client.clone();
    let call_id = id.clone();
    let call = tokio::spawn(async move {
        let record = Record {
            key: None,
            work_ms: 0,
            at_ms: None,
        };
        caller
            .client::<Durable>()
            .call_with(
                &call_id,
                record,
                CallOptions::timeout(Duration::from_secs(60)),
            )
            .await
    });
    frozen_storage.set_fault(Fault::Hang);
    let reply = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the call ends long before its deadline")
        .unwrap()
        .expect("the new owner answers");
    // Mostly `b`; `a` may have run it from storage in the moment between the freeze of its
    // server and the stop of its entities (in-process, only the server freezes).
    assert!(
        [&a, &b]
            .iter()
            .any(|r| reply == r.runner_address().unwrap().to_string()),
        "{reply}"
    );
    assert_eq!(finished_runs(&id), 1, "exactly one run completed");
    frozen_storage.set_fault(Fault::None);
    cluster.network.thaw(&frozen_at);
    client.shutdown().await;
    a.crash();
    b.shutdown().await;
}

/// Whether request `id` has its final reply stored.
async fn answered(messages: &dyn MessageStorage, id: Snowflake) -> bool {
    messages
        .replies_for(&[id])
        .await
        .unwrap()
        .iter()
        .any(|reply| matches!(reply.kind, StoredReplyKind::Final(_)))
}

/// The retention sweep runs on its own, round after round, a few rows per call: processed
/// messages older than the retention go with their replies; recent ones, and unprocessed ones
/// (a message scheduled for later), stay.
async fn the_sweeper_removes_old_processed_messages_and_keeps_the_rest(backend: Backend) {
    let mut cluster = Persisted::new(backend).await;
    cluster.next_port += 1;
    let address: RunnerAddress = format!("127.0.0.1:{}", cluster.next_port).parse().unwrap();
    let retention = Duration::from_secs(2);
    let runner = Sharding::builder(Persisted::config(backend))
        .storage(cluster.runners.clone())
        .message_storage(cluster.messages.clone())
        .message_settings(MessageSettings {
            retention,
            sweep_interval: Duration::from_millis(50),
            sweep_batch: 2,
            ..Persisted::settings()
        })
        .in_process(&cluster.network)
        .runner(address)
        .entity(durable_definition())
        .start()
        .await
        .unwrap();
    wait_holding(&runner, 60).await;
    let durable = runner.client::<Durable>();
    let messages = cluster.messages.clone();
    let mut old = Vec::new();
    for _ in 0..5 {
        old.push(
            durable
                .submit(&unique_id("swept"), Record::plain())
                .await
                .unwrap(),
        );
    }
    eventually_async(
        Duration::from_secs(10),
        "the old requests are answered",
        || {
            let (messages, old) = (messages.clone(), old.clone());
            async move {
                for id in old {
                    if !answered(&*messages, id).await {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    // Waiting for time to pass (the point of the test), not for an event: they age past the
    // retention.
    tokio::time::sleep(retention + Duration::from_millis(200)).await;
    let young = durable
        .submit(&unique_id("kept"), Record::plain())
        .await
        .unwrap();
    eventually_async(
        Duration::from_secs(10),
        "the young request is answered",
        || {
            let messages = messages.clone();
            async move { answered(&*messages, young).await }
        },
    )
    .await;
    let in_an_hour = SystemTime::now() + Duration::from_secs(3600);
    let later = durable
        .submit(
            &unique_id("later"),
            Record::at(in_an_hour.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64),
        )
        .await
        .unwrap();
    eventually_async(
        Duration::from_secs(10),
        "the old requests are swept",
        || {
            let (messages, old) = (messages.clone(), old.clone());
            async move {
                for id in old {
                    if !messages.replies_for(&[id]).await.unwrap().is_empty() {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    assert!(
        answered(&*messages, young).await,
        "a recent request was swept"
    );
    assert!(
        messages.pending_request(later).await.unwrap().is_some(),
        "an unprocessed request was swept"
    );
    runner.shutdown().await;
}

/// Runners in separate processes on one SQLite file do not see each other's storage events: a
/// message one process schedules for a shard another owns reaches the owner's poller through the
/// runner transport, so it runs at its time and not at the owner's next poll (an hour away here).
/// (Each runtime opens the file itself, as separate processes would.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_a_message_scheduled_by_another_process_runs_at_its_time() {
    init_logs();
    let (_dir, path) = common::sqlite_file();
    let open = || async {
        let options =
            shoal_storage::StorageOptions::new().with_call_timeout(Duration::from_millis(450));
        let runners = shoal_storage::SqliteRunnerStorage::open_file(&path, options)
            .await
            .expect("sqlite runner storage");
        let messages = shoal_storage::SqliteMessageStorage::new(runners.inner())
            .await
            .expect("sqlite message storage");
        (Arc::new(runners), Arc::new(messages))
    };
    let network = InProcessNetwork::new();
    let settings = MessageSettings {
        poll_interval: Duration::from_secs(3600),
        ..Persisted::settings()
    };
    let (runners, messages) = open().await;
    let owner = Sharding::builder(Persisted::config(Backend::Sqlite))
        .storage(runners)
        .message_storage(messages)
        .message_settings(settings.clone())
        .network(network.endpoint("127.0.0.1:41901".parse().unwrap()))
        .entity(durable_definition())
        .start()
        .await
        .unwrap();
    wait_holding(&owner, 60).await;
    let (runners, messages) = open().await;
    let caller = Sharding::builder(Persisted::config(Backend::Sqlite))
        .storage(runners)
        .message_storage(messages)
        .message_settings(settings)
        .network(network.client_endpoint())
        .start()
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the caller routes to the owner",
        || caller.cluster_view().leases.len() == 60,
    )
    .await;
    let id = unique_id("scheduled-elsewhere");
    let at = SystemTime::now() + Duration::from_millis(300);
    let at_ms = at.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let reply = caller
        .client::<Durable>()
        .call(&id, Record::at(at_ms))
        .await
        .unwrap();
    assert_eq!(reply, owner.runner_address().unwrap().to_string());
    let started = runs(&id)[0].started;
    assert!(started >= at, "ran before its time");
    caller.shutdown().await;
    owner.shutdown().await;
}

on_every_backend!(
    a_persisted_call_to_a_frozen_owner_is_answered_by_the_next_owner,
    a_forged_push_runs_only_what_storage_holds,
    interrupts_are_checked_against_the_stored_request,
    a_full_mailbox_does_not_make_the_owner_spin_on_claims,
    a_save_that_times_out_reports_an_unknown_outcome,
    a_caller_interrupts_a_persisted_request,
    a_persisted_stream_resumes_after_its_owner_is_killed,
    a_persisted_stream_resumes_where_a_seeking_handler_continues,
    a_request_sent_while_no_runner_is_up_is_answered_once_a_runner_starts,
    a_runner_killed_mid_request_leaves_it_to_the_next_owner,
    a_caller_on_another_runner_gets_the_reply_after_the_owner_dies,
    a_duplicate_primary_key_returns_the_stored_reply,
    volatile_messages_are_never_stored,
    a_scheduled_message_runs_at_its_time,
    an_undecodable_stored_message_is_answered_and_blocks_nothing,
    a_message_for_an_unregistered_type_is_held_then_answered,
    without_message_storage_a_persisted_send_fails_clearly,
    the_sweeper_removes_old_processed_messages_and_keeps_the_rest,
);
