//! Runner processes: start (with their announce line), signal, wait, and the live gateway list
//! the load uses.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::process::{Pid, Signal, kill_process};

use super::http::Client;
use super::links::Links;

/// A `shoal run` process of the cluster.
pub(crate) struct RunnerProcess {
    /// 1-based, in start order (runner 4 is the first replacement of a 3-runner cluster).
    pub(crate) number: usize,
    pub(crate) pid: u32,
    /// `http://host:port`.
    pub(crate) gateway: String,
    /// `http://host:port` of its own `/metrics` listener.
    pub(crate) metrics: String,
    /// The runner address other runners (and storage) know it by.
    pub(crate) address: String,
    pub(crate) log: PathBuf,
    child: Child,
}

/// Sends `signal` to process `pid`.
pub(crate) fn signal_pid(pid: u32, signal: Signal) -> Result<()> {
    let target = Pid::from_raw(i32::try_from(pid).context("bad pid")?).context("bad pid")?;
    kill_process(target, signal).with_context(|| format!("could not send {signal:?} to {pid}"))
}

impl RunnerProcess {
    fn signal(&self, signal: Signal) -> Result<()> {
        signal_pid(self.pid, signal)
            .with_context(|| format!("could not signal runner {}", self.number))
    }

    /// SIGKILL: a crash.
    pub(crate) fn kill(&self) -> Result<()> {
        self.signal(Signal::KILL)
    }

    /// SIGTERM: a graceful stop.
    pub(crate) fn terminate(&self) -> Result<()> {
        self.signal(Signal::TERM)
    }

    /// Waits for the process to exit (reaps it).
    pub(crate) fn wait(mut self) -> Result<ExitStatus> {
        Ok(self.child.wait()?)
    }

    /// Kills and reaps the process if it still runs.
    pub(crate) fn stop_now(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RunnerProcess {
    /// A process the harness lets go of without waiting for it (a failed start or check) is
    /// killed, not left running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts runners with the run's settings.
pub(crate) struct Launcher {
    pub(crate) binary: PathBuf,
    /// The storage URL runners get (through the storage proxy when there is one).
    pub(crate) storage_url: String,
    /// The storage URL the harness itself uses (psql), never through a proxy.
    pub(crate) direct_url: String,
    /// The run's proxies: runners listen behind one each when they have them.
    pub(crate) links: Arc<Links>,
    pub(crate) lease_ttl: Duration,
    pub(crate) dir: PathBuf,
    pub(crate) started: usize,
}

/// What a process printed on its first line.
pub(crate) struct Announced {
    number: usize,
    gateway: String,
    metrics: String,
    runner: String,
}

impl RunnerProcess {
    /// The process behind an announce line.
    pub(crate) fn from_child(announced: Announced, child: Child, log: PathBuf) -> Self {
        Self {
            number: announced.number,
            pid: child.id(),
            gateway: announced.gateway,
            metrics: announced.metrics,
            address: announced.runner,
            log,
            child,
        }
    }
}

impl Launcher {
    /// `shoal run` with the run's storage and settings (more options of `run` may follow).
    pub(crate) fn command(&self) -> Command {
        // Storage calls must stay well inside the lease.
        let storage_timeout = (self.lease_ttl / 3).min(Duration::from_millis(750));
        let mut command = Command::new(&self.binary);
        command
            .arg("run")
            .args(["--storage", &self.storage_url])
            .args(["--lease-ttl", &format!("{}ms", self.lease_ttl.as_millis())])
            .args([
                "--storage-timeout",
                &format!("{}ms", storage_timeout.as_millis()),
            ])
            .args(["--log-level", "info"])
            .env_remove("SHOAL_CONFIG");
        command
    }

    /// Reads the announce line of a process just started (killing it when none comes).
    pub(crate) fn announced(
        &self,
        number: usize,
        child: &mut Child,
        log: &Path,
    ) -> Result<Announced> {
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "process {number} did not start; its log:\n{}",
                tail(log, 30)
            );
        };
        let announce: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("bad announce line {line:?}"))?;
        Ok(Announced {
            number,
            gateway: format!(
                "http://{}",
                announce["gateway"].as_str().context("no gateway")?
            ),
            metrics: format!(
                "http://{}",
                announce["metrics"].as_str().context("no metrics address")?
            ),
            runner: announce["runner"].as_str().unwrap_or_default().to_owned(),
        })
    }

    /// Starts one more runner on free ports and waits until its gateway is ready.
    pub(crate) fn start(&mut self) -> Result<RunnerProcess> {
        self.started += 1;
        let number = self.started;
        let log = self.dir.join(format!("runner-{number}.log"));
        let log_file = std::fs::File::create(&log)?;
        let mut command = self.command();
        if self.links.runner_proxies() {
            // Listen on a port of its own, advertise its proxy's: other runners reach it only
            // through the proxy.
            let listen = super::pgserver::free_port()?;
            let advertised = self.links.add_runner(number, listen)?;
            command
                .args(["--listen", &format!("127.0.0.1:{listen}")])
                .args(["--advertise-port", &advertised.to_string()]);
        } else {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        let mut child = command
            .args(["--gateway", "127.0.0.1:0"])
            .args(["--metrics", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("could not start {}", self.binary.display()))?;
        self.links.add_pid(child.id());
        let announced = self.announced(number, &mut child, &log)?;
        if announced.runner.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("runner {number} announced no runner address");
        }
        let runner = RunnerProcess::from_child(announced, child, log);
        wait_ready(&runner.gateway, Duration::from_secs(60))
            .with_context(|| format!("runner {number} never became ready"))?;
        let client = Client::new(Duration::from_secs(5));
        match client.get_status(&format!("{}/metrics", runner.metrics)) {
            Some(200) => {}
            other => bail!(
                "runner {number}: {}/metrics answered {other:?}, not 200",
                runner.metrics
            ),
        }
        Ok(runner)
    }
}

/// Polls `/readyz` until it answers 200.
pub(crate) fn wait_ready(gateway: &str, timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    let client = Client::new(Duration::from_secs(5));
    loop {
        if client.get_status(&format!("{gateway}/readyz")) == Some(200) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            bail!("{gateway}/readyz did not answer 200 within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `lines` lines of a log file.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The gateways the load may use (those of live runners).
#[derive(Default)]
pub(crate) struct Gateways {
    urls: RwLock<Vec<String>>,
}

impl Gateways {
    pub(crate) fn add(&self, url: &str) {
        if let Ok(mut urls) = self.urls.write() {
            urls.push(url.to_owned());
        }
    }

    pub(crate) fn remove(&self, url: &str) {
        if let Ok(mut urls) = self.urls.write() {
            urls.retain(|u| u != url);
        }
    }

    /// The `n`th live gateway (round robin).
    pub(crate) fn pick(&self, n: u64) -> Option<String> {
        self.pick_except(n, None)
    }

    /// The `n`th live gateway other than `except` (round robin).
    pub(crate) fn pick_except(&self, n: u64, except: Option<&str>) -> Option<String> {
        let urls = self.urls.read().ok()?;
        let usable: Vec<&String> = urls.iter().filter(|u| Some(u.as_str()) != except).collect();
        if usable.is_empty() {
            return None;
        }
        usable
            .get((n % usable.len() as u64) as usize)
            .map(|u| (*u).clone())
    }

    pub(crate) fn len(&self) -> usize {
        self.urls.read().map(|u| u.len()).unwrap_or(0)
    }
}

/// Shared handle.
pub(crate) type SharedGateways = Arc<Gateways>;
