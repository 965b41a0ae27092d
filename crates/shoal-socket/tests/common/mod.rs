//! Fixtures for transport tests: a counter entity, runners in their own tokio runtimes, log
//! capture.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use shoal_sharding::{
    Entity, EntityContext, EntityDefinition, Handler, HandlerError, Message, ShardingConfig,
    ShardingConfigBuilder,
};
use shoal_socket::{ListenAddress, ServeOptions, SocketConfig, SocketRunner};
use shoal_storage::RunnerStorage;

pub struct Counter {
    value: i64,
}

impl Entity for Counter {
    const TYPE: &'static str = "counter";
    type State = ();
    async fn activate(_: &EntityContext, _: &Arc<()>) -> Result<Self, HandlerError> {
        Ok(Counter { value: 0 })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Increment {
    pub by: i64,
    #[serde(default)]
    pub pad: String,
}

impl Message for Increment {
    const TAG: &'static str = "increment";
    type Reply = i64;
}

impl Handler<Increment> for Counter {
    async fn handle(&mut self, msg: Increment, _: &EntityContext) -> Result<i64, HandlerError> {
        self.value += msg.by;
        Ok(self.value)
    }
}

/// Which runner served a call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WhoAmI;

impl Message for WhoAmI {
    const TAG: &'static str = "who_am_i";
    type Reply = String;
}

impl Handler<WhoAmI> for Counter {
    async fn handle(&mut self, _: WhoAmI, ctx: &EntityContext) -> Result<String, HandlerError> {
        Ok(ctx
            .runner_address()
            .map(ToString::to_string)
            .unwrap_or_default())
    }
}

/// Blocks the runner's only worker thread, as a frozen process would: nothing on that runner
/// answers meanwhile.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Freeze {
    pub ms: u64,
}

impl Message for Freeze {
    const TAG: &'static str = "freeze";
    type Reply = ();
}

impl Handler<Freeze> for Counter {
    async fn handle(&mut self, msg: Freeze, _: &EntityContext) -> Result<(), HandlerError> {
        std::thread::sleep(Duration::from_millis(msg.ms));
        Ok(())
    }
}

/// Answers with a string of `len` bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Echo {
    pub len: usize,
}

impl Message for Echo {
    const TAG: &'static str = "echo";
    type Reply = String;
}

impl Handler<Echo> for Counter {
    async fn handle(&mut self, msg: Echo, _: &EntityContext) -> Result<String, HandlerError> {
        Ok("y".repeat(msg.len))
    }
}

/// Takes its time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Slow {
    pub ms: u64,
}

impl Message for Slow {
    const TAG: &'static str = "slow";
    type Reply = ();
}

impl Handler<Slow> for Counter {
    async fn handle(&mut self, msg: Slow, _: &EntityContext) -> Result<(), HandlerError> {
        tokio::time::sleep(Duration::from_millis(msg.ms)).await;
        Ok(())
    }
}

pub fn definition() -> EntityDefinition<Counter> {
    EntityDefinition::<Counter>::new()
        .handle::<Increment>()
        .handle::<WhoAmI>()
        .handle::<Slow>()
        .handle::<Freeze>()
        .handle::<Echo>()
}

/// A Postgres runner storage under a table prefix of its own (`DATABASE_URL`, default
/// `postgres://postgres@127.0.0.1:5432/test`).
pub async fn postgres_storage() -> Arc<dyn RunnerStorage> {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let prefix = shoal_storage::TablePrefix::new(&format!(
        "sock{}_{:x}_{n}",
        std::process::id(),
        nanos & 0xff_ffff_ffff
    ))
    .unwrap();
    let options = shoal_storage::StorageOptions::new()
        .with_table_prefix(prefix)
        .with_call_timeout(Duration::from_millis(450));
    let storage = shoal_storage::PostgresRunnerStorage::connect(&url, options)
        .await
        .unwrap_or_else(|e| {
            panic!("Postgres at {url} is required by this test (set DATABASE_URL): {e}")
        });
    Arc::new(storage)
}

/// One runner on 127.0.0.1 and a client-only process, both with `socket` settings.
pub async fn one_runner(
    socket: SocketConfig,
) -> (RunnerProcess, SocketRunner, Arc<dyn RunnerStorage>) {
    let storage: Arc<dyn RunnerStorage> = Arc::new(shoal_storage::MemoryRunnerStorage::new());
    let runner = RunnerProcess::start(
        "127.0.0.1:0".parse().unwrap(),
        storage.clone(),
        fast_config().build().unwrap(),
        socket.clone(),
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(10), "runner holds every shard", || {
        runner.active_shards() == 60
    })
    .await;
    let client = SocketRunner::client_only(fast_config().build().unwrap(), socket, storage.clone())
        .await
        .unwrap();
    (runner, client, storage)
}

pub fn fast_config() -> ShardingConfigBuilder {
    ShardingConfig::builder()
        .shards_per_group(60)
        .lease_ttl(Duration::from_millis(1200))
        .lease_refresh_interval(Duration::from_millis(150))
        .assignment_refresh_interval(Duration::from_millis(50))
        .storage_timeout(Duration::from_millis(300))
        .send_retry_interval(Duration::from_millis(25))
        .default_call_timeout(Duration::from_secs(10))
        .entity_termination_timeout(Duration::from_secs(2))
}

/// A runner with its own tokio runtime, as if it were its own process.
pub struct RunnerProcess {
    runtime: Option<tokio::runtime::Runtime>,
    runner: Option<SocketRunner>,
    pub address: String,
}

impl RunnerProcess {
    pub async fn start(
        listen: ListenAddress,
        storage: Arc<dyn RunnerStorage>,
        sharding: ShardingConfig,
        socket: SocketConfig,
    ) -> Result<Self, shoal_socket::SocketError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let result = runtime.block_on(SocketRunner::serve(
                ServeOptions {
                    listen,
                    advertise_host: None,
                    advertise_port: None,
                    sharding,
                    socket,
                },
                storage,
                |b| b.entity(definition()),
            ));
            let _ = tx.send((runtime, result));
        });
        let (runtime, result) = rx.await.unwrap();
        let runner = result?;
        let address = runner.sharding().runner_address().unwrap().to_string();
        Ok(Self {
            runtime: Some(runtime),
            runner: Some(runner),
            address,
        })
    }

    pub fn runner(&self) -> &SocketRunner {
        self.runner.as_ref().unwrap()
    }

    pub fn active_shards(&self) -> usize {
        self.runner().sharding().active_shards().len()
    }

    /// Graceful stop, on the runner's own runtime.
    pub async fn shutdown(mut self) {
        let runner = self.runner.take().unwrap();
        let runtime = self.runtime.take().unwrap();
        tokio::task::spawn_blocking(move || {
            runtime.block_on(runner.shutdown());
            runtime.shutdown_timeout(Duration::from_secs(5));
        })
        .await
        .unwrap();
    }

    /// Kills the runner: every task stops at once, sockets close, nothing is released.
    pub fn kill(mut self) {
        let runner = self.runner.take().unwrap();
        runner.sharding().crash();
        let runtime = self.runtime.take().unwrap();
        drop(runner);
        runtime.shutdown_background();
    }
}

impl Drop for RunnerProcess {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Captured log output.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs a global subscriber writing INFO logs into a buffer (each test binary runs in its
/// own process under nextest).
pub fn capture_logs() -> LogBuffer {
    static BUFFER: std::sync::OnceLock<LogBuffer> = std::sync::OnceLock::new();
    BUFFER
        .get_or_init(|| {
            let buffer = LogBuffer::default();
            let writer = buffer.clone();
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .try_init();
            buffer
        })
        .clone()
}

pub use shoal_test_support::eventually;
