//! Measuring how long the entities stop answering after a fault: every counter is asked `get`
//! (with a 100 ms deadline) through the gateways, about once a second while it answers and
//! every few milliseconds while it does not, from the fault's start until a while after the
//! fault healed. An **outage** of a counter runs from the first call that failed to the next
//! that answered.
//!
//! - *answered again*: from the fault's start until every counter that stopped answering because
//!   of the fault answered again. For a freeze, a partition or a storage fault, that is the end of
//!   each counter's first outage begun before the fault healed, and the outages begun after the
//!   healing (a runner back from a freeze taking its share again) are reported apart, measured
//!   from the healing; for a SIGKILL or a restart, every outage seen is the fault's;
//! - *settled*: from the fault's start until the last outage seen ended.
//!
//! The watch ends when, `linger` after the fault healed, every counter has answered since and
//! none is out; or `WATCH_FOR` after the healing (outages still open are reported as such).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::faults::WATCH_FOR;
use super::http::{Call, Client, Outcome};
use super::load::id_name;
use super::runners::SharedGateways;
use super::served::{GET_BODY, Recorder, SharedLedger, parse_reply};

/// Threads asking (a failing call can take its whole deadline: more threads keep the figure
/// precise).
const THREADS: u32 = 96;
/// The deadline of each call.
const DEADLINE_MS: u64 = 100;
/// How often a counter that answers is asked again.
const HEALTHY_EVERY: Duration = Duration::from_secs(1);
/// How soon a counter that did not answer is asked again.
const FAILING_EVERY: Duration = Duration::from_millis(20);

/// What a probe measured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ProbeReport {
    /// Counters that stopped answering at least once.
    pub(crate) unavailable: usize,
    /// From the fault's start until every counter out during the fault answered again (`None`:
    /// some never did while watched).
    pub(crate) answered: Option<Duration>,
    /// Counters with an outage begun after the fault healed, and from the healing until the last
    /// of those ended.
    pub(crate) after_heal: (usize, Option<Duration>),
    /// From the fault's start until the last outage ended.
    pub(crate) settled: Option<Duration>,
    /// Counters still out when the watch ended.
    pub(crate) still_out: usize,
    /// From the fault's start until the watch ended.
    pub(crate) watched: Duration,
}

/// How a fault ends, for the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Healing {
    /// At once (a SIGKILL): every outage is the fault's.
    Instant,
    /// When [`Probe::healed`] is called (a restart): every outage is the fault's.
    Told,
    /// When [`Probe::healed`] is called, and the outages begun after it are reported apart (a
    /// runner back from a freeze or a partition, storage back).
    ToldApart,
}

/// A running probe.
pub(crate) struct Probe {
    healed: Arc<Mutex<Option<Instant>>>,
    exclude: Arc<RwLock<Option<String>>>,
    handle: JoinHandle<ProbeReport>,
}

/// What every probe thread shares.
struct Shared {
    /// Whether outages begun after the healing are reported apart.
    apart: bool,
    linger: Duration,
    healed: Arc<Mutex<Option<Instant>>>,
    exclude: Arc<RwLock<Option<String>>>,
    gateways: SharedGateways,
    ledger: SharedLedger,
    stop: AtomicBool,
}

impl Probe {
    /// Starts watching counters `0..ids` from `started` (the fault's start), for a fault that
    /// ends as `healing` says. Calls avoid the gateway `exclude` until the fault heals (a
    /// partitioned runner's gateway cannot reach the others). The watch lasts at least `linger`
    /// after the healing.
    pub(crate) fn start(
        started: Instant,
        healing: Healing,
        linger: Duration,
        gateways: SharedGateways,
        ids: u32,
        ledger: SharedLedger,
        exclude: Option<String>,
    ) -> Self {
        let healed = Arc::new(Mutex::new((healing == Healing::Instant).then_some(started)));
        let apart = healing == Healing::ToldApart;
        let exclude = Arc::new(RwLock::new(exclude));
        let shared = Arc::new(Shared {
            apart,
            linger,
            healed: healed.clone(),
            exclude: exclude.clone(),
            gateways,
            ledger,
            stop: AtomicBool::new(false),
        });
        let handle = std::thread::spawn(move || {
            let threads: Vec<JoinHandle<Vec<IdWatch>>> = (0..THREADS.min(ids))
                .map(|t| {
                    let shared = shared.clone();
                    let mine: Vec<u32> = (t..ids).step_by(THREADS as usize).collect();
                    std::thread::spawn(move || watch(&shared, mine))
                })
                .collect();
            let mut watches = Vec::new();
            for thread in threads {
                match thread.join() {
                    Ok(w) => watches.extend(w),
                    Err(_) => shared.stop.store(true, Ordering::Release),
                }
            }
            let healed = lock(&shared.healed).unwrap_or(started);
            let mut report = summarize(&watches, started, healed, apart);
            report.watched = started.elapsed();
            report
        });
        Self {
            healed,
            exclude,
            handle,
        }
    }

    /// The fault healed now: calls may use every gateway again.
    pub(crate) fn healed(&self) {
        if let Ok(mut exclude) = self.exclude.write() {
            *exclude = None;
        }
        self.healed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert_with(Instant::now);
    }

    /// Waits for the end of the watch.
    pub(crate) fn finish(self) -> ProbeReport {
        self.healed();
        self.handle.join().unwrap_or_default()
    }
}

/// A copy of what `m` holds.
fn lock<T: Copy>(m: &Mutex<T>) -> T {
    *m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One counter's outages.
#[derive(Debug, Default, Clone)]
struct IdWatch {
    /// When its current outage began.
    out_since: Option<Instant>,
    /// The end of its first outage (begun before the healing, for a lasting fault).
    first_end: Option<Instant>,
    /// Whether its first outage is still open.
    first_open: bool,
    outages: u32,
    /// The end of its last outage.
    last_end: Option<Instant>,
    /// Whether it had an outage begun after the healing, and when the last such ended.
    after_heal: bool,
    after_heal_end: Option<Instant>,
    /// When it was last sent a call that answered.
    last_ok: Option<Instant>,
    next: Option<Instant>,
}

fn watch(shared: &Shared, ids: Vec<u32>) -> Vec<IdWatch> {
    let client = Client::new(Duration::from_millis(DEADLINE_MS * 2 + 1000));
    let mut recorder = Recorder::new(shared.ledger.clone());
    let mut state: Vec<IdWatch> = vec![IdWatch::default(); ids.len()];
    let mut turn: u64 = 0;
    loop {
        let healed = lock(&shared.healed);
        let now = Instant::now();
        if let Some(healed) = healed {
            let calm_since = healed + shared.linger;
            let done = now >= calm_since
                && state
                    .iter()
                    .all(|s| s.out_since.is_none() && s.last_ok.is_some_and(|t| t >= calm_since));
            if done || now > healed + WATCH_FOR || shared.stop.load(Ordering::Acquire) {
                return state;
            }
        }
        let mut asked = false;
        for (slot, &index) in ids.iter().enumerate() {
            let s = &mut state[slot];
            if s.next.is_some_and(|next| next > Instant::now()) {
                continue;
            }
            asked = true;
            turn += 1;
            let exclude = shared.exclude.read().ok().and_then(|e| e.clone());
            let Some(gateway) = shared
                .gateways
                .pick_except(u64::from(index) + turn, exclude.as_deref())
            else {
                s.next = Some(Instant::now() + FAILING_EVERY);
                continue;
            };
            let id = id_name(index);
            let call = Call {
                id: &id,
                tag: "get",
                body: GET_BODY,
                key: None,
                deadline_ms: DEADLINE_MS,
            };
            let sent = Instant::now();
            let reply = match client.call(&gateway, call) {
                Outcome::Ok(body) => parse_reply(&body),
                _ => None,
            };
            let healed = lock(&shared.healed);
            match reply {
                Some(reply) => {
                    recorder.record(index, false, &reply, sent);
                    let end = Instant::now();
                    if let Some(began) = s.out_since.take() {
                        s.last_end = Some(end);
                        if s.first_open {
                            s.first_end = Some(end);
                            s.first_open = false;
                        }
                        if shared.apart && healed.is_some_and(|h| began >= h) {
                            s.after_heal_end = Some(end);
                        }
                    }
                    s.last_ok = Some(sent);
                    s.next = Some(end + HEALTHY_EVERY);
                }
                None => {
                    if s.out_since.is_none() {
                        s.out_since = Some(sent);
                        s.outages += 1;
                        let after_heal = shared.apart && healed.is_some_and(|h| sent >= h);
                        if after_heal {
                            s.after_heal = true;
                        } else if s.first_end.is_none() && !s.first_open {
                            s.first_open = true;
                        }
                    }
                    s.next = Some(Instant::now() + FAILING_EVERY);
                }
            }
        }
        if !asked {
            let next = state.iter().filter_map(|s| s.next).min();
            let wait = next.map_or(FAILING_EVERY, |n| {
                n.saturating_duration_since(Instant::now())
            });
            std::thread::sleep(wait.clamp(Duration::from_millis(5), Duration::from_millis(100)));
        }
    }
}

/// The figures of the counters watched; with `apart`, outages begun after `healed` are not the
/// fault's own (else every outage is).
fn summarize(watches: &[IdWatch], started: Instant, healed: Instant, apart: bool) -> ProbeReport {
    let since = |t: Instant| t.saturating_duration_since(started);
    let unavailable = watches.iter().filter(|w| w.outages > 0).count();
    let still_out = watches.iter().filter(|w| w.out_since.is_some()).count();
    let settled = (still_out == 0).then(|| {
        watches
            .iter()
            .filter_map(|w| w.last_end)
            .map(since)
            .max()
            .unwrap_or_default()
    });
    let answered = if !apart {
        settled
    } else if watches.iter().any(|w| w.first_open) {
        None
    } else {
        Some(
            watches
                .iter()
                .filter_map(|w| w.first_end)
                .map(since)
                .max()
                .unwrap_or_default(),
        )
    };
    let after: Vec<&IdWatch> = watches.iter().filter(|w| w.after_heal).collect();
    let after_end = if after.iter().any(|w| w.out_since.is_some()) {
        None
    } else {
        Some(
            after
                .iter()
                .filter_map(|w| w.after_heal_end)
                .map(|t| t.saturating_duration_since(healed))
                .max()
                .unwrap_or_default(),
        )
    };
    ProbeReport {
        unavailable,
        answered,
        after_heal: (after.len(), after_end),
        settled,
        still_out,
        watched: Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Option<Instant> {
        Some(base + Duration::from_millis(ms))
    }

    #[test]
    fn summarizes_outages() {
        let base = Instant::now();
        let healed = base + Duration::from_millis(6000);
        let watches = vec![
            // Never out.
            IdWatch::default(),
            // Out from the start until a takeover at 2.6 s.
            IdWatch {
                first_end: at(base, 2600),
                last_end: at(base, 2600),
                outages: 1,
                ..IdWatch::default()
            },
            // Out at 2.1 s; then again after the healing, until 6.3 s.
            IdWatch {
                first_end: at(base, 2100),
                last_end: at(base, 6300),
                outages: 2,
                after_heal: true,
                after_heal_end: at(base, 6300),
                ..IdWatch::default()
            },
        ];
        let report = summarize(&watches, base, healed, true);
        assert_eq!(
            report,
            ProbeReport {
                unavailable: 2,
                answered: Some(Duration::from_millis(2600)),
                after_heal: (1, Some(Duration::from_millis(300))),
                settled: Some(Duration::from_millis(6300)),
                still_out: 0,
                watched: Duration::ZERO,
            }
        );
        // One still out.
        let mut open = watches;
        open.push(IdWatch {
            out_since: at(base, 100),
            first_open: true,
            outages: 1,
            ..IdWatch::default()
        });
        // Every outage the fault's: answered again when the last ended.
        let all = summarize(&open[..3], base, healed, false);
        assert_eq!(all.answered, Some(Duration::from_millis(6300)));
        let report = summarize(&open, base, healed, true);
        assert_eq!(report.answered, None);
        assert_eq!(report.settled, None);
        assert_eq!(report.still_out, 1);
    }
}
