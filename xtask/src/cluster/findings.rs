//! What the faults did: one finding per fault, pushed by the threads that watch them, and the
//! faults still in effect (a fault waits until those before it have ended and the cluster
//! recovered from them).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::served::Served;

/// What one fault did.
#[derive(Debug, Clone)]
pub(crate) struct Finding {
    /// When, as a share of the load.
    pub(crate) at: f64,
    /// When it began.
    pub(crate) started: Instant,
    /// Short: `freeze runner 2 for 6.00 s`.
    pub(crate) fault: String,
    /// The report's line.
    pub(crate) line: String,
    /// Counters that stopped answering, when measured.
    pub(crate) unavailable: Option<usize>,
    /// From its start until every entity answered again, when measured.
    pub(crate) recovery: Option<Duration>,
    /// What recovery should take (reported, not asserted).
    pub(crate) target: Option<Duration>,
    /// From its start until the last outage it caused ended, when measured.
    pub(crate) settled: Option<Duration>,
    /// From its start until its watch ended, when watched.
    pub(crate) watched: Option<Duration>,
    /// Invariants it broke.
    pub(crate) violations: Vec<String>,
}

impl Finding {
    /// A finding with only a line.
    pub(crate) fn line(at: f64, started: Instant, fault: String, line: String) -> Self {
        Self {
            at,
            started,
            fault,
            line,
            unavailable: None,
            recovery: None,
            target: None,
            settled: None,
            watched: None,
            violations: Vec::new(),
        }
    }
}

/// The findings of a run, shared.
#[derive(Debug, Default)]
pub(crate) struct FaultLog {
    findings: Mutex<Vec<Finding>>,
    active: AtomicUsize,
    injected: AtomicUsize,
}

/// Shared handle.
pub(crate) type SharedLog = Arc<FaultLog>;

/// Held while a fault is in effect or being watched; the next fault waits until none is held.
pub(crate) struct Active(SharedLog);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl FaultLog {
    pub(crate) fn push(&self, finding: Finding) {
        self.findings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(finding);
    }

    /// Counts a fault injected that the next one need not wait for.
    pub(crate) fn note(&self) {
        self.injected.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts a fault injected, in effect until the [`Active`] is dropped.
    pub(crate) fn injected(self: &Arc<Self>) -> Active {
        self.injected.fetch_add(1, Ordering::AcqRel);
        self.active.fetch_add(1, Ordering::AcqRel);
        Active(self.clone())
    }

    /// Whether a fault is still in effect or watched.
    pub(crate) fn busy(&self) -> bool {
        self.active.load(Ordering::Acquire) > 0
    }

    /// Faults injected so far.
    pub(crate) fn count(&self) -> usize {
        self.injected.load(Ordering::Acquire)
    }

    /// The last finding with a recovery figure.
    pub(crate) fn last_recovery(&self) -> Option<(String, Duration)> {
        let findings = self.findings.lock().ok()?;
        findings
            .iter()
            .filter_map(|f| f.recovery.map(|r| (f.fault.clone(), r)))
            .next_back()
    }

    /// Every finding, in the order the faults began.
    pub(crate) fn take(&self) -> Vec<Finding> {
        let mut findings = std::mem::take(
            &mut *self
                .findings
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        findings.sort_by_key(|f| f.started);
        findings
    }
}

/// The longest time without an acknowledged increment from `from` to `to`, from the replies of
/// the run (those sorted by when they came back).
pub(crate) fn write_pause(served: &[Served], from: Instant, to: Instant) -> Duration {
    let mut last = from;
    let mut longest = Duration::ZERO;
    let start = served.partition_point(|s| s.received < from);
    for reply in served[start..].iter().filter(|s| s.write) {
        if reply.received > to {
            break;
        }
        longest = longest.max(reply.received - last);
        last = reply.received;
    }
    longest.max(to.saturating_duration_since(last))
}

/// The finding of the last fault begun at or before `at`.
pub(crate) fn fault_before(findings: &[Finding], at: Instant) -> Option<&Finding> {
    findings.iter().rev().find(|f| f.started <= at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::served::Owner;

    #[test]
    fn finds_the_longest_pause_in_acknowledged_increments() {
        let base = Instant::now();
        let ms = |n: u64| base + Duration::from_millis(n);
        let reply = |received: u64, write: bool| Served {
            id: 0,
            write,
            owner: Owner {
                epoch: 1,
                incarnation: 1,
                runner: "a:1".into(),
            },
            value: 0,
            sent: ms(0),
            received: ms(received),
        };
        let served = vec![
            reply(100, true),
            reply(200, true),
            reply(300, false),
            reply(1500, true),
            reply(1600, true),
        ];
        assert_eq!(
            write_pause(&served, ms(150), ms(1700)),
            Duration::from_millis(1300)
        );
        // Nothing acknowledged in the window: all of it.
        assert_eq!(
            write_pause(&served, ms(210), ms(1400)),
            Duration::from_millis(1190)
        );
    }

    #[test]
    fn counts_faults_in_effect() {
        let log = SharedLog::default();
        assert!(!log.busy());
        let active = log.injected();
        assert!(log.busy());
        drop(active);
        assert!(!log.busy());
        assert_eq!(log.count(), 1);
    }
}
