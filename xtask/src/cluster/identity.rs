//! Identity faults: a second process given a live runner's advertised address, and a
//! client-only process that leases a live runner's machine id.
//!
//! - `duplicate`: starts `shoal run` listening on `127.0.0.2:<port>` but advertising a live
//!   runner's address (`127.0.0.1:<port>`), as a copied `advertise_host` would. It must refuse to
//!   start (the address is registered by a live process of another incarnation) and never serve a
//!   shard; the lease sampler checks that no shard changes owner without a new epoch meanwhile.
//! - `collide`: expires a live runner's machine-id lease in storage (as if it had been frozen past
//!   its lease) and holds every other free machine id, then starts a client-only gateway, which
//!   leases that same machine id while the runner still stamps it into its ids. The client's ids
//!   must start after the runner's reservation, so the load that goes through both gateways is
//!   still counted exactly once (invariant (a)). Needs Postgres storage (the harness edits the
//!   table with `psql`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::report::fmt_duration;
use super::runners::{Launcher, RunnerProcess, tail, wait_ready};
use super::status::StatusReader;

/// What became of the second process at a live runner's address.
pub(crate) struct DuplicateReport {
    pub(crate) at: f64,
    pub(crate) address: String,
    /// `Ok(what happened)`, or the violation.
    pub(crate) outcome: Result<String, String>,
}

/// Starts a second process advertising `address` (a live runner's `127.0.0.1:<port>`) and
/// watches it in a thread: it must exit, refused, without announcing itself.
pub(crate) fn start_duplicate(
    launcher: &Launcher,
    address: &str,
    at: f64,
) -> Result<JoinHandle<DuplicateReport>> {
    let port = address
        .rsplit_once(':')
        .map(|(_, port)| port)
        .with_context(|| format!("runner address {address:?} has no port"))?;
    let log = launcher.dir.join("duplicate.log");
    let mut child = launcher
        .command()
        .args(["--listen", &format!("127.0.0.2:{port}")])
        .args(["--advertise-host", "127.0.0.1"])
        .args(["--gateway", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("could not start the duplicate process")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let address = address.to_owned();
    Ok(std::thread::spawn(move || {
        let started = Instant::now();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            if let Some(Ok(line)) = BufReader::new(stdout).lines().next() {
                let _ = tx.send(line);
            }
        });
        let outcome = match wait_exit(&mut child, Duration::from_secs(60)) {
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!(
                    "a second process advertising {address} was still running after 60 s (log: {})",
                    log.display()
                ))
            }
            Some(status) => {
                let announced = rx.try_recv().ok();
                let text = tail(&log, 40);
                match announced {
                    Some(line) => Err(format!(
                        "a second process advertising {address} started and announced {line}"
                    )),
                    None if status.success() => Err(format!(
                        "a second process advertising {address} exited successfully instead of \
                         being refused"
                    )),
                    None if text.contains("in use by another live process") => Ok(format!(
                        "refused after {} ({status}): the address is registered by a live \
                         process of another incarnation",
                        fmt_duration(started.elapsed())
                    )),
                    None => Err(format!(
                        "a second process advertising {address} failed for another reason \
                         ({status}); its log:\n{text}"
                    )),
                }
            }
        };
        DuplicateReport {
            at,
            address,
            outcome,
        }
    }))
}

/// Waits up to `timeout` for `child` to exit.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if started.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => return None,
        }
    }
}

/// A client-only gateway process that leased a live runner's machine id.
pub(crate) struct Collision {
    pub(crate) client: RunnerProcess,
    /// What the report says about it.
    pub(crate) line: String,
}

/// Makes the machine id of the runner at `victim` the only free one (its lease expired, every
/// other free id held by a placeholder), starts a client-only gateway, and checks that it
/// leased that machine id while the runner still holds it.
pub(crate) fn collide(
    launcher: &mut Launcher,
    reader: &StatusReader,
    victim: &str,
    at: f64,
) -> Result<Collision> {
    if !launcher.direct_url.starts_with("postgres") {
        bail!("the collide fault needs Postgres storage (the harness edits the machine-id table)");
    }
    let status = reader.read_json()?;
    let runner = status["runners"]
        .as_array()
        .and_then(|runners| runners.iter().find(|r| r["address"] == victim))
        .with_context(|| format!("runner {victim} is not registered"))?;
    let machine = runner["machine_id"]
        .as_i64()
        .with_context(|| format!("runner {victim} holds no machine id"))?;
    // A placeholder incarnation that no process has (incarnations are random and never 0 or 1).
    // It holds the free ids and those about to be free: a process that died without releasing
    // its id (the refused duplicate, a killed runner) leaves a lease that lapses within a minute,
    // possibly while the client starts. Live processes renew every 10 s a lease of 60 s, so
    // theirs are always more than 30 s from lapsing. A process stopping gracefully meanwhile (a
    // SIGTERM just before) releases its id after the placeholders were set, and the client may
    // take that one instead: it is then stopped (its own lease keeps that id from being free) and
    // the client started again.
    let started = Instant::now();
    let mut attempts = 0;
    let client = loop {
        attempts += 1;
        psql(
            &launcher.direct_url,
            &format!(
                "BEGIN; \
                 UPDATE shoal_machine_ids SET incarnation = 1, expires_at = now() + interval '1 hour' \
                 WHERE expires_at <= now() + interval '30 seconds' AND machine_id <> {machine}; \
                 UPDATE shoal_machine_ids SET expires_at = now() WHERE machine_id = {machine}; \
                 COMMIT;"
            ),
        )?;
        let client = launcher.start_client();
        // Free the placeholders whatever happened.
        let freed = psql(
            &launcher.direct_url,
            "UPDATE shoal_machine_ids SET expires_at = now() WHERE incarnation = 1",
        );
        let client = client?;
        freed?;
        let status = reader.read_json()?;
        let leased_by_client = status["processes"].as_array().is_some_and(|processes| {
            processes
                .iter()
                .any(|p| p["machine_id"] == machine && p["runner"].is_null())
        });
        if leased_by_client {
            break client;
        }
        client.stop_now();
        if attempts == 3 {
            bail!(
                "the client-only process did not lease machine id {machine} in {attempts} \
                 attempts (processes: {})",
                status["processes"]
            );
        }
    };
    let line = format!(
        "collide at {:.0}%: a client-only gateway leased machine id {machine} while runner {victim} \
         still stamped it into its ids (its lease expired by the harness); ready after {}, its \
         gateway joined the load",
        at * 100.0,
        fmt_duration(started.elapsed()),
    );
    Ok(Collision { client, line })
}

fn psql(url: &str, sql: &str) -> Result<()> {
    let out = Command::new("psql")
        .args([url, "-qAtc", sql])
        .output()
        .context("could not run psql")?;
    if !out.status.success() {
        bail!(
            "psql `{sql}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Launcher {
    /// Starts a client-only gateway on free ports and waits until it is ready.
    pub(crate) fn start_client(&mut self) -> Result<RunnerProcess> {
        self.started += 1;
        let number = self.started;
        let log = self.dir.join(format!("client-{number}.log"));
        let mut child = self
            .command()
            .arg("--client-only")
            .args(["--gateway", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("could not start a client-only process")?;
        let process = self.announced(number, &mut child, &log)?;
        let process = RunnerProcess::from_child(process, child, log);
        wait_ready(&process.gateway, Duration::from_secs(60))
            .with_context(|| format!("client {number} never became ready"))?;
        Ok(process)
    }
}
