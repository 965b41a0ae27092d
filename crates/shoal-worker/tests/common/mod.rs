//! Fixtures of the worker host tests: a real worker process (the crate's test worker, or any
//! command), hosted by a [`WorkerHost`] and served by a single-runner sharding runtime on
//! in-memory storage.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test fixtures"
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shoal_launcher::{LaunchConfig, WorkerStderr};
use shoal_sharding::{
    CallError, CallErrorKind, CallOptions, DynamicClient, InProcessNetwork, MessageSettings,
    Sharding, ShardingConfig,
};
use shoal_storage::{EntityKv, MemoryEntityKv, MemoryMessageStorage, MemoryRunnerStorage};
use shoal_worker::{WorkerError, WorkerHost, WorkerOptions, WorkerSpec};
use tempfile::TempDir;

/// The test worker binary (`src/bin/test_worker.rs`).
pub fn test_worker() -> &'static str {
    env!("CARGO_BIN_EXE_shoal-worker-test-worker")
}

/// Host options that make failures show quickly.
pub fn fast_options() -> WorkerOptions {
    WorkerOptions::new()
        .request_timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(10))
        .restart_backoff(Duration::from_millis(20), Duration::from_millis(200))
}

/// A launch of `argv` with its state directory, socket and stderr log in `dir`.
pub fn launch_spec(dir: &Path, argv: Vec<String>) -> WorkerSpec {
    WorkerSpec::launch(
        LaunchConfig::new(argv)
            .state_dir(dir.join("state"))
            .idle_timeout(Duration::from_secs(20))
            .worker_startup_timeout(Duration::from_secs(20))
            .worker_stderr(WorkerStderr::Append(dir.join("worker.log"))),
    )
    .options(fast_options())
}

/// A launch of the test worker with `args`.
pub fn test_worker_spec(dir: &Path, args: &[&str]) -> WorkerSpec {
    let mut argv = vec![test_worker().to_owned()];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    launch_spec(dir, argv)
}

/// A temporary directory with a short path (Unix socket paths are limited to 108 bytes).
pub fn short_tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("sw")
        .tempdir_in("/tmp")
        .unwrap()
}

/// Sharding settings for one runner that acquires its shards quickly.
pub fn sharding_config() -> ShardingConfig {
    ShardingConfig::builder()
        .shards_per_group(16)
        .lease_ttl(Duration::from_secs(3))
        .lease_refresh_interval(Duration::from_millis(200))
        .assignment_refresh_interval(Duration::from_millis(50))
        .send_retry_interval(Duration::from_millis(20))
        .default_call_timeout(Duration::from_secs(20))
        .entity_termination_timeout(Duration::from_secs(2))
        .defect_max_retries(1)
        .defect_backoff(Duration::from_millis(10))
        .build()
        .unwrap()
}

/// A worker hosted by a one-runner cluster.
pub struct Hosted {
    pub host: WorkerHost,
    pub sharding: Sharding,
    pub kv: Arc<dyn EntityKv>,
    /// Worker process ids seen, killed when the fixture is dropped (tests leave no workers
    /// behind; they would otherwise idle out on their own).
    pids: parking_lot::Mutex<Vec<u32>>,
}

impl Hosted {
    /// Starts hosting `spec` and a runner serving its entity types.
    pub async fn start(spec: WorkerSpec) -> Self {
        Self::try_start(spec).await.unwrap()
    }

    /// Like [`Hosted::start`], returning the host's error.
    pub async fn try_start(spec: WorkerSpec) -> Result<Self, WorkerError> {
        Self::try_start_with_kv(spec, |kv| kv).await
    }

    /// Like [`Hosted::start`], with the in-memory entity KV wrapped by `wrap` (for example in a
    /// [`GatedKv`]).
    pub async fn start_with_kv(
        spec: WorkerSpec,
        wrap: impl FnOnce(Arc<dyn EntityKv>) -> Arc<dyn EntityKv>,
    ) -> Self {
        Self::try_start_with_kv(spec, wrap).await.unwrap()
    }

    /// Like [`Hosted::start_with_kv`], returning the host's error.
    pub async fn try_start_with_kv(
        spec: WorkerSpec,
        wrap: impl FnOnce(Arc<dyn EntityKv>) -> Arc<dyn EntityKv>,
    ) -> Result<Self, WorkerError> {
        init_logs();
        let runners = Arc::new(MemoryRunnerStorage::new());
        let kv: Arc<dyn EntityKv> = wrap(Arc::new(MemoryEntityKv::new(runners.clone())));
        let (host, definitions) = WorkerHost::start(spec, kv.clone()).await?;
        let messages = Arc::new(MemoryMessageStorage::new(runners.clone()));
        let mut builder = Sharding::builder(sharding_config())
            .storage(runners)
            .message_storage(messages)
            .message_settings(MessageSettings {
                poll_interval: Duration::from_millis(100),
                // A persisted request whose attempt here failed transiently (the worker died)
                // stays claimed by this runner until the claim expires; keep that short.
                claim_timeout: Duration::from_millis(300),
                ..MessageSettings::default()
            })
            .in_process(&InProcessNetwork::new())
            .runner("127.0.0.1:34431".parse().unwrap());
        for definition in definitions {
            builder = builder.entity(definition);
        }
        let sharding = builder.start().await.unwrap();
        let hosted = Self {
            pids: parking_lot::Mutex::new(host.worker_pid().into_iter().collect()),
            host,
            sharding,
            kv,
        };
        Ok(hosted)
    }

    /// A client of `entity_type`.
    pub fn client(&self, entity_type: &str) -> DynamicClient {
        self.sharding
            .dynamic_client_for(&entity_type.parse().unwrap())
            .unwrap()
    }

    /// Calls `tag` of `probe/<id>` with a text payload; the reply as text.
    pub async fn call(&self, id: &str, tag: &str, payload: &str) -> Result<String, CallError> {
        self.call_type("probe", id, tag, payload).await
    }

    /// Calls `tag` of `<entity_type>/<id>` with a text payload; the reply as text.
    pub async fn call_type(
        &self,
        entity_type: &str,
        id: &str,
        tag: &str,
        payload: &str,
    ) -> Result<String, CallError> {
        let reply = self
            .client(entity_type)
            .call(
                id,
                tag,
                Bytes::copy_from_slice(payload.as_bytes()),
                CallOptions::default(),
            )
            .await?;
        Ok(String::from_utf8(reply.to_vec()).unwrap())
    }

    /// The current worker's pid (remembered for clean-up).
    pub fn pid(&self) -> u32 {
        let pid = self.host.worker_pid().expect("the worker reported its pid");
        self.remember(pid);
        pid
    }

    /// Remembers a worker pid to kill at the end.
    pub fn remember(&self, pid: u32) {
        let mut pids = self.pids.lock();
        if !pids.contains(&pid) {
            pids.push(pid);
        }
    }

    /// Stops the runner and the host.
    pub async fn stop(&self) {
        if let Some(pid) = self.host.worker_pid() {
            self.remember(pid);
        }
        self.sharding.shutdown().await;
        self.host.shutdown().await;
    }
}

impl Drop for Hosted {
    fn drop(&mut self) {
        for pid in self.pids.lock().drain(..) {
            kill(pid);
        }
    }
}

/// Sends SIGKILL to `pid` (ignoring a process that is already gone).
pub fn kill(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// Whether process `pid` exists.
pub fn alive(pid: u32) -> bool {
    rustix::process::Pid::from_raw(pid as i32)
        .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok())
}

/// What the worker wrote on stderr (for failure messages).
pub fn worker_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("worker.log")).unwrap_or_default()
}

/// A path in `dir`.
pub fn path_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// The message of a call that failed because the worker was unavailable (a transient failure,
/// which a volatile caller sees as `CallErrorKind::Persistence`), or a panic naming what came instead.
pub fn unavailable_message(result: Result<String, CallError>) -> String {
    match result {
        Err(e) if matches!(e.kind(), CallErrorKind::Persistence) => e.message().to_owned(),
        other => panic!("expected the worker to be unavailable, got {other:?}"),
    }
}

/// The message of a handler failure, or a panic naming what came instead.
pub fn handler_message(result: Result<String, CallError>) -> String {
    match result {
        Err(e) if matches!(e.kind(), CallErrorKind::Handler) => e.message().to_owned(),
        other => panic!("expected a handler failure, got {other:?}"),
    }
}

/// Polls `condition` (every 10 ms, for at most 20 s) until it holds.
pub async fn eventually<F, Fut>(condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    shoal_test_support::eventually_async(Duration::from_secs(20), "the condition", condition).await;
}

/// Logs to the test's output when `RUST_LOG` is set (for example
/// `RUST_LOG=shoal_worker=debug,shoal_sharding=debug`).
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Entity KV whose reads (`get`, `list`) wait while the gate is closed: a runner that answers
/// KV requests slowly, under the test's control. Writes pass through.
#[derive(Debug)]
pub struct GatedKv {
    inner: Arc<dyn EntityKv>,
    open: tokio::sync::watch::Sender<bool>,
}

impl GatedKv {
    /// Wraps `inner`, with the gate closed.
    pub fn closed(inner: Arc<dyn EntityKv>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            open: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Lets every waiting and later read through.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    async fn pass(&self) {
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|open| *open).await;
    }
}

#[async_trait::async_trait]
impl EntityKv for GatedKv {
    async fn get(
        &self,
        entity: &shoal_protocol::EntityAddress,
        keys: &[Bytes],
    ) -> Result<Vec<Option<Bytes>>, shoal_storage::StorageError> {
        self.pass().await;
        self.inner.get(entity, keys).await
    }

    async fn list(
        &self,
        entity: &shoal_protocol::EntityAddress,
        query: &shoal_storage::KvQuery,
    ) -> Result<Vec<shoal_storage::KvEntry>, shoal_storage::StorageError> {
        self.pass().await;
        self.inner.list(entity, query).await
    }

    async fn put(
        &self,
        entity: &shoal_protocol::EntityAddress,
        entries: &[shoal_storage::KvEntry],
        fence: &shoal_storage::Fence,
    ) -> Result<(), shoal_storage::StorageError> {
        self.inner.put(entity, entries, fence).await
    }

    async fn delete(
        &self,
        entity: &shoal_protocol::EntityAddress,
        keys: &[Bytes],
        fence: &shoal_storage::Fence,
    ) -> Result<(), shoal_storage::StorageError> {
        self.inner.delete(entity, keys, fence).await
    }

    async fn delete_range(
        &self,
        entity: &shoal_protocol::EntityAddress,
        start: &[u8],
        end: &[u8],
        fence: &shoal_storage::Fence,
    ) -> Result<(), shoal_storage::StorageError> {
        self.inner.delete_range(entity, start, end, fence).await
    }

    async fn drop_all(
        &self,
        entity: &shoal_protocol::EntityAddress,
        fence: &shoal_storage::Fence,
    ) -> Result<(), shoal_storage::StorageError> {
        self.inner.drop_all(entity, fence).await
    }
}
