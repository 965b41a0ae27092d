//! The runner processes of a run: the live ones and those killed, stopped together at the end.

use std::collections::HashSet;
use std::process::ExitStatus;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::runners::RunnerProcess;

/// The runner processes; any still running when this is dropped are killed.
#[derive(Default)]
pub(crate) struct Fleet {
    pub(crate) live: Vec<RunnerProcess>,
    pub(crate) killed: Vec<RunnerProcess>,
    /// Client-only gateway processes.
    pub(crate) clients: Vec<RunnerProcess>,
}

impl Fleet {
    /// The runner addresses of the live runners.
    pub(crate) fn addresses(&self) -> HashSet<String> {
        self.live.iter().map(|r| r.address.clone()).collect()
    }

    /// SIGTERM to every live runner and client; returns those that did not exit cleanly within
    /// 60 s.
    pub(crate) fn stop_all(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut waits = Vec::new();
        let clients = std::mem::take(&mut self.clients);
        for runner in std::mem::take(&mut self.live).into_iter().chain(clients) {
            let number = runner.number;
            let log = runner.log.display().to_string();
            if let Err(e) = runner.terminate() {
                problems.push(format!("runner {number}: {e:#}"));
            }
            waits.push((number, log, wait_bounded(runner, Duration::from_secs(60))));
        }
        for (number, log, wait) in waits {
            match wait.join() {
                Ok(Some(status)) if status.success() => {}
                Ok(Some(status)) => problems.push(format!(
                    "runner {number} exited with {status} after SIGTERM (log: {log})"
                )),
                _ => problems.push(format!(
                    "runner {number} did not exit within 60 s of SIGTERM (log: {log})"
                )),
            }
        }
        for runner in std::mem::take(&mut self.killed) {
            let _ = runner.wait();
        }
        problems
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for runner in self
            .live
            .drain(..)
            .chain(self.killed.drain(..))
            .chain(self.clients.drain(..))
        {
            runner.stop_now();
        }
    }
}

/// Waits for `runner` to exit in a thread; kills it after `timeout` (then `None`).
pub(crate) fn wait_bounded(
    runner: RunnerProcess,
    timeout: Duration,
) -> JoinHandle<Option<ExitStatus>> {
    std::thread::spawn(move || {
        let pid = runner.pid;
        let (tx, rx) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let status = runner.wait();
            let _ = tx.send(());
            status
        });
        if rx.recv_timeout(timeout).is_err() {
            if let Some(pid) = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            let _ = waiter.join();
            return None;
        }
        waiter.join().ok().and_then(Result::ok)
    })
}
