//! The load: threads sending persisted `increment` calls (each with its own idempotency key,
//! resent with that key until acknowledged) and volatile `get` calls through the live gateways,
//! recording what each call came to.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::http::{Call, Client, Outcome};
use super::runners::SharedGateways;
use super::served::{GET_BODY, INCREMENT_BODY, Recorder, Reply, SharedLedger, parse_reply};

/// The deadline each call gives the runtime (`x-shoal-timeout-ms`).
pub(crate) const CALL_DEADLINE_MS: u64 = 5_000;
/// How long one request may keep being resent before it counts as never acknowledged.
pub(crate) const RESEND_FOR: Duration = Duration::from_secs(60);
/// One request in this many is a volatile `get`; the others are persisted increments.
pub(crate) const GET_EVERY: u64 = 4;

/// What to send.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// Requests to send in all.
    pub(crate) requests: u64,
    /// Distinct counter ids.
    pub(crate) ids: u32,
    /// Concurrent callers.
    pub(crate) concurrency: u32,
    /// Send requests for this long instead of `requests` (a soak run).
    pub(crate) run_for: Option<Duration>,
}

impl Plan {
    /// Persisted increments among the requests.
    pub(crate) fn increments(&self) -> u64 {
        self.requests - self.requests / GET_EVERY
    }
}

/// The counter id with this index.
pub(crate) fn id_name(index: u32) -> String {
    format!("c{index}")
}

/// What happened to the increments of one id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Acknowledged (200): must be counted exactly once; the reply is the new value.
    pub(crate) acked: u64,
    /// Never acknowledged within [`RESEND_FOR`]: may or may not have been applied.
    pub(crate) unacked: u64,
    /// Failed with an answer a counter should never give (not resent).
    pub(crate) failed: u64,
    /// The values acknowledged increments returned.
    pub(crate) replies: Vec<i64>,
}

/// Live counters, for the progress line.
#[derive(Default)]
struct Counters {
    issued: AtomicU64,
    done: AtomicU64,
    acked: AtomicU64,
    gets: AtomicU64,
    resent: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
    /// Resends and failures by answer, for the soak's progress line.
    codes: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    fn count_code(&self, label: &str) {
        if let Ok(mut codes) = self.codes.lock() {
            *codes.entry(label.to_owned()).or_default() += 1;
        }
    }
}

/// The load's counters at one moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    pub(crate) done: u64,
    pub(crate) acked: u64,
    pub(crate) gets: u64,
    pub(crate) resent: u64,
    pub(crate) failed: u64,
    /// Resends and failures by answer.
    pub(crate) codes: BTreeMap<String, u64>,
}

/// What one caller thread saw.
#[derive(Default)]
struct CallerResult {
    tallies: BTreeMap<u32, Tally>,
    call_us: Vec<u64>,
    request_us: Vec<u64>,
    gets: u64,
    gets_unanswered: u64,
    resent: BTreeMap<String, u64>,
    failures: BTreeMap<String, u64>,
    stale_reads: Vec<String>,
    slowest: Option<Slowest>,
}

/// The request that took longest, with each attempt, to tell where the time went.
#[derive(Debug, Clone, Default)]
pub(crate) struct Slowest {
    pub(crate) elapsed: Duration,
    /// `increment c12 (key ...)`.
    pub(crate) what: String,
    /// Each attempt: gateway, answer, how long it took.
    pub(crate) attempts: Vec<String>,
}

/// The load's totals.
#[derive(Debug, Default)]
pub(crate) struct LoadResult {
    /// Increments per id index.
    pub(crate) tallies: BTreeMap<u32, Tally>,
    /// Latency of each successful HTTP exchange, in microseconds, sorted.
    pub(crate) call_us: Vec<u64>,
    /// Latency of each answered request from its first attempt (resends included), sorted.
    pub(crate) request_us: Vec<u64>,
    pub(crate) elapsed: Duration,
    /// Requests that ended (answered, failed or given up).
    pub(crate) done: u64,
    /// Volatile `get` calls answered, and those never answered.
    pub(crate) gets: u64,
    pub(crate) gets_unanswered: u64,
    /// Resends, by the answer that caused them.
    pub(crate) resent: BTreeMap<String, u64>,
    /// Failures (not resent), by status and code.
    pub(crate) failures: BTreeMap<String, u64>,
    /// `get` replies below a value an earlier acknowledged increment had returned.
    pub(crate) stale_reads: Vec<String>,
    /// The request that took longest.
    pub(crate) slowest: Option<Slowest>,
}

impl LoadResult {
    pub(crate) fn acked(&self) -> u64 {
        self.tallies.values().map(|t| t.acked).sum()
    }

    pub(crate) fn unacked(&self) -> u64 {
        self.tallies.values().map(|t| t.unacked).sum()
    }

    pub(crate) fn failed(&self) -> u64 {
        self.tallies.values().map(|t| t.failed).sum::<u64>() + self.gets_unanswered
    }

    pub(crate) fn resends(&self) -> u64 {
        self.resent.values().sum()
    }

    /// The `q` quantile of `sorted` (microseconds).
    pub(crate) fn quantile(sorted: &[u64], q: f64) -> Duration {
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let index = ((sorted.len() - 1) as f64 * q).round() as usize;
        Duration::from_micros(sorted[index])
    }
}

/// A running load.
pub(crate) struct Load {
    plan: Plan,
    counters: Arc<Counters>,
    callers: Vec<JoinHandle<CallerResult>>,
    started: Instant,
}

impl Load {
    /// Starts `plan.concurrency` caller threads; `run` makes the idempotency keys unique. Every
    /// reply goes to `ledger`.
    pub(crate) fn start(
        plan: Plan,
        gateways: SharedGateways,
        run: &str,
        ledger: &SharedLedger,
    ) -> Self {
        let counters = Arc::new(Counters::default());
        let floors: Arc<Vec<AtomicI64>> =
            Arc::new((0..plan.ids).map(|_| AtomicI64::new(0)).collect());
        let started = Instant::now();
        let callers = (0..plan.concurrency)
            .map(|_| {
                let caller = Caller {
                    plan,
                    counters: counters.clone(),
                    gateways: gateways.clone(),
                    floors: floors.clone(),
                    run: run.to_owned(),
                    client: Client::new(Duration::from_millis(CALL_DEADLINE_MS * 2)),
                    recorder: Recorder::new(ledger.clone()),
                    started,
                    out: CallerResult::default(),
                };
                std::thread::spawn(move || caller.run())
            })
            .collect();
        Self {
            plan,
            counters,
            callers,
            started,
        }
    }

    /// How far the load is, from 0 to 1 (by time for a soak run).
    pub(crate) fn progress(&self) -> f64 {
        if let Some(run_for) = self.plan.run_for {
            return (self.started.elapsed().as_secs_f64() / run_for.as_secs_f64().max(0.001))
                .min(1.0);
        }
        let done = self.counters.done.load(Ordering::Relaxed) as f64;
        (done / self.plan.requests.max(1) as f64).min(1.0)
    }

    /// The counters now.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let c = &self.counters;
        Snapshot {
            done: c.done.load(Ordering::Relaxed),
            acked: c.acked.load(Ordering::Relaxed),
            gets: c.gets.load(Ordering::Relaxed),
            resent: c.resent.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            codes: c.codes.lock().map(|c| c.clone()).unwrap_or_default(),
        }
    }

    /// Whether every caller has finished.
    pub(crate) fn is_done(&self) -> bool {
        self.callers.iter().all(JoinHandle::is_finished)
    }

    /// A one-line progress report.
    pub(crate) fn line(&self, gateways: usize) -> String {
        let c = &self.counters;
        let done = c.done.load(Ordering::Relaxed);
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        format!(
            "[load] {:>3.0}% {done}/{} | increments acked {} | gets {} | resent {} | failed {} | {:.0} req/s | gateways {gateways}",
            self.progress() * 100.0,
            self.plan.requests,
            c.acked.load(Ordering::Relaxed),
            c.gets.load(Ordering::Relaxed),
            c.resent.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed),
            done as f64 / elapsed,
        )
    }

    /// Stops the callers after their current request (used when the run is aborted).
    pub(crate) fn stop(&self) {
        self.counters.stop.store(true, Ordering::Release);
    }

    /// Waits for the callers and merges what they saw.
    pub(crate) fn finish(self) -> LoadResult {
        let mut result = LoadResult::default();
        for caller in self.callers {
            let Ok(c) = caller.join() else {
                result
                    .failures
                    .entry("a caller thread panicked".to_owned())
                    .and_modify(|n| *n += 1)
                    .or_insert(1);
                continue;
            };
            for (id, tally) in c.tallies {
                let merged = result.tallies.entry(id).or_default();
                merged.acked += tally.acked;
                merged.unacked += tally.unacked;
                merged.failed += tally.failed;
                merged.replies.extend(tally.replies);
            }
            result.call_us.extend(c.call_us);
            result.request_us.extend(c.request_us);
            result.gets += c.gets;
            result.gets_unanswered += c.gets_unanswered;
            result.stale_reads.extend(c.stale_reads);
            if let Some(slow) = c.slowest
                && result
                    .slowest
                    .as_ref()
                    .is_none_or(|s| s.elapsed < slow.elapsed)
            {
                result.slowest = Some(slow);
            }
            for (into, from) in [
                (&mut result.resent, c.resent),
                (&mut result.failures, c.failures),
            ] {
                for (k, v) in from {
                    *into.entry(k).or_default() += v;
                }
            }
        }
        result.call_us.sort_unstable();
        result.request_us.sort_unstable();
        result.elapsed = self.started.elapsed();
        result.done = self.counters.done.load(Ordering::Relaxed);
        result
    }
}

/// One caller thread.
struct Caller {
    plan: Plan,
    counters: Arc<Counters>,
    gateways: SharedGateways,
    /// Per id, the largest value an acknowledged increment returned (a `get` sent later must not
    /// read less).
    floors: Arc<Vec<AtomicI64>>,
    run: String,
    client: Client,
    recorder: Recorder,
    /// When the load started.
    started: Instant,
    out: CallerResult,
}

/// How a request ended.
enum Ended {
    /// Answered with this reply, to the attempt sent at that instant.
    Value(Reply, Instant),
    /// Answered 200 with a body that is not a number, or failed for good.
    Failed,
    /// Never answered within [`RESEND_FOR`].
    GaveUp,
    /// The load was stopped.
    Stopped,
}

impl Caller {
    fn run(mut self) -> CallerResult {
        loop {
            if self.counters.stop.load(Ordering::Acquire) {
                break;
            }
            if self
                .plan
                .run_for
                .is_some_and(|run_for| self.started.elapsed() >= run_for)
            {
                break;
            }
            let n = self.counters.issued.fetch_add(1, Ordering::Relaxed);
            if n >= self.plan.requests {
                break;
            }
            if is_get(n) {
                self.get(n);
            } else {
                self.increment(n);
            }
            self.counters.done.fetch_add(1, Ordering::Relaxed);
        }
        self.out
    }

    fn increment(&mut self, n: u64) {
        let index = increment_id(n, self.plan.ids);
        let id = id_name(index);
        let key = format!("{}-{n}", self.run);
        let call = Call {
            id: &id,
            tag: "increment",
            body: INCREMENT_BODY,
            key: Some(&key),
            deadline_ms: CALL_DEADLINE_MS,
        };
        let first = Instant::now();
        let ended = self.send(n, call);
        let tally = self.out.tallies.entry(index).or_default();
        match ended {
            Ended::Value(reply, _) => {
                // Any attempt may have been the one applied: served since the first.
                self.recorder.record(index, true, &reply, first);
                let value = reply.value;
                tally.acked += 1;
                tally.replies.push(value);
                self.floors[index as usize].fetch_max(value, Ordering::AcqRel);
                self.counters.acked.fetch_add(1, Ordering::Relaxed);
            }
            Ended::Failed => tally.failed += 1,
            Ended::GaveUp => tally.unacked += 1,
            Ended::Stopped => {}
        }
    }

    /// Gets read random ids.
    fn get(&mut self, n: u64) {
        let index = (splitmix64(n) % u64::from(self.plan.ids)) as u32;
        let id = id_name(index);
        let floor = self.floors[index as usize].load(Ordering::Acquire);
        let call = Call {
            id: &id,
            tag: "get",
            body: GET_BODY,
            key: None,
            deadline_ms: CALL_DEADLINE_MS,
        };
        match self.send(n, call) {
            Ended::Value(reply, sent) => {
                self.recorder.record(index, false, &reply, sent);
                let value = reply.value;
                self.out.gets += 1;
                self.counters.gets.fetch_add(1, Ordering::Relaxed);
                if value < floor {
                    self.out.stale_reads.push(format!(
                        "{id}: get returned {value} after an increment had been acknowledged with {floor}"
                    ));
                }
            }
            Ended::Failed | Ended::GaveUp => self.out.gets_unanswered += 1,
            Ended::Stopped => {}
        }
    }

    /// Sends `call` through the live gateways (a different one on each attempt) until it is
    /// answered, fails for good, or [`RESEND_FOR`] passes.
    fn send(&mut self, n: u64, call: Call<'_>) -> Ended {
        let first = Instant::now();
        let mut attempt = n;
        let mut backoff = Duration::from_millis(10);
        let mut trail = Vec::new();
        let ended = loop {
            if self.counters.stop.load(Ordering::Acquire) {
                break Ended::Stopped;
            }
            if first.elapsed() > RESEND_FOR {
                *self
                    .out
                    .failures
                    .entry(format!(
                        "{} not answered within {} s",
                        call.tag,
                        RESEND_FOR.as_secs()
                    ))
                    .or_default() += 1;
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                break Ended::GaveUp;
            }
            let Some(gateway) = self.gateways.pick(attempt) else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            attempt = attempt.wrapping_add(1);
            let sent = Instant::now();
            let outcome = self.client.call(&gateway, call);
            let label = match &outcome {
                Outcome::Ok(_) => "200",
                Outcome::Refused(l) | Outcome::Unknown(l) | Outcome::Failed(l) => l,
            };
            trail.push(format!(
                "{label} via {gateway} in {}",
                super::report::fmt_duration(sent.elapsed())
            ));
            match outcome {
                Outcome::Ok(body) => {
                    self.out.call_us.push(micros(sent.elapsed()));
                    self.out.request_us.push(micros(first.elapsed()));
                    break match parse_reply(&body) {
                        Some(reply) => Ended::Value(reply, sent),
                        None => {
                            *self
                                .out
                                .failures
                                .entry(format!("{}: 200 with body {body:?}", call.tag))
                                .or_default() += 1;
                            self.counters.failed.fetch_add(1, Ordering::Relaxed);
                            Ended::Failed
                        }
                    };
                }
                Outcome::Failed(label) => {
                    let label = format!("{}: {label}", call.tag);
                    self.counters.count_code(&label);
                    *self.out.failures.entry(label).or_default() += 1;
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    break Ended::Failed;
                }
                Outcome::Refused(label) | Outcome::Unknown(label) => {
                    self.counters.count_code(&label);
                    *self.out.resent.entry(label).or_default() += 1;
                    self.counters.resent.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
            }
        };
        let elapsed = first.elapsed();
        if self
            .out
            .slowest
            .as_ref()
            .is_none_or(|s| s.elapsed < elapsed)
        {
            self.out.slowest = Some(Slowest {
                elapsed,
                what: match call.key {
                    Some(key) => format!("{} {} (idempotency key {key})", call.tag, call.id),
                    None => format!("{} {}", call.tag, call.id),
                },
                attempts: trail,
            });
        }
        ended
    }
}

/// Whether request `n` is a volatile `get` (else a persisted increment).
pub(crate) fn is_get(n: u64) -> bool {
    n % GET_EVERY == GET_EVERY - 1
}

/// The id index increment request `n` goes to: round-robin over the ids, so every id gets its
/// share.
pub(crate) fn increment_id(n: u64, ids: u32) -> u32 {
    let ordinal = n - n / GET_EVERY;
    (ordinal % u64::from(ids)) as u32
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A well-mixed hash of `n` (SplitMix64), to pick ids for reads.
fn splitmix64(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// When the last id of a sweep answered (`None`: not all did) and the values read.
type Sweep = (Option<Duration>, BTreeMap<u32, i64>);

/// Asks every id for its value (`get`) until all have answered or `timeout` passes; returns when
/// the last one answered, measured from `since`, and the values. Every reply goes to `ledger`.
pub(crate) fn read_all(
    gateways: &SharedGateways,
    ids: u32,
    since: Instant,
    timeout: Duration,
    deadline_ms: u64,
    ledger: &SharedLedger,
) -> Sweep {
    const THREADS: u32 = 16;
    let workers: Vec<JoinHandle<Sweep>> = (0..THREADS)
        .map(|t| {
            let gateways = gateways.clone();
            let mut recorder = Recorder::new(ledger.clone());
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
                        let id = id_name(index);
                        let call = Call {
                            id: &id,
                            tag: "get",
                            body: GET_BODY,
                            key: None,
                            deadline_ms,
                        };
                        let sent = Instant::now();
                        match client.call(&gateway, call) {
                            Outcome::Ok(body) => match parse_reply(&body) {
                                Some(reply) => {
                                    recorder.record(index, false, &reply, sent);
                                    values.insert(index, reply.value);
                                    last = Some(since.elapsed());
                                    false
                                }
                                None => true,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increments_cover_every_id_evenly() {
        let plan = Plan {
            requests: 4_000,
            ids: 1000,
            concurrency: 1,
            run_for: None,
        };
        let mut per_id = vec![0u32; plan.ids as usize];
        for n in (0..plan.requests).filter(|&n| !is_get(n)) {
            per_id[increment_id(n, plan.ids) as usize] += 1;
        }
        assert_eq!(plan.increments(), 3_000);
        assert!(per_id.iter().all(|&n| n == 3), "{per_id:?}");
    }
}
