//! One session with a worker process: the outgoing queue, the calls awaiting replies, the entity
//! activations announced on it, the reader of the worker's messages and the heartbeat.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use shoal_protocol::EntityAddress;
use shoal_protocol::proto::worker::v1 as pb;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::kv::KvQueues;

/// A message on its way to the worker. A KV answer carries its session slot, given back when
/// the transport takes the message off the queue ([`Outgoing::into_message`]).
#[derive(Debug)]
pub(crate) struct Outgoing {
    message: pb::RunnerMessage,
    slot: Option<OwnedSemaphorePermit>,
}

impl Outgoing {
    /// A message that holds no KV slot.
    pub(crate) fn message(message: pb::RunnerMessage) -> Self {
        Self {
            message,
            slot: None,
        }
    }

    /// The message for the transport; the KV slot it held (if any) is free again.
    pub(crate) fn into_message(self) -> pb::RunnerMessage {
        drop(self.slot);
        self.message
    }
}

/// What happens to a call, as the reader sees it.
#[derive(Debug)]
pub(crate) enum CallEvent {
    /// The unary reply.
    Value(Bytes),
    /// One streamed item.
    Chunk(Bytes),
    /// The stream is complete.
    End,
    /// The worker failed the call.
    Failure(pb::Failure),
    /// The session ended before the reply.
    Lost(String),
}

impl CallEvent {
    fn is_final(&self) -> bool {
        !matches!(self, Self::Chunk(_))
    }
}

/// Why a session ended.
#[derive(Debug, Clone)]
pub(crate) struct CloseReason {
    /// For the message of failed calls: "worker `x` exited: {message}".
    pub(crate) message: String,
    /// The worker stopped answering heartbeats but its connection stayed open: it hangs.
    pub(crate) hung: bool,
}

#[derive(Debug, Default)]
struct Calls {
    /// Set once the session is closed: no call may be added after.
    closed: Option<String>,
    pending: HashMap<u64, mpsc::UnboundedSender<CallEvent>>,
}

#[derive(Debug, Default)]
struct Heartbeats {
    next: u64,
    /// The heartbeat sent and not yet answered, and when it was sent.
    outstanding: Option<(u64, Instant)>,
}

/// A live session with the worker. Shared by the calls running on it, its reader, its heartbeat
/// task and the supervisor.
#[derive(Debug)]
pub(crate) struct Session {
    /// Counts sessions of one host (1 for the first), for logs.
    pub(crate) number: u64,
    /// The worker's process id, as it reported it.
    pub(crate) pid: Option<u32>,
    shared: Arc<Shared>,
    outgoing: Mutex<Option<mpsc::UnboundedSender<Outgoing>>>,
    calls: Mutex<Calls>,
    /// Activations announced to the worker in this session.
    announced: Mutex<HashSet<u64>>,
    next_call: AtomicU64,
    heartbeats: Mutex<Heartbeats>,
    closed: CancellationToken,
    reason: Mutex<Option<CloseReason>>,
    pub(crate) opened_at: Instant,
    pub(crate) kv: KvQueues,
    /// One permit per KV request the runner may hold ([`crate::WorkerOptions::max_kv_in_flight`]).
    kv_slots: Arc<Semaphore>,
    kv_cap: usize,
    /// Whether this session already logged that the worker reached the KV cap.
    kv_cap_logged: AtomicBool,
}

impl Session {
    pub(crate) fn new(
        number: u64,
        pid: Option<u32>,
        shared: Arc<Shared>,
        outgoing: mpsc::UnboundedSender<Outgoing>,
        handshake_nonce: u64,
    ) -> Self {
        let kv_cap = shared
            .options
            .max_kv_in_flight
            .clamp(1, Semaphore::MAX_PERMITS);
        Self {
            number,
            pid,
            shared,
            outgoing: Mutex::new(Some(outgoing)),
            calls: Mutex::new(Calls::default()),
            announced: Mutex::new(HashSet::new()),
            next_call: AtomicU64::new(1),
            heartbeats: Mutex::new(Heartbeats {
                next: handshake_nonce + 1,
                outstanding: None,
            }),
            closed: CancellationToken::new(),
            reason: Mutex::new(None),
            opened_at: Instant::now(),
            kv: KvQueues::new(kv_cap),
            kv_slots: Arc::new(Semaphore::new(kv_cap)),
            kv_cap,
            kv_cap_logged: AtomicBool::new(false),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Queues a message to the worker (dropped when the session is closed).
    pub(crate) fn send(&self, kind: pb::runner_message::Kind) {
        if let Some(tx) = &*self.outgoing.lock() {
            let _ = tx.send(Outgoing::message(pb::RunnerMessage { kind: Some(kind) }));
        }
    }

    /// Queues the answer to a KV request; its `slot` is free again once the transport takes it
    /// (or at once when the session is closed).
    pub(crate) fn send_kv(&self, response: pb::KvResponse, slot: OwnedSemaphorePermit) {
        if let Some(tx) = &*self.outgoing.lock() {
            let _ = tx.send(Outgoing {
                message: pb::RunnerMessage {
                    kind: Some(pb::runner_message::Kind::Kv(response)),
                },
                slot: Some(slot),
            });
        }
    }

    /// KV requests of the worker the runner holds now: queued, running, or answered and not yet
    /// handed to the transport.
    pub(crate) fn kv_in_flight(&self) -> usize {
        self.kv_cap
            .saturating_sub(self.kv_slots.available_permits())
    }

    /// A slot for the next KV request; waits while the worker has the cap outstanding (the
    /// reader stops reading meanwhile). `None` when the session closed first.
    async fn kv_slot(&self) -> Option<OwnedSemaphorePermit> {
        match self.kv_slots.clone().try_acquire_owned() {
            Ok(slot) => return Some(slot),
            Err(TryAcquireError::Closed) => return None,
            Err(TryAcquireError::NoPermits) => {}
        }
        self.shared.kv_paused();
        if !self.kv_cap_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                worker = %self.shared.name,
                session = self.number,
                max_kv_in_flight = self.kv_cap,
                "the worker has max_kv_in_flight KV requests outstanding; the runner stops \
                 reading its session until one is answered (logged once per session)"
            );
        }
        tokio::select! {
            biased;
            () = self.closed.cancelled() => None,
            slot = self.kv_slots.clone().acquire_owned() => slot.ok(),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Waits until the session is closed, and says why.
    pub(crate) async fn closed(&self) -> CloseReason {
        self.closed.cancelled().await;
        self.reason.lock().clone().unwrap_or_else(|| CloseReason {
            message: "the session ended".to_owned(),
            hung: false,
        })
    }

    /// Closes the session: ends the outgoing stream, fails every pending call with `Lost`, stops
    /// the KV queues. The first reason given wins.
    pub(crate) fn close(&self, reason: CloseReason) {
        {
            let mut current = self.reason.lock();
            if current.is_some() {
                return;
            }
            *current = Some(reason.clone());
        }
        let pending = {
            let mut calls = self.calls.lock();
            calls.closed = Some(reason.message.clone());
            std::mem::take(&mut calls.pending)
        };
        self.outgoing.lock().take();
        self.kv.clear();
        self.kv_slots.close();
        self.announced.lock().clear();
        self.closed.cancel();
        for (_, tx) in pending {
            let _ = tx.send(CallEvent::Lost(reason.message.clone()));
        }
    }

    /// Announces `activation` to the worker unless it already was in this session. Called before
    /// every call; the `Activate` is queued before the call, so the worker sees it first.
    pub(crate) fn announce(&self, activation: u64, address: &EntityAddress) {
        let mut announced = self.announced.lock();
        if announced.insert(activation) {
            self.send(pb::runner_message::Kind::Activate(pb::Activate {
                activation_id: activation,
                entity: Some(entity_of(address)),
            }));
        }
    }

    /// Whether `activation` was announced in this session.
    pub(crate) fn is_announced(&self, activation: u64) -> bool {
        self.announced.lock().contains(&activation)
    }

    /// Tells the worker `activation` stopped (if it knew of it) and drops its KV queue.
    pub(crate) fn retire(&self, activation: u64, address: &EntityAddress) {
        if self.announced.lock().remove(&activation) {
            self.send(pb::runner_message::Kind::Deactivate(pb::Deactivate {
                activation_id: activation,
                entity: Some(entity_of(address)),
            }));
        }
        self.kv.remove(activation);
    }

    /// Registers a new call; `Err` with the close reason when the session is closed.
    pub(crate) fn register_call(
        &self,
    ) -> Result<(u64, mpsc::UnboundedReceiver<CallEvent>), String> {
        let mut calls = self.calls.lock();
        if let Some(reason) = &calls.closed {
            return Err(reason.clone());
        }
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        calls.pending.insert(id, tx);
        Ok((id, rx))
    }

    /// Forgets a call the runner stopped waiting for and tells the worker to cancel it.
    pub(crate) fn cancel_call(&self, call_id: u64) {
        let removed = self.calls.lock().pending.remove(&call_id).is_some();
        if removed {
            self.send(pb::runner_message::Kind::Cancel(pb::Cancel { call_id }));
        }
    }

    /// Routes a reply frame to its call (frames of unknown calls — cancelled ones — are dropped).
    fn deliver(&self, call_id: u64, event: CallEvent) {
        let sender = {
            let mut calls = self.calls.lock();
            if event.is_final() {
                calls.pending.remove(&call_id)
            } else {
                calls.pending.get(&call_id).cloned()
            }
        };
        match sender {
            Some(tx) => {
                let _ = tx.send(event);
            }
            None => tracing::debug!(call_id, "reply for a call no longer awaited; dropped"),
        }
    }

    /// Reads the worker's messages until the stream ends, then closes the session.
    pub(crate) async fn read(self: Arc<Self>, mut inbound: tonic::Streaming<pb::WorkerMessage>) {
        let message = loop {
            let next = tokio::select! {
                biased;
                () = self.closed.cancelled() => return,
                next = inbound.message() => next,
            };
            match next {
                Ok(Some(pb::WorkerMessage {
                    kind: Some(pb::worker_message::Kind::Kv(request)),
                })) => {
                    let Some(slot) = self.kv_slot().await else {
                        return;
                    };
                    self.kv.submit(&self, request, slot);
                }
                Ok(Some(message)) => self.dispatch(message),
                Ok(None) => break "it closed the session".to_owned(),
                Err(status) => break format!("the session broke ({})", status_text(&status)),
            }
        };
        self.close(CloseReason {
            message,
            hung: false,
        });
    }

    fn dispatch(self: &Arc<Self>, message: pb::WorkerMessage) {
        use pb::worker_message::Kind;
        match message.kind {
            Some(Kind::Reply(reply)) => {
                use pb::reply::Outcome;
                let event = match reply.outcome {
                    Some(Outcome::Value(value)) => CallEvent::Value(value),
                    Some(Outcome::Chunk(chunk)) => CallEvent::Chunk(chunk),
                    Some(Outcome::End(_)) => CallEvent::End,
                    Some(Outcome::Failure(failure)) => CallEvent::Failure(failure),
                    None => CallEvent::Failure(pb::Failure {
                        code: pb::FailureCode::Malformed as i32,
                        message: "the worker sent a reply without an outcome".to_owned(),
                    }),
                };
                self.deliver(reply.call_id, event);
            }
            // Taken by the reader, which needs a slot for it first.
            Some(Kind::Kv(_)) => {}
            Some(Kind::KeepAlive(keep)) => {
                if self.is_announced(keep.activation_id)
                    && let Some(activation) = self.shared.activation(keep.activation_id)
                {
                    activation.ctx.keep_alive(keep.enabled);
                }
            }
            Some(Kind::Heartbeat(beat)) if !beat.ack => {
                self.send(pb::runner_message::Kind::Heartbeat(pb::Heartbeat {
                    nonce: beat.nonce,
                    ack: true,
                }));
            }
            Some(Kind::Heartbeat(beat)) => {
                let mut beats = self.heartbeats.lock();
                if beats
                    .outstanding
                    .is_some_and(|(nonce, _)| nonce == beat.nonce)
                {
                    beats.outstanding = None;
                }
            }
            None => tracing::debug!("empty worker message ignored"),
        }
    }

    /// Sends a heartbeat every `interval`; closes the session when one stays unanswered for
    /// `timeout`.
    pub(crate) async fn beat(self: Arc<Self>, interval: Duration, timeout: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = self.closed.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let now = Instant::now();
            let nonce = {
                let mut beats = self.heartbeats.lock();
                match beats.outstanding {
                    Some((_, sent)) if now.duration_since(sent) >= timeout => None,
                    Some(_) => continue,
                    None => {
                        let nonce = beats.next;
                        beats.next += 1;
                        beats.outstanding = Some((nonce, now));
                        Some(nonce)
                    }
                }
            };
            match nonce {
                Some(nonce) => self.send(pb::runner_message::Kind::Heartbeat(pb::Heartbeat {
                    nonce,
                    ack: false,
                })),
                None => {
                    self.close(CloseReason {
                        message: format!("it did not answer a heartbeat within {timeout:?}"),
                        hung: true,
                    });
                    return;
                }
            }
        }
    }
}

/// The wire form of an entity address.
pub(crate) fn entity_of(address: &EntityAddress) -> pb::Entity {
    pb::Entity {
        entity_type: address.entity_type.to_string(),
        entity_id: address.entity_id.to_string(),
        shard: address.shard.to_string(),
    }
}

/// A gRPC status for a log line or error message.
pub(crate) fn status_text(status: &tonic::Status) -> String {
    if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {}", status.code(), status.message())
    }
}
