//! Running the `shoal` binary in tests: processes with their announce line, HTTP calls, storage
//! status, and clean-up.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub(crate) const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

/// How long a process may take to start and announce itself (debug builds on a busy machine).
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A `shoal` command with a clean environment (no inherited `SHOAL_*` variables) in `dir`.
pub(crate) fn shoal(dir: &Path) -> Command {
    let mut cmd = Command::new(SHOAL);
    cmd.current_dir(dir).env_clear();
    for var in ["PATH", "HOME", "TMPDIR", "RUST_BACKTRACE"] {
        if let Ok(value) = std::env::var(var) {
            cmd.env(var, value);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// A `shoal` command like [`shoal`], run under an open-file limit of `limit` (soft and hard).
pub(crate) fn shoal_with_open_file_limit(dir: &Path, limit: u32) -> Command {
    let plain = shoal(dir);
    let mut cmd = Command::new("sh");
    cmd.current_dir(dir).env_clear();
    for (key, value) in plain.get_envs() {
        if let Some(value) = value {
            cmd.env(key, value);
        }
    }
    // `$0` is the binary and `$@` the arguments the caller adds.
    cmd.args([
        "-c",
        &format!("ulimit -n {limit} && exec \"$0\" \"$@\""),
        SHOAL,
    ]);
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs a one-shot command (status, migrate, config) and returns its output.
pub(crate) fn output(mut cmd: Command) -> Output {
    cmd.output().unwrap()
}

/// The stdout of a command that must succeed.
pub(crate) fn stdout_of(cmd: Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "command failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A running `shoal run`.
pub(crate) struct Runner {
    child: Option<Child>,
    pub(crate) pid: u32,
    /// The gateway's base URL (`http://host:port`).
    pub(crate) gateway: String,
    /// The runner's advertised address.
    pub(crate) runner: Option<String>,
    /// Where `/metrics` is served (`host:port`).
    pub(crate) metrics: Option<String>,
    pub(crate) stderr: PathBuf,
}

impl Runner {
    /// Starts `cmd` (a `shoal run` command) and waits for its announce line.
    pub(crate) fn start(mut cmd: Command, stderr: PathBuf) -> Self {
        let log = std::fs::File::create(&stderr).unwrap();
        cmd.stdout(Stdio::piped()).stderr(log);
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the process never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "shoal run did not announce itself; stderr:\n{}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
        };
        let announce: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(announce["event"], "started");
        Self {
            pid: child.id(),
            child: Some(child),
            gateway: announce["gateway"]
                .as_str()
                .map(|a| format!("http://{a}"))
                .unwrap_or_default(),
            runner: announce["runner"].as_str().map(str::to_owned),
            metrics: announce["metrics"].as_str().map(str::to_owned),
            stderr,
        }
    }

    /// Sends `signal` to the process.
    pub(crate) fn signal(&self, signal: rustix::process::Signal) {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.pid as i32).unwrap(),
            signal,
        )
        .unwrap();
    }

    /// Waits for the process to exit, at most `timeout`.
    pub(crate) fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("already waited");
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::spawn(move || {
            let status = child.wait();
            let _ = tx.send(());
            (child, status)
        });
        if rx.recv_timeout(timeout).is_err() {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(self.pid as i32).unwrap(),
                rustix::process::Signal::KILL,
            );
            let _ = handle.join();
            panic!(
                "shoal run (pid {}) did not exit within {timeout:?}; stderr:\n{}",
                self.pid,
                self.logs()
            );
        }
        let (_, status) = handle.join().unwrap();
        status.unwrap()
    }

    /// What the process wrote to stderr so far.
    pub(crate) fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// `GET {gateway}{path}`: status and body.
    pub(crate) fn get(&self, path: &str) -> (u16, String) {
        get(&format!("{}{path}", self.gateway))
    }

    /// `POST {gateway}{path}` with `body`: status and body.
    pub(crate) fn post(&self, path: &str, body: &str) -> (u16, String) {
        post(&format!("{}{path}", self.gateway), body)
    }

    /// Waits until `/readyz` answers 200.
    pub(crate) fn wait_ready(&self) {
        wait_for(START_TIMEOUT, "the runner to be ready", || {
            self.get("/readyz").0 == 200
        });
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// `GET url`: status and body (status 0 when nothing answers).
pub(crate) fn get(url: &str) -> (u16, String) {
    match agent().get(url).call() {
        Ok(mut response) => (
            response.status().as_u16(),
            response.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(_) => (0, String::new()),
    }
}

/// `POST url` with a JSON body: status and body (status 0 when nothing answers).
pub(crate) fn post(url: &str, body: &str) -> (u16, String) {
    match agent()
        .post(url)
        .header("content-type", "application/json")
        .send(body)
    {
        Ok(mut response) => (
            response.status().as_u16(),
            response.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(_) => (0, String::new()),
    }
}

/// Polls `condition` until it holds, failing after `timeout`.
pub(crate) fn wait_for(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `shoal status --json` for `storage` (and extra arguments).
pub(crate) fn status(dir: &Path, storage: &str, extra: &[&str]) -> serde_json::Value {
    let mut cmd = shoal(dir);
    cmd.args(["status", "--json", "--storage", storage])
        .args(extra);
    serde_json::from_str(&stdout_of(cmd)).unwrap()
}

/// Shards each runner holds, by address, according to storage.
pub(crate) fn shards_by_runner(status: &serde_json::Value) -> Vec<(String, u64)> {
    status["runners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["address"].as_str().unwrap().to_owned(),
                r["shards"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// A Postgres database created for one test and dropped afterwards.
pub(crate) struct TestDatabase {
    pub(crate) url: String,
    admin: String,
    name: String,
}

impl TestDatabase {
    /// Creates a database with a unique name on `DATABASE_URL`'s server (default
    /// `postgres://postgres@127.0.0.1:5432/test`); fails loudly when Postgres is unreachable.
    pub(crate) fn create(tag: &str) -> Self {
        let admin = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("shoal_runner_{tag}_{}_{nanos}", std::process::id());
        run_sql(&admin, &format!("CREATE DATABASE {name}"));
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        Self {
            url: format!("{base}/{name}"),
            admin,
            name,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        run_sql(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn run_sql(url: &str, sql: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .unwrap_or_else(|e| panic!("Postgres at DATABASE_URL is unreachable: {e}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    });
}
