//! What the counter's replies say about who served them, and the ledger that keeps every reply
//! of a run for the ownership checker.
//!
//! The harness calls the counter with `"served_by": true`: it answers
//! `{"value": n, "runner": "host:port", "incarnation": "…", "epoch": n}`, with
//! `"replayed": true` when an increment had run before (its first reply was lost, for example
//! when storage failed as it was saved) and the reply repeats the value it returned then. A
//! replayed increment wrote nothing under the epoch it names, so it counts as a read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The body of an `increment` that asks who served it.
pub(crate) const INCREMENT_BODY: &str = r#"{"by":1,"served_by":true}"#;
/// The body of a `get` that asks who served it.
pub(crate) const GET_BODY: &str = r#"{"served_by":true}"#;

/// A counter's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) value: i64,
    pub(crate) runner: String,
    pub(crate) incarnation: u64,
    pub(crate) epoch: u64,
    /// It repeats an earlier reply: nothing was written under `epoch`.
    pub(crate) replayed: bool,
}

/// Reads a reply; `None` when the body is not a counter reply with who served it.
pub(crate) fn parse_reply(body: &str) -> Option<Reply> {
    let json: serde_json::Value = serde_json::from_str(body).ok()?;
    Some(Reply {
        value: json["value"].as_i64()?,
        runner: json["runner"].as_str()?.to_owned(),
        incarnation: u64::from_str_radix(json["incarnation"].as_str()?, 16).ok()?,
        epoch: json["epoch"].as_u64()?,
        replayed: json["replayed"].as_bool().unwrap_or(false),
    })
}

/// The lease a reply was served under: one runner process and one epoch of the entity's shard.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Owner {
    pub(crate) epoch: u64,
    pub(crate) incarnation: u64,
    pub(crate) runner: Arc<str>,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (incarnation {:016x}) under epoch {}",
            self.runner, self.incarnation, self.epoch
        )
    }
}

/// One reply as the harness saw it.
#[derive(Debug, Clone)]
pub(crate) struct Served {
    /// The counter's id index.
    pub(crate) id: u32,
    /// An acknowledged increment (a write), else a `get`.
    pub(crate) write: bool,
    pub(crate) owner: Owner,
    pub(crate) value: i64,
    /// The earliest moment the reply may have been made: when the request was first sent (an
    /// increment resent with its idempotency key may be answered by an earlier attempt).
    pub(crate) sent: Instant,
    /// When the reply came back.
    pub(crate) received: Instant,
}

/// Every reply of a run (shared by the load, the probes and the final reads).
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    served: Mutex<Vec<Served>>,
}

/// Shared handle.
pub(crate) type SharedLedger = Arc<Ledger>;

impl Ledger {
    /// Takes every reply recorded so far.
    pub(crate) fn take(&self) -> Vec<Served> {
        std::mem::take(&mut *self.served.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A thread's buffer of replies, flushed into the ledger in batches and when dropped.
pub(crate) struct Recorder {
    ledger: SharedLedger,
    buffer: Vec<Served>,
    runners: HashMap<String, Arc<str>>,
}

impl Recorder {
    pub(crate) fn new(ledger: SharedLedger) -> Self {
        Self {
            ledger,
            buffer: Vec::new(),
            runners: HashMap::new(),
        }
    }

    /// Records a reply to a call to counter `id` first sent at `sent` (`write`: an increment; a
    /// replayed one is recorded as a read).
    pub(crate) fn record(&mut self, id: u32, write: bool, reply: &Reply, sent: Instant) {
        let write = write && !reply.replayed;
        let runner = match self.runners.get(&reply.runner) {
            Some(runner) => runner.clone(),
            None => {
                let runner: Arc<str> = reply.runner.as_str().into();
                self.runners.insert(reply.runner.clone(), runner.clone());
                runner
            }
        };
        self.buffer.push(Served {
            id,
            write,
            owner: Owner {
                epoch: reply.epoch,
                incarnation: reply.incarnation,
                runner,
            },
            value: reply.value,
            sent,
            received: Instant::now(),
        });
        if self.buffer.len() >= 512 {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let mut served = self.ledger.served.lock().unwrap_or_else(|e| e.into_inner());
        served.append(&mut self.buffer);
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_replies_that_say_who_served_them() {
        let reply = parse_reply(
            r#"{"value":3,"runner":"127.0.0.1:7100","incarnation":"00000000000000ff","epoch":12}"#,
        )
        .unwrap();
        assert_eq!(
            reply,
            Reply {
                value: 3,
                runner: "127.0.0.1:7100".to_owned(),
                incarnation: 255,
                epoch: 12,
                replayed: false,
            }
        );
        assert_eq!(parse_reply("3"), None);
        assert_eq!(parse_reply(r#"{"value":3}"#), None);
    }

    #[test]
    fn recorders_fill_the_ledger() {
        let ledger = SharedLedger::default();
        let reply =
            parse_reply(r#"{"value":1,"runner":"a:1","incarnation":"1","epoch":1}"#).unwrap();
        {
            let mut recorder = Recorder::new(ledger.clone());
            for _ in 0..600 {
                recorder.record(0, true, &reply, Instant::now());
            }
            assert_eq!(ledger.served.lock().unwrap().len(), 512);
        }
        let all = ledger.take();
        assert_eq!(all.len(), 600);
        assert!(Arc::ptr_eq(&all[0].owner.runner, &all[599].owner.runner));
    }

    #[test]
    fn a_replayed_increment_is_recorded_as_a_read() {
        let ledger = SharedLedger::default();
        let reply = parse_reply(
            r#"{"value":1,"runner":"a:1","incarnation":"1","epoch":9,"replayed":true}"#,
        )
        .unwrap();
        assert!(reply.replayed);
        let mut recorder = Recorder::new(ledger.clone());
        recorder.record(0, true, &reply, Instant::now());
        drop(recorder);
        let all = ledger.take();
        assert!(all.iter().all(|served| !served.write), "{all:?}");
    }
}
