//! The load: worker threads sending `increment` calls through the live gateways, each one
//! recorded by what it tells about its effect (acknowledged, refused and resent, unknown).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::http::{Client, Outcome};
use super::runners::SharedGateways;

/// The deadline each call gives the runtime (`x-shoal-timeout-ms`).
pub(crate) const CALL_DEADLINE_MS: u64 = 5_000;
/// How long one increment may keep being resent after refusals.
const RESEND_FOR: Duration = Duration::from_secs(30);

/// What to send.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// Increments to send (`u64::MAX` with a duration).
    pub(crate) requests: u64,
    /// Stop after this long instead.
    pub(crate) duration: Option<Duration>,
    pub(crate) ids: u32,
    pub(crate) concurrency: u32,
}

/// The counter id of the `n`th increment.
pub(crate) fn id_name(index: u32) -> String {
    format!("c{index}")
}

/// What happened to the increments of one id.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tally {
    /// Acknowledged (200): applied exactly once, the reply is the new value.
    pub(crate) acked: u64,
    /// Outcome unknown (may or may not have been applied).
    pub(crate) unknown: u64,
    /// Failed with an answer that should not happen.
    pub(crate) failed: u64,
    /// The values acknowledged increments returned.
    pub(crate) replies: Vec<i64>,
}

#[derive(Default)]
struct Counters {
    issued: AtomicU64,
    done: AtomicU64,
    acked: AtomicU64,
    unknown: AtomicU64,
    failed: AtomicU64,
    resent: AtomicU64,
    stop: AtomicBool,
}

/// What one worker saw.
#[derive(Default)]
struct WorkerResult {
    tallies: BTreeMap<u32, Tally>,
    latencies_us: Vec<u64>,
    refusals: BTreeMap<String, u64>,
    unknowns: BTreeMap<String, u64>,
    failures: BTreeMap<String, u64>,
}

/// The load's totals.
#[derive(Debug, Default)]
pub(crate) struct LoadResult {
    pub(crate) tallies: BTreeMap<u32, Tally>,
    /// Latency of each acknowledged call (one HTTP exchange), in microseconds, sorted.
    pub(crate) latencies_us: Vec<u64>,
    pub(crate) elapsed: Duration,
    pub(crate) sent: u64,
    pub(crate) resent: u64,
    /// Refusals that were resent, by status and code.
    pub(crate) refusals: BTreeMap<String, u64>,
    /// Unknown outcomes, by cause.
    pub(crate) unknowns: BTreeMap<String, u64>,
    /// Failures, by status and code.
    pub(crate) failures: BTreeMap<String, u64>,
}

impl LoadResult {
    pub(crate) fn acked(&self) -> u64 {
        self.tallies.values().map(|t| t.acked).sum()
    }

    pub(crate) fn unknown(&self) -> u64 {
        self.tallies.values().map(|t| t.unknown).sum()
    }

    pub(crate) fn failed(&self) -> u64 {
        self.tallies.values().map(|t| t.failed).sum()
    }

    /// The `q` quantile of acknowledged latencies.
    pub(crate) fn latency(&self, q: f64) -> Duration {
        if self.latencies_us.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        Duration::from_micros(self.latencies_us[index])
    }
}

/// A running load.
pub(crate) struct Load {
    plan: Plan,
    counters: Arc<Counters>,
    workers: Vec<JoinHandle<WorkerResult>>,
    started: Instant,
}

impl Load {
    pub(crate) fn start(plan: Plan, gateways: SharedGateways) -> Self {
        let counters = Arc::new(Counters::default());
        let started = Instant::now();
        let workers = (0..plan.concurrency)
            .map(|_| {
                let counters = counters.clone();
                let gateways = gateways.clone();
                std::thread::spawn(move || worker(plan, &counters, &gateways, started))
            })
            .collect();
        Self {
            plan,
            counters,
            workers,
            started,
        }
    }

    /// How far the load is, from 0 to 1.
    pub(crate) fn progress(&self) -> f64 {
        let by_count = match self.plan.requests {
            u64::MAX => 0.0,
            n => self.counters.done.load(Ordering::Relaxed) as f64 / n as f64,
        };
        let by_time = self.plan.duration.map_or(0.0, |d| {
            self.started.elapsed().as_secs_f64() / d.as_secs_f64()
        });
        by_count.max(by_time).min(1.0)
    }

    /// Whether every worker has finished.
    pub(crate) fn is_done(&self) -> bool {
        self.workers.iter().all(JoinHandle::is_finished)
    }

    /// A one-line progress report.
    pub(crate) fn line(&self, gateways: usize) -> String {
        let c = &self.counters;
        let done = c.done.load(Ordering::Relaxed);
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let total = match self.plan.requests {
            u64::MAX => String::from("?"),
            n => n.to_string(),
        };
        format!(
            "[load] {:>3.0}% {done}/{total} | acked {} unknown {} failed {} resent {} | {:.0}/s | gateways {gateways}",
            self.progress() * 100.0,
            c.acked.load(Ordering::Relaxed),
            c.unknown.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed),
            c.resent.load(Ordering::Relaxed),
            c.acked.load(Ordering::Relaxed) as f64 / elapsed,
        )
    }

    /// Stops the workers after their current call (used when the run is aborted).
    pub(crate) fn stop(&self) {
        self.counters.stop.store(true, Ordering::Release);
    }

    /// Waits for the workers and merges what they saw.
    pub(crate) fn finish(self) -> LoadResult {
        let mut result = LoadResult::default();
        for worker in self.workers {
            let Ok(w) = worker.join() else { continue };
            for (id, tally) in w.tallies {
                let merged = result.tallies.entry(id).or_default();
                merged.acked += tally.acked;
                merged.unknown += tally.unknown;
                merged.failed += tally.failed;
                merged.replies.extend(tally.replies);
            }
            result.latencies_us.extend(w.latencies_us);
            for (into, from) in [
                (&mut result.refusals, w.refusals),
                (&mut result.unknowns, w.unknowns),
                (&mut result.failures, w.failures),
            ] {
                for (k, v) in from {
                    *into.entry(k).or_default() += v;
                }
            }
        }
        result.latencies_us.sort_unstable();
        result.elapsed = self.started.elapsed();
        result.sent = self.counters.done.load(Ordering::Relaxed);
        result.resent = self.counters.resent.load(Ordering::Relaxed);
        result
    }
}

fn worker(
    plan: Plan,
    counters: &Counters,
    gateways: &SharedGateways,
    started: Instant,
) -> WorkerResult {
    let client = Client::new(Duration::from_millis(CALL_DEADLINE_MS * 2));
    let mut out = WorkerResult::default();
    loop {
        if counters.stop.load(Ordering::Acquire) {
            break;
        }
        if plan.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        let n = counters.issued.fetch_add(1, Ordering::Relaxed);
        if n >= plan.requests {
            break;
        }
        let index = (n % u64::from(plan.ids)) as u32;
        let id = id_name(index);
        let tally = out.tallies.entry(index).or_default();
        let first_try = Instant::now();
        let mut attempt = n;
        loop {
            let Some(gateway) = gateways.pick(attempt) else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            attempt = attempt.wrapping_add(1);
            let sent = Instant::now();
            match client.call(&gateway, &id, "increment", r#"{"by":1}"#, CALL_DEADLINE_MS) {
                Outcome::Ok(body) => {
                    out.latencies_us.push(sent.elapsed().as_micros() as u64);
                    match body.trim().parse::<i64>() {
                        Ok(value) => {
                            tally.acked += 1;
                            tally.replies.push(value);
                            counters.acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            tally.failed += 1;
                            *out.failures
                                .entry(format!("200 with body {body:?}"))
                                .or_default() += 1;
                            counters.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    break;
                }
                Outcome::Refused(label) => {
                    *out.refusals.entry(label).or_default() += 1;
                    if first_try.elapsed() > RESEND_FOR {
                        tally.failed += 1;
                        *out.failures
                            .entry("refused for 30 s".to_owned())
                            .or_default() += 1;
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    counters.resent.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
                Outcome::Unknown(label) => {
                    tally.unknown += 1;
                    *out.unknowns.entry(label).or_default() += 1;
                    counters.unknown.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Outcome::Failed(label) => {
                    tally.failed += 1;
                    *out.failures.entry(label).or_default() += 1;
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        counters.done.fetch_add(1, Ordering::Relaxed);
    }
    out
}

/// When the last id of a sweep answered (`None`: not all did) and the values read.
type Sweep = (Option<Duration>, BTreeMap<u32, i64>);

/// Asks every id for its value (`get`) until all have answered or `timeout` passes; returns when
/// the last one answered, measured from `since`, and the values.
pub(crate) fn read_all(
    gateways: &SharedGateways,
    ids: u32,
    since: Instant,
    timeout: Duration,
    deadline_ms: u64,
) -> (Option<Duration>, BTreeMap<u32, i64>) {
    const THREADS: u32 = 16;
    let workers: Vec<JoinHandle<Sweep>> = (0..THREADS)
        .map(|t| {
            let gateways = gateways.clone();
            std::thread::spawn(move || {
                let client = Client::new(Duration::from_millis(deadline_ms * 2 + 1000));
                let mut pending: Vec<u32> = (t..ids).step_by(THREADS as usize).collect();
                let mut values = BTreeMap::new();
                let mut last = None;
                let mut round: u64 = 0;
                while !pending.is_empty() && since.elapsed() < timeout {
                    round += 1;
                    pending.retain(|&index| {
                        let Some(gateway) = gateways.pick(u64::from(index) + round) else {
                            return true;
                        };
                        match client.call(&gateway, &id_name(index), "get", "{}", deadline_ms) {
                            Outcome::Ok(body) => match body.trim().parse::<i64>() {
                                Ok(value) => {
                                    values.insert(index, value);
                                    last = Some(since.elapsed());
                                    false
                                }
                                Err(_) => true,
                            },
                            _ => true,
                        }
                    });
                    if !pending.is_empty() {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                (
                    if pending.is_empty() {
                        last.or(Some(Duration::ZERO))
                    } else {
                        None
                    },
                    values,
                )
            })
        })
        .collect();
    let mut all_answered = Some(Duration::ZERO);
    let mut values = BTreeMap::new();
    for worker in workers {
        match worker.join() {
            Ok((done, v)) => {
                all_answered = match (all_answered, done) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
                values.extend(v);
            }
            Err(_) => all_answered = None,
        }
    }
    (all_answered, values)
}
