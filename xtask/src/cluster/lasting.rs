//! Faults that last: the harness applies them, holds them for their length while a probe
//! measures what the entities do, heals them, and keeps watching until the cluster settled.
//! `freeze` (SIGSTOP, then SIGCONT), `partition`, `storage-latency`, `storage-cut`, and
//! `pg-restart` (held for as long as the restart takes).

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::faults::{WATCH_FOR, Watch};
use super::findings::{Active, Finding};
use super::probe::Probe;
use super::report::fmt_duration;

/// A lasting fault, applied, to hold and heal.
pub(crate) struct Hold {
    /// When, as a share of the load.
    pub(crate) at: f64,
    /// Short: `freeze runner 2 for 6.00 s`.
    pub(crate) fault: String,
    /// When it was applied.
    pub(crate) started: Instant,
    /// How long to hold it before healing.
    pub(crate) length: Duration,
    /// What recovery should take, when there is a target.
    pub(crate) target: Option<Duration>,
    /// How the report names the start and the healing: `("SIGSTOP", "SIGCONT")`.
    pub(crate) words: (&'static str, &'static str),
    pub(crate) probe: Probe,
}

/// Holds `hold` for its length, heals it with `heal` (which says what it did, or fails), and
/// pushes the finding when the probe is done. The fault stays in effect (`active`) until then.
pub(crate) fn hold(
    hold: Hold,
    watch: Watch,
    active: Active,
    heal: impl FnOnce() -> Result<String> + Send + 'static,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        // The fault's length, not a synchronization: the fault is what this thread waits out.
        std::thread::sleep(hold.length.saturating_sub(hold.started.elapsed()));
        let healed = heal();
        hold.probe.healed();
        let probe = hold.probe.finish();
        let (began, ended) = hold.words;
        let mut finding = Finding::line(hold.at, hold.started, hold.fault.clone(), String::new());
        finding.unavailable = Some(probe.unavailable);
        finding.recovery = probe.answered;
        finding.settled = probe.settled;
        finding.watched = Some(probe.watched);
        finding.target = hold.target;
        let mut line = format!("{} at {:.0}%: ", hold.fault, hold.at * 100.0);
        let target = hold.target.map_or_else(String::new, |t| {
            format!("target lease TTL + 0.5 s = {}; ", fmt_duration(t))
        });
        match probe.answered {
            Some(_) if probe.unavailable == 0 => line.push_str("no entity stopped answering"),
            Some(after) => line.push_str(&format!(
                "every entity answered again {} after {began} ({target}{} had stopped answering)",
                fmt_duration(after),
                probe.unavailable
            )),
            None => {
                line.push_str(&format!(
                    "{} entities never answered again",
                    probe.still_out
                ));
                finding.violations.push(format!(
                    "after {}, {} entities did not answer within {} s of {ended}",
                    hold.fault,
                    probe.still_out,
                    WATCH_FOR.as_secs()
                ));
            }
        }
        // Only faults whose probe reports them apart have outages after the healing.
        if probe.after_heal.0 > 0 {
            match probe.after_heal.1 {
                Some(back) => line.push_str(&format!(
                    "; after {ended}, {} stopped answering again, all back {} later",
                    probe.after_heal.0,
                    fmt_duration(back)
                )),
                None => line.push_str(&format!(
                    "; after {ended}, {} stopped answering again",
                    probe.after_heal.0
                )),
            }
        }
        if let Some(settled) = probe.settled
            && probe.unavailable > 0
        {
            line.push_str(&format!(
                "; the last outage ended {} after {began}",
                fmt_duration(settled)
            ));
        }
        match healed {
            Ok(note) if !note.is_empty() => line.push_str(&format!("; {note}")),
            Ok(_) => {}
            Err(e) => finding
                .violations
                .push(format!("{}: could not heal: {e:#}", hold.fault)),
        }
        finding.line = line;
        watch.log.push(finding);
        drop(active);
    })
}
