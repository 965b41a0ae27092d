//! The worker's side of one session: dispatching calls to handlers, cancelling them, routing KV
//! answers, answering heartbeats.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::FutureExt;
use futures::future::AbortHandle;
use parking_lot::Mutex;
use shoal_protocol::proto::worker::v1 as pb;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::context::{CallInfo, ChunkWriter, HandlerContext};
use crate::entity_type::Handler;
use crate::failure::HandlerFailure;
use crate::kv::{KvError, KvErrorKind};
use crate::service::Registry;

/// What a session's calls share: the outgoing queue, the running calls, the pending KV requests.
///
/// KV requests are bounded by `kv_slots` (the worker's `max_kv_in_flight`): a request holds a
/// slot from before it is sent until its answer arrives (even when the handler that made it
/// stopped waiting), so the waiting map and the KV requests in the outgoing queue never hold
/// more than that many. The queue itself stays unbounded so the
/// session's reader never waits on it (it answers heartbeats, and the runner's reader may be
/// waiting for the answers this reader routes).
pub(crate) struct SessionState {
    out: mpsc::UnboundedSender<Result<pb::WorkerMessage, tonic::Status>>,
    calls: Mutex<HashMap<u64, AbortHandle>>,
    kv: Mutex<KvPending>,
    next_kv: AtomicU64,
    kv_slots: Arc<Semaphore>,
}

/// A request waiting for its answer, and the slot it holds until then.
type Waiter = (
    oneshot::Sender<pb::kv_response::Result>,
    OwnedSemaphorePermit,
);

#[derive(Default)]
struct KvPending {
    closed: bool,
    waiting: HashMap<u64, Waiter>,
}

impl SessionState {
    pub(crate) fn new(
        out: mpsc::UnboundedSender<Result<pb::WorkerMessage, tonic::Status>>,
        max_kv_in_flight: usize,
    ) -> Self {
        Self {
            out,
            calls: Mutex::new(HashMap::new()),
            kv: Mutex::new(KvPending::default()),
            next_kv: AtomicU64::new(1),
            kv_slots: Arc::new(Semaphore::new(
                max_kv_in_flight.clamp(1, Semaphore::MAX_PERMITS),
            )),
        }
    }

    /// Queues a message to the runner; `false` when the session is gone.
    pub(crate) fn send(&self, kind: pb::worker_message::Kind) -> bool {
        self.out
            .send(Ok(pb::WorkerMessage { kind: Some(kind) }))
            .is_ok()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.out.is_closed()
    }

    fn reply(&self, call_id: u64, outcome: pb::reply::Outcome) -> bool {
        self.send(pb::worker_message::Kind::Reply(pb::Reply {
            call_id,
            outcome: Some(outcome),
        }))
    }

    pub(crate) fn chunk(&self, call_id: u64, item: bytes::Bytes) -> bool {
        self.reply(call_id, pb::reply::Outcome::Chunk(item))
    }

    /// Sends a KV request for `activation` and waits for the runner's answer. Waits first while
    /// the session has `max_kv_in_flight` requests outstanding.
    pub(crate) async fn kv_request(
        &self,
        activation: u64,
        op: pb::kv_request::Op,
    ) -> Result<pb::kv_response::Result, KvError> {
        let closed = || {
            KvError::new(
                KvErrorKind::SessionClosed,
                "the session with the runner closed",
            )
        };
        // Fair (first come, first served), so requests keep the order they were made in. Held
        // in the waiting map until the answer arrives.
        let slot = self
            .kv_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| closed())?;
        let request_id = self.next_kv.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut kv = self.kv.lock();
            if kv.closed {
                return Err(closed());
            }
            kv.waiting.insert(request_id, (tx, slot));
        }
        let sent = self.send(pb::worker_message::Kind::Kv(pb::KvRequest {
            request_id,
            activation_id: activation,
            op: Some(op),
        }));
        if !sent {
            self.kv.lock().waiting.remove(&request_id);
            return Err(closed());
        }
        rx.await.map_err(|_| closed())
    }

    fn kv_answered(&self, response: pb::KvResponse) {
        let waiter = self.kv.lock().waiting.remove(&response.request_id);
        if let (Some((waiter, _slot)), Some(result)) = (waiter, response.result) {
            let _ = waiter.send(result);
        }
    }

    /// Ends the session: running calls are aborted, KV waiters fail.
    fn close(&self) {
        for (_, call) in self.calls.lock().drain() {
            call.abort();
        }
        let mut kv = self.kv.lock();
        kv.closed = true;
        kv.waiting.clear();
        self.kv_slots.close();
    }
}

/// Runs the session until the runner closes it.
pub(crate) async fn run(
    registry: Arc<Registry>,
    state: Arc<SessionState>,
    mut inbound: tonic::Streaming<pb::RunnerMessage>,
) {
    use pb::runner_message::Kind;
    let mut activations: HashMap<u64, pb::Entity> = HashMap::new();
    loop {
        let message = match inbound.message().await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(status) => {
                tracing::debug!(%status, "session stream ended with an error");
                break;
            }
        };
        match message.kind {
            Some(Kind::Start(start)) => {
                tracing::debug!(runner = %start.runner_address, "session started");
            }
            Some(Kind::Activate(activate)) => {
                if let Some(entity) = activate.entity {
                    activations.insert(activate.activation_id, entity);
                }
            }
            Some(Kind::Deactivate(deactivate)) => {
                activations.remove(&deactivate.activation_id);
            }
            Some(Kind::Call(call)) => {
                let entity = call
                    .entity
                    .clone()
                    .or_else(|| activations.get(&call.activation_id).cloned())
                    .unwrap_or_default();
                start_call(&registry, &state, call, entity);
            }
            Some(Kind::Cancel(cancel)) => {
                if let Some(call) = state.calls.lock().remove(&cancel.call_id) {
                    call.abort();
                }
            }
            Some(Kind::Kv(response)) => state.kv_answered(response),
            Some(Kind::Heartbeat(beat)) if !beat.ack => {
                state.send(pb::worker_message::Kind::Heartbeat(pb::Heartbeat {
                    nonce: beat.nonce,
                    ack: true,
                }));
            }
            Some(Kind::Heartbeat(_)) | None => {}
        }
    }
    state.close();
}

fn start_call(registry: &Registry, state: &Arc<SessionState>, call: pb::Call, entity: pb::Entity) {
    let call_id = call.call_id;
    let Some(handler) = registry.handler(&entity.entity_type, &call.tag) else {
        state.reply(
            call_id,
            pb::reply::Outcome::Failure(pb::Failure {
                code: pb::FailureCode::UnknownTag as i32,
                message: format!(
                    "this worker has no handler for tag {:?} of entity type {:?}",
                    call.tag, entity.entity_type
                ),
            }),
        );
        return;
    };
    let ctx = HandlerContext::new(
        state.clone(),
        CallInfo {
            call_id,
            activation: call.activation_id,
            entity_type: entity.entity_type,
            entity_id: entity.entity_id,
            tag: call.tag,
            headers: call
                .headers
                .into_iter()
                .map(|h| (h.name, h.value))
                .collect(),
            request_id: call.request_id,
        },
    );
    let payload = call.payload;
    let session = state.clone();
    let work = async move {
        let outcome = match handler {
            Handler::Unary(handle) => handle(ctx, payload).await.map(pb::reply::Outcome::Value),
            Handler::Stream(handle) => {
                let writer = ChunkWriter::new(session.clone(), call_id);
                handle(ctx, payload, writer)
                    .await
                    .map(|()| pb::reply::Outcome::End(pb::StreamEnd {}))
            }
        };
        outcome.unwrap_or_else(|failure: HandlerFailure| {
            pb::reply::Outcome::Failure(failure.into_wire())
        })
    };
    let (work, abort) = futures::future::abortable(AssertUnwindSafe(work).catch_unwind());
    state.calls.lock().insert(call_id, abort);
    let state = state.clone();
    tokio::spawn(async move {
        let outcome = match work.await {
            Ok(Ok(outcome)) => Some(outcome),
            Ok(Err(_panic)) => Some(pb::reply::Outcome::Failure(
                HandlerFailure::fatal("the handler panicked").into_wire(),
            )),
            // Cancelled by the runner: it no longer waits for a reply.
            Err(_aborted) => None,
        };
        if state.calls.lock().remove(&call_id).is_some()
            && let Some(outcome) = outcome
        {
            state.reply(call_id, outcome);
        }
    });
}
