//! Shared fixtures for the sharding integration tests: test entities, cluster helpers and
//! storage backends.

#![allow(
    dead_code,
    unused_imports,
    unused_macros,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use shoal_protocol::{RunnerAddress, ShardId};
use shoal_sharding::{
    ChunkSink, Entity, EntityContext, EntityDefinition, Handler, HandlerError, InProcessNetwork,
    Message, Sharding, ShardingConfig, ShardingConfigBuilder, StreamHandler,
};
use shoal_storage::{MemoryRunnerStorage, RunnerStorage};
use tokio::time::Instant;

/// Settings that make leases move quickly in tests.
pub fn fast_config() -> ShardingConfigBuilder {
    ShardingConfig::builder()
        .shards_per_group(60)
        .lease_ttl(Duration::from_millis(900))
        .lease_refresh_interval(Duration::from_millis(100))
        .assignment_refresh_interval(Duration::from_millis(50))
        .storage_timeout(Duration::from_millis(200))
        .send_retry_interval(Duration::from_millis(20))
        .default_call_timeout(Duration::from_secs(10))
        .entity_termination_timeout(Duration::from_secs(2))
        .defect_backoff(Duration::from_millis(10))
}

pub use shoal_test_support::{eventually, eventually_async};

// ---------------------------------------------------------------------------------------------
// A counter entity that logs what it does.

/// Records handler invocations: which runner ran which entity, when.
#[derive(Debug, Default)]
pub struct Journal {
    pub entries: Mutex<Vec<JournalEntry>>,
    pub activations: AtomicUsize,
    pub deactivations: AtomicUsize,
}

#[derive(Debug, Clone)]
pub struct JournalEntry {
    pub runner: RunnerAddress,
    pub entity: String,
    pub shard: ShardId,
    pub start: Instant,
    pub end: Instant,
    pub tag: &'static str,
}

static JOURNALS: std::sync::LazyLock<Mutex<HashMap<String, Arc<Journal>>>> =
    std::sync::LazyLock::new(|| Mutex::new(HashMap::new()));

/// Every test gets its own journal, found through a key embedded in entity ids (`key/id`).
pub fn journal(key: &str) -> Arc<Journal> {
    JOURNALS.lock().entry(key.to_owned()).or_default().clone()
}

fn journal_of(ctx: &EntityContext) -> Arc<Journal> {
    let id = ctx.address().entity_id.as_str();
    let key = id.split('/').next().unwrap_or(id);
    journal(key)
}

pub struct Counter {
    value: i64,
    journal: Arc<Journal>,
}

impl Entity for Counter {
    const TYPE: &'static str = "counter";
    type State = ();

    async fn activate(ctx: &EntityContext, _: &Arc<()>) -> Result<Self, HandlerError> {
        let journal = journal_of(ctx);
        journal.activations.fetch_add(1, Ordering::SeqCst);
        Ok(Counter { value: 0, journal })
    }

    async fn deactivate(&mut self, _ctx: &EntityContext) {
        self.journal.deactivations.fetch_add(1, Ordering::SeqCst);
    }
}

impl Counter {
    fn log(&self, ctx: &EntityContext, tag: &'static str, start: Instant) {
        self.journal.entries.lock().push(JournalEntry {
            runner: ctx.runner_address().cloned().expect("runner"),
            entity: ctx.address().entity_id.to_string(),
            shard: ctx.address().shard.clone(),
            start,
            end: Instant::now(),
            tag,
        });
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Increment {
    pub by: i64,
    /// How long the handler takes.
    #[serde(default)]
    pub work_ms: u64,
}

impl Message for Increment {
    const TAG: &'static str = "increment";
    type Reply = i64;
}

impl Handler<Increment> for Counter {
    async fn handle(&mut self, msg: Increment, ctx: &EntityContext) -> Result<i64, HandlerError> {
        let start = Instant::now();
        if msg.work_ms > 0 {
            tokio::time::sleep(Duration::from_millis(msg.work_ms)).await;
        }
        self.value += msg.by;
        self.log(ctx, "increment", start);
        Ok(self.value)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Get;

impl Message for Get {
    const TAG: &'static str = "get";
    type Reply = i64;
}

impl Handler<Get> for Counter {
    async fn handle(&mut self, _: Get, ctx: &EntityContext) -> Result<i64, HandlerError> {
        self.log(ctx, "get", Instant::now());
        Ok(self.value)
    }
}

/// Appends to a list; used to check FIFO order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Append {
    pub item: u32,
}

impl Message for Append {
    const TAG: &'static str = "append";
    type Reply = Vec<u32>;
}

pub struct Lists {
    items: Vec<u32>,
}

impl Entity for Lists {
    const TYPE: &'static str = "lists";
    type State = ();

    async fn activate(_: &EntityContext, _: &Arc<()>) -> Result<Self, HandlerError> {
        Ok(Lists { items: Vec::new() })
    }
}

impl Handler<Append> for Lists {
    async fn handle(&mut self, msg: Append, _: &EntityContext) -> Result<Vec<u32>, HandlerError> {
        // Yield so that interleaving would show if requests ran concurrently.
        tokio::task::yield_now().await;
        self.items.push(msg.item);
        Ok(self.items.clone())
    }
}

/// Fails on request: `Crash { fatal: true }` is a defect, `fatal: false` a plain failure,
/// `panic: true` panics. The first `times` calls misbehave (counted per journal key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Crash {
    pub fatal: bool,
    pub panic: bool,
    pub times: usize,
}

impl Message for Crash {
    const TAG: &'static str = "crash";
    type Reply = usize;
}

impl Handler<Crash> for Counter {
    async fn handle(&mut self, msg: Crash, ctx: &EntityContext) -> Result<usize, HandlerError> {
        let attempt = self
            .journal
            .entries
            .lock()
            .iter()
            .filter(|e| e.tag == "crash")
            .count();
        self.log(ctx, "crash", Instant::now());
        if attempt < msg.times {
            if msg.panic {
                panic!("test panic (attempt {attempt})");
            }
            return Err(if msg.fatal {
                HandlerError::fatal(format!("fatal failure (attempt {attempt})"))
            } else {
                HandlerError::failed(format!("plain failure (attempt {attempt})"))
            });
        }
        Ok(attempt)
    }
}

/// Streams `count` numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Count {
    pub count: u32,
}

impl Message for Count {
    const TAG: &'static str = "count";
    type Reply = u32;
}

impl StreamHandler<Count> for Counter {
    async fn handle_stream(
        &mut self,
        msg: Count,
        _ctx: &EntityContext,
        out: &mut ChunkSink<u32>,
    ) -> Result<(), HandlerError> {
        for i in 0..msg.count {
            out.send(i).await?;
        }
        Ok(())
    }
}

pub fn counter_definition() -> EntityDefinition<Counter> {
    EntityDefinition::<Counter>::new()
        .handle::<Increment>()
        .handle::<Get>()
        .handle::<Crash>()
        .stream::<Count>()
}

pub fn lists_definition() -> EntityDefinition<Lists> {
    EntityDefinition::<Lists>::new().handle::<Append>()
}

// ---------------------------------------------------------------------------------------------
// Clusters.

/// Which runner storage a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    /// A SQLite file in a temporary directory, shared by the test's runners.
    Sqlite,
    Postgres,
}

/// A SQLite database file in a fresh temporary directory (kept while the directory lives).
pub fn sqlite_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shoal.db");
    (dir, path)
}

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A table prefix no other test (or test run) uses, so tests share the database safely.
pub fn unique_prefix() -> shoal_storage::TablePrefix {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    shoal_storage::TablePrefix::new(&format!(
        "sh{}_{:x}_{n}",
        std::process::id(),
        nanos & 0xff_ffff_ffff
    ))
    .unwrap()
}

/// Settings that make leases move quickly, with room for a database round trip on a loaded
/// machine when the storage is Postgres.
pub fn config_for(backend: Backend) -> ShardingConfigBuilder {
    match backend {
        Backend::Memory => fast_config(),
        Backend::Sqlite | Backend::Postgres => fast_config()
            .lease_ttl(Duration::from_millis(1500))
            .lease_refresh_interval(Duration::from_millis(150))
            .storage_timeout(Duration::from_millis(500)),
    }
}

/// A set of runners in one process on one in-process network.
pub struct Cluster {
    pub network: Arc<InProcessNetwork>,
    pub storage: Arc<dyn RunnerStorage>,
    pub memory: Option<Arc<MemoryRunnerStorage>>,
    next_port: u16,
    /// The SQLite file's directory (removed with the cluster).
    _dir: Option<tempfile::TempDir>,
}

pub fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_TEST_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

impl Cluster {
    pub async fn new(backend: Backend) -> Self {
        init_logs();
        match backend {
            Backend::Memory => {
                let memory = Arc::new(MemoryRunnerStorage::new());
                Self {
                    network: InProcessNetwork::new(),
                    storage: memory.clone(),
                    memory: Some(memory),
                    next_port: 40_000,
                    _dir: None,
                }
            }
            Backend::Sqlite => {
                let (dir, path) = sqlite_file();
                let options = shoal_storage::StorageOptions::new()
                    .with_call_timeout(Duration::from_millis(450));
                let storage = shoal_storage::SqliteRunnerStorage::open_file(&path, options)
                    .await
                    .unwrap();
                Self {
                    network: InProcessNetwork::new(),
                    storage: Arc::new(storage),
                    memory: None,
                    next_port: 40_000,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let url = database_url();
                let options = shoal_storage::StorageOptions::new()
                    .with_table_prefix(unique_prefix())
                    .with_call_timeout(Duration::from_millis(450));
                let storage = shoal_storage::PostgresRunnerStorage::connect(&url, options)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("Postgres at {url} is required by this test (set DATABASE_URL): {e}")
                    });
                Self {
                    network: InProcessNetwork::new(),
                    storage: Arc::new(storage),
                    memory: None,
                    next_port: 40_000,
                    _dir: None,
                }
            }
        }
    }

    pub fn next_address(&mut self) -> RunnerAddress {
        self.next_port += 1;
        format!("127.0.0.1:{}", self.next_port).parse().unwrap()
    }

    /// Starts a runner with the counter and lists entities.
    pub async fn runner(&mut self, config: ShardingConfig) -> Sharding {
        let address = self.next_address();
        self.runner_at(address, config, self.storage.clone()).await
    }

    pub async fn runner_at(
        &self,
        address: RunnerAddress,
        config: ShardingConfig,
        storage: Arc<dyn RunnerStorage>,
    ) -> Sharding {
        Sharding::builder(config)
            .storage(storage)
            .in_process(&self.network)
            .runner(address)
            .entity(counter_definition())
            .entity(lists_definition())
            .start()
            .await
            .expect("runner starts")
    }

    pub async fn client(&self, config: ShardingConfig) -> Sharding {
        Sharding::builder(config)
            .storage(self.storage.clone())
            .in_process(&self.network)
            .client_only()
            .start()
            .await
            .expect("client starts")
    }
}

/// Waits until the runners together hold every shard, each exactly once, split evenly (within
/// one shard).
pub async fn wait_balanced(runners: &[&Sharding], shards: usize) {
    eventually(
        Duration::from_secs(15),
        "every shard held exactly once, evenly",
        || {
            let mut seen = std::collections::HashSet::new();
            let mut counts = Vec::new();
            for r in runners {
                let held = r.active_shards();
                counts.push(held.len());
                seen.extend(held);
            }
            let total: usize = counts.iter().sum();
            let even = counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0) <= 1;
            total == shards && seen.len() == shards && even
        },
    )
    .await;
}

/// Runs each named `async fn(Backend)` test once on memory, once on a SQLite file and once on
/// Postgres storage (`memory::name`, `sqlite::name` and `postgres::name`).
macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::Memory).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::Postgres).await;
                }
            )*
        }
    };
}
