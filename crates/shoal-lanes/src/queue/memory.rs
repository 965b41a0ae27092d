//! An in-process queue: for tests, single-process deployments and local development.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{EventQueue, QueueError};
use crate::envelope::{DeadLetter, Envelope, NewEnvelope};

/// Counters of a [`MemoryQueue`], for tests and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages enqueued.
    pub enqueued: u64,
    /// Deliveries handed out.
    pub delivered: u64,
    /// Messages acknowledged.
    pub acked: u64,
    /// Retries scheduled.
    pub retried: u64,
    /// Deliveries given back uncounted.
    pub released: u64,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
    /// Messages waiting (ready or delayed).
    pub waiting: usize,
    /// Messages delivered and not yet settled.
    pub in_flight: usize,
    /// The most messages ever in flight at once.
    pub max_in_flight: usize,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    ready: VecDeque<Envelope>,
    delayed: BinaryHeap<Reverse<(Instant, u64)>>,
    delayed_messages: HashMap<u64, Envelope>,
    in_flight: HashMap<String, (Envelope, Instant)>,
    dead: Vec<DeadLetter>,
    stats: QueueStats,
    closed: bool,
}

impl State {
    fn promote_due(&mut self, now: Instant) {
        // Claims whose visibility timeout passed come back (a consumer died mid-message).
        let expired: Vec<String> = self
            .in_flight
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some((message, _)) = self.in_flight.remove(&id) {
                self.ready.push_back(message);
            }
        }
        while let Some(Reverse((due, seq))) = self.delayed.peek().copied() {
            if due > now {
                break;
            }
            self.delayed.pop();
            if let Some(message) = self.delayed_messages.remove(&seq) {
                self.ready.push_back(message);
            }
        }
    }

    fn schedule(&mut self, message: Envelope, delay: Duration) {
        if delay.is_zero() {
            self.ready.push_back(message);
        } else {
            self.next_id += 1;
            let seq = self.next_id;
            self.delayed.push(Reverse((Instant::now() + delay, seq)));
            self.delayed_messages.insert(seq, message);
        }
    }

    fn settle(&mut self, message: &Envelope) -> Result<Envelope, QueueError> {
        match self.in_flight.get(&message.id) {
            Some((held, _)) if held.attempts == message.attempts => self
                .in_flight
                .remove(&message.id)
                .map(|(held, _)| held)
                .ok_or_else(|| QueueError::ClaimLost {
                    id: message.id.clone(),
                }),
            _ => Err(QueueError::ClaimLost {
                id: message.id.clone(),
            }),
        }
    }
}

/// An in-process [`EventQueue`]: FIFO, delayed retries on a timer (never in a consumer slot),
/// attempts counted per message, a visibility timeout on claims, dead letters kept in memory.
/// Nothing survives the process.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), shoal_lanes::QueueError> {
/// use shoal_lanes::{CallContext, EventQueue, MemoryQueue, NewEnvelope};
///
/// let queue = MemoryQueue::new("demo");
/// queue.enqueue(NewEnvelope {
///     lane: "emails".into(), event: "users:signed-up".into(), payload: "{}".into(),
///     source: "local".into(), context: CallContext::new(), auth_token: None,
/// }).await?;
/// let batch = queue.receive(10).await?;
/// assert_eq!(batch[0].attempts, 1);
/// queue.ack(&batch[0]).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct MemoryQueue {
    name: String,
    state: Mutex<State>,
    wake: Notify,
    visibility_timeout: Duration,
}

impl MemoryQueue {
    /// An empty queue named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        MemoryQueue {
            name: name.into(),
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            visibility_timeout: Duration::from_secs(30),
        }
    }

    /// How long a delivered message may stay unsettled before it is delivered again (default
    /// 30 s), as if its consumer had died.
    pub fn with_visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = timeout;
        self
    }

    /// The counters.
    pub fn stats(&self) -> QueueStats {
        let state = self.state.lock();
        QueueStats {
            waiting: state.ready.len() + state.delayed_messages.len(),
            in_flight: state.in_flight.len(),
            ..state.stats
        }
    }

    /// The dead letters so far.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.state.lock().dead.clone()
    }

    /// Copies of the waiting messages (ready first, then delayed), for inspection.
    pub fn waiting(&self) -> Vec<Envelope> {
        let state = self.state.lock();
        state
            .ready
            .iter()
            .chain(state.delayed_messages.values())
            .cloned()
            .collect()
    }
}

#[async_trait]
impl EventQueue for MemoryQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn enqueue(&self, message: NewEnvelope) -> Result<String, QueueError> {
        let id = {
            let mut state = self.state.lock();
            if state.closed {
                return Err(QueueError::Closed);
            }
            state.next_id += 1;
            let id = format!("mem-{}", state.next_id);
            let envelope = Envelope::accepted(id.clone(), message, crate::auth::now_ms());
            state.ready.push_back(envelope);
            state.stats.enqueued += 1;
            id
        };
        self.wake.notify_waiters();
        Ok(id)
    }

    async fn receive(&self, max: usize) -> Result<Vec<Envelope>, QueueError> {
        let max = max.max(1);
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next_due = {
                let mut state = self.state.lock();
                if state.closed {
                    return Err(QueueError::Closed);
                }
                state.promote_due(Instant::now());
                if !state.ready.is_empty() {
                    let mut batch = Vec::new();
                    while batch.len() < max {
                        let Some(mut message) = state.ready.pop_front() else {
                            break;
                        };
                        message.attempts += 1;
                        let deadline = Instant::now() + self.visibility_timeout;
                        state
                            .in_flight
                            .insert(message.id.clone(), (message.clone(), deadline));
                        batch.push(message);
                    }
                    state.stats.delivered += batch.len() as u64;
                    state.stats.max_in_flight =
                        state.stats.max_in_flight.max(state.in_flight.len());
                    return Ok(batch);
                }
                let next_delayed = state.delayed.peek().map(|Reverse((due, _))| *due);
                let next_expiry = state
                    .in_flight
                    .values()
                    .map(|(_, deadline)| *deadline)
                    .min();
                next_delayed.into_iter().chain(next_expiry).min()
            };
            match next_due {
                Some(due) => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(due) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    async fn ack(&self, message: &Envelope) -> Result<(), QueueError> {
        let mut state = self.state.lock();
        state.settle(message)?;
        state.stats.acked += 1;
        Ok(())
    }

    async fn retry(&self, message: &Envelope, delay: Duration) -> Result<(), QueueError> {
        {
            let mut state = self.state.lock();
            let held = state.settle(message)?;
            state.schedule(held, delay);
            state.stats.retried += 1;
        }
        self.wake.notify_waiters();
        Ok(())
    }

    async fn release(&self, message: &Envelope, delay: Duration) -> Result<(), QueueError> {
        {
            let mut state = self.state.lock();
            let mut held = state.settle(message)?;
            held.attempts = held.attempts.saturating_sub(1);
            state.schedule(held, delay);
            state.stats.released += 1;
        }
        self.wake.notify_waiters();
        Ok(())
    }

    async fn dead_letter(&self, message: &Envelope, reason: &str) -> Result<(), QueueError> {
        let mut state = self.state.lock();
        let held = state.settle(message)?;
        state.dead.push(DeadLetter {
            envelope: held,
            reason: reason.to_owned(),
        });
        state.stats.dead_lettered += 1;
        Ok(())
    }

    async fn close(&self) {
        self.state.lock().closed = true;
        self.wake.notify_waiters();
    }
}
