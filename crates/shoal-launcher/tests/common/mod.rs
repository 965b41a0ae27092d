//! Shared pieces of the integration tests: a sandbox (temp state dir, working dir, worker log),
//! the helper binary, and waiting for processes by pidfd.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_launcher::{LaunchConfig, connect_unix};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The worker/launcher helper binary built with this package.
pub const HELPER: &str = env!("CARGO_BIN_EXE_shoal-launcher-test-helper");

/// Upper bound for anything a test waits on (a hang fails the test instead of blocking CI).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A temporary state directory, working directory and worker log. Workers that wrote their PID
/// to the log are killed when the sandbox is dropped.
pub struct Sandbox {
    pub root: tempfile::TempDir,
    pub state_dir: PathBuf,
    pub cwd: PathBuf,
    pub log: PathBuf,
}

impl Sandbox {
    pub fn new() -> Self {
        // Short paths: socket paths must fit in sockaddr_un.
        let root = tempfile::Builder::new()
            .prefix("sl")
            .tempdir_in("/tmp")
            .unwrap();
        let state_dir = root.path().join("state");
        let cwd = root.path().join("cwd");
        std::fs::create_dir(&cwd).unwrap();
        let log = root.path().join("worker.log");
        Self {
            root,
            state_dir,
            cwd,
            log,
        }
    }

    /// The helper's `serve` argv with this sandbox's log, no startup grace, and `extra` flags.
    pub fn worker_argv(&self, extra: &[&str]) -> Vec<String> {
        let mut argv = vec![
            HELPER.to_owned(),
            "serve".to_owned(),
            "--log".to_owned(),
            self.log.to_str().unwrap().to_owned(),
            "--grace".to_owned(),
            "0".to_owned(),
        ];
        argv.extend(extra.iter().map(|s| (*s).to_owned()));
        argv
    }

    /// A launch of the helper worker in this sandbox, with generous timeouts.
    pub fn config(&self, extra: &[&str]) -> LaunchConfig {
        LaunchConfig::new(self.worker_argv(extra))
            .state_dir(&self.state_dir)
            .cwd(&self.cwd)
            .idle_timeout(Duration::from_secs(60))
            .worker_startup_timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(30))
    }

    /// PIDs of the workers that started (one `start <pid>` line each).
    pub fn started(&self) -> Vec<u32> {
        self.log_pids("start")
    }

    /// PIDs of the workers that stopped serving cleanly.
    pub fn stopped(&self) -> Vec<u32> {
        self.log_pids("stop")
    }

    fn log_pids(&self, what: &str) -> Vec<u32> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.strip_prefix(what)?.trim().parse().ok())
            .collect()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for pid in self.started() {
            signal(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Sends `sig` to `pid`, ignoring a process that is already gone.
pub fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Waits (by pidfd, no polling) until process `pid` has exited. Panics after [`PATIENCE`].
pub async fn wait_exit(pid: u32) {
    let Some(raw) = rustix::process::Pid::from_raw(pid as i32) else {
        return;
    };
    let fd = match rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return,
        Err(e) => panic!("pidfd_open({pid}): {e}"),
    };
    // A pidfd polls readable once the process has terminated.
    let exited = tokio::task::spawn_blocking(move || {
        let timeout = rustix::event::Timespec {
            tv_sec: PATIENCE.as_secs() as i64,
            tv_nsec: 0,
        };
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        loop {
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(n) => return n > 0,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => panic!("poll(pidfd): {e}"),
            }
        }
    })
    .await
    .unwrap();
    assert!(exited, "process {pid} did not exit within {PATIENCE:?}");
}

/// One gRPC health check over the socket.
pub async fn health(socket: &Path) -> ServingStatus {
    let channel = connect_unix(socket).await.unwrap();
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(response.status).unwrap()
}
