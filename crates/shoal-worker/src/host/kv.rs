//! Answering the worker's KV requests through [`EntityKv`](shoal_storage::EntityKv).
//!
//! Requests of one activation run one after another, in the order the worker sent them (a put
//! followed by a get sees the put); requests of different activations run concurrently; none of
//! them holds up the session's reader (Rivet processes KV inline in its socket loop, so one slow
//! transaction stalls every actor of the runner) — until the worker has
//! [`max_kv_in_flight`](crate::WorkerOptions::max_kv_in_flight) requests outstanding.
//!
//! Memory is bounded by that cap: the reader takes a slot of the session's KV semaphore before
//! it hands a request over, the slot travels with the request through its activation's queue
//! and with the answer through the session's outgoing queue, and it is given back when the
//! transport takes the answer. With no slot free the reader waits, so the worker's further
//! messages stay in HTTP/2 flow control instead of in the runner.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use shoal_protocol::proto::worker::v1 as pb;
use shoal_storage::kv::{KvEntry, KvQuery};
use shoal_storage::{Fence, StorageError};
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::mpsc;

use super::session::Session;

/// A request waiting in its activation's queue, with its session slot.
type Queued = (pb::KvRequest, OwnedSemaphorePermit);

/// The per-activation queues of one session. Each is a bounded channel of the session's KV cap;
/// the session's slots bound them all together.
#[derive(Debug)]
pub(crate) struct KvQueues {
    queues: Mutex<HashMap<u64, mpsc::Sender<Queued>>>,
    capacity: usize,
}

impl KvQueues {
    /// Queues of `capacity` requests each (the session's KV cap).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            queues: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// Queues `request`, holding `slot`, behind the earlier requests of its activation. A request
    /// for an activation not announced in this session is refused at once.
    pub(crate) fn submit(
        &self,
        session: &Arc<Session>,
        request: pb::KvRequest,
        slot: OwnedSemaphorePermit,
    ) {
        let activation = request.activation_id;
        if !session.is_announced(activation) || session.is_closed() {
            let response = refused(
                &request,
                pb::KvErrorCode::NotActive,
                format!("activation {activation} is not an active entity of this session"),
            );
            session.send_kv(response, slot);
            return;
        }
        let mut queues = self.queues.lock();
        let tx = queues.entry(activation).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(self.capacity);
            tokio::spawn(serve_queue(session.clone(), activation, rx));
            tx
        });
        match tx.try_send((request, slot)) {
            Ok(()) => {}
            // Cannot happen while every queued request holds one of the session's slots (no
            // more of them than the queue's capacity); answered rather than dropped all the same.
            Err(mpsc::error::TrySendError::Full((request, slot))) => {
                let response = refused(
                    &request,
                    pb::KvErrorCode::Unavailable,
                    format!(
                        "activation {activation} has {} KV requests queued; nothing was read or written",
                        self.capacity
                    ),
                );
                session.send_kv(response, slot);
            }
            // The queue's task ended: the session is closing, and nobody awaits an answer.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Ends the queue of `activation` (its pending requests still get answers).
    pub(crate) fn remove(&self, activation: u64) {
        self.queues.lock().remove(&activation);
    }

    /// Ends every queue.
    pub(crate) fn clear(&self) {
        self.queues.lock().clear();
    }
}

async fn serve_queue(session: Arc<Session>, activation: u64, mut requests: mpsc::Receiver<Queued>) {
    while let Some((request, slot)) = requests.recv().await {
        if session.is_closed() {
            return;
        }
        let response = answer(&session, activation, request).await;
        session.send_kv(response, slot);
    }
}

fn refused(request: &pb::KvRequest, code: pb::KvErrorCode, message: String) -> pb::KvResponse {
    pb::KvResponse {
        request_id: request.request_id,
        result: Some(pb::kv_response::Result::Error(pb::KvError {
            code: code as i32,
            message,
        })),
    }
}

fn op_name(op: Option<&pb::kv_request::Op>) -> &'static str {
    use pb::kv_request::Op;
    match op {
        Some(Op::Get(_)) => "get",
        Some(Op::List(_)) => "list",
        Some(Op::Put(_)) => "put",
        Some(Op::Delete(_)) => "delete",
        Some(Op::DeleteRange(_)) => "delete_range",
        Some(Op::Drop(_)) => "drop",
        None => "none",
    }
}

/// Runs one request against entity KV.
async fn answer(session: &Session, activation: u64, request: pb::KvRequest) -> pb::KvResponse {
    use pb::kv_request::Op;
    use pb::kv_response::Result as Answer;

    let op = op_name(request.op.as_ref());
    let started = Instant::now();
    let Some(entity) = session.shared().activation(activation) else {
        return refused(
            &request,
            pb::KvErrorCode::NotActive,
            format!("activation {activation} is no longer active"),
        );
    };
    let address = &entity.address;
    let kv = &session.shared().kv;
    let fence = || -> Result<Fence, StorageError> {
        match entity.ctx.shard_epoch() {
            Some(epoch) => Ok(Fence {
                shard: address.shard.clone(),
                epoch,
            }),
            None => Err(StorageError::Fenced {
                shard: address.shard.clone(),
                epoch: 0,
                current: 0,
            }),
        }
    };
    let done = || Answer::Done(pb::KvDone {});
    let result: Result<Answer, StorageError> = match request.op.clone() {
        Some(Op::Get(get)) => kv.get(address, &get.keys).await.map(|values| {
            Answer::Values(pb::KvValues {
                values: values
                    .into_iter()
                    .map(|v| pb::KvMaybeValue {
                        found: v.is_some(),
                        value: v.unwrap_or_default(),
                    })
                    .collect(),
            })
        }),
        Some(Op::List(list)) => kv.list(address, &KvQuery::from(list)).await.map(|entries| {
            Answer::Entries(pb::KvEntries {
                entries: entries.into_iter().map(pb::KvEntry::from).collect(),
            })
        }),
        Some(Op::Put(put)) => match fence() {
            Ok(fence) => {
                let entries: Vec<KvEntry> = put.entries.into_iter().map(KvEntry::from).collect();
                kv.put(address, &entries, &fence).await.map(|()| done())
            }
            Err(e) => Err(e),
        },
        Some(Op::Delete(delete)) => match fence() {
            Ok(fence) => kv
                .delete(address, &delete.keys, &fence)
                .await
                .map(|()| done()),
            Err(e) => Err(e),
        },
        Some(Op::DeleteRange(range)) => match fence() {
            Ok(fence) => kv
                .delete_range(address, &range.start, &range.end, &fence)
                .await
                .map(|()| done()),
            Err(e) => Err(e),
        },
        Some(Op::Drop(_)) => match fence() {
            Ok(fence) => kv.drop_all(address, &fence).await.map(|()| done()),
            Err(e) => Err(e),
        },
        None => Err(StorageError::InvalidArgument {
            operation: "kv",
            detail: "the KV request names no operation".to_owned(),
        }),
    };
    let (result, outcome) = match result {
        Ok(answer) => (answer, "ok"),
        Err(error) => {
            let (code, outcome) = code_of(&error);
            let message = match &error {
                StorageError::Fenced { epoch: 0, .. } => format!(
                    "this runner no longer holds shard {} of {address}",
                    address.shard
                ),
                other => other.to_string(),
            };
            tracing::debug!(%address, op, %message, "worker KV request refused");
            (
                Answer::Error(pb::KvError {
                    code: code as i32,
                    message,
                }),
                outcome,
            )
        }
    };
    metrics::counter!("shoal_worker_kv_requests_total", "op" => op, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("shoal_worker_kv_request_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
    pb::KvResponse {
        request_id: request.request_id,
        result: Some(result),
    }
}

/// The wire error code of a storage error, and a metrics label.
fn code_of(error: &StorageError) -> (pb::KvErrorCode, &'static str) {
    match error {
        StorageError::InvalidArgument { .. } => (pb::KvErrorCode::InvalidArgument, "invalid"),
        StorageError::Fenced { .. } => (pb::KvErrorCode::Fenced, "fenced"),
        StorageError::Timeout { .. } | StorageError::Backend { .. } => {
            (pb::KvErrorCode::Unavailable, "unavailable")
        }
        _ => (pb::KvErrorCode::Internal, "internal"),
    }
}
