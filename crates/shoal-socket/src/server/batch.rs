//! One batch stream from another runner: many requests in, replies out in completion order.

use futures::future::BoxFuture;
use futures::stream::{BoxStream, FuturesUnordered};
use futures::{FutureExt, StreamExt};
use shoal_protocol::proto::runner::v1 as pb;
use shoal_protocol::{Notification, Reply, ReplyFrame, Request, Snowflake};
use shoal_sharding::Sharding;
use tokio::sync::mpsc;
use tokio_stream::StreamMap;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::malformed;

/// Replies waiting to be written before the session stops reading more requests.
const OUTBOUND_BATCHES: usize = 64;

type Pending = BoxFuture<'static, Option<pb::Reply>>;

fn frame_reply(request_id: u64, frame: ReplyFrame) -> pb::Reply {
    pb::Reply::from(Reply {
        request_id: Snowflake::from_raw(request_id),
        frame,
    })
}

pub(crate) fn spawn_session(
    sharding: Sharding,
    inbound: Streaming<pb::ClientBatch>,
    max_batch: usize,
    max_message_size: usize,
) -> ReceiverStream<Result<pb::ServerBatch, Status>> {
    let (tx, rx) = mpsc::channel(OUTBOUND_BATCHES);
    let span = tracing::debug_span!("runner.batch_session");
    tokio::spawn(tracing::Instrument::instrument(
        run(sharding, inbound, tx, max_batch, max_message_size),
        span,
    ));
    ReceiverStream::new(rx)
}

async fn run(
    sharding: Sharding,
    mut inbound: Streaming<pb::ClientBatch>,
    tx: mpsc::Sender<Result<pb::ServerBatch, Status>>,
    max_batch: usize,
    max_message_size: usize,
) {
    let mut pending: FuturesUnordered<Pending> = FuturesUnordered::new();
    let mut streams: StreamMap<u64, BoxStream<'static, ReplyFrame>> = StreamMap::new();
    let mut out: Vec<pb::Reply> = Vec::new();
    let mut inbound_open = true;
    loop {
        if !inbound_open && pending.is_empty() && streams.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            Some(reply) = pending.next(), if !pending.is_empty() => {
                out.extend(reply);
                // Collect every other reply that is ready, to send them together.
                while out.len() < max_batch {
                    match pending.next().now_or_never() {
                        Some(Some(reply)) => out.extend(reply),
                        _ => break,
                    }
                }
            }
            Some((id, frame)) = streams.next(), if !streams.is_empty() => {
                let done = frame.is_final();
                out.push(frame_reply(id, frame));
                if done {
                    streams.remove(&id);
                }
            }
            batch = inbound.message(), if inbound_open => match batch {
                Ok(Some(batch)) => {
                    for frame in batch.frames {
                        accept(&sharding, frame, max_message_size, &mut pending, &mut streams, &mut out);
                    }
                }
                Ok(None) => inbound_open = false,
                Err(status) => {
                    // The caller went away (or sent garbage): stop reading, drop what is pending.
                    tracing::debug!(%status, "batch stream from a runner ended with an error");
                    return;
                }
            },
        }
        if !out.is_empty() {
            let replies = std::mem::take(&mut out);
            if tx.send(Ok(pb::ServerBatch { replies })).await.is_err() {
                // The caller stopped reading replies.
                return;
            }
        }
    }
}

fn accept(
    sharding: &Sharding,
    frame: pb::ClientFrame,
    max_message_size: usize,
    pending: &mut FuturesUnordered<Pending>,
    streams: &mut StreamMap<u64, BoxStream<'static, ReplyFrame>>,
    out: &mut Vec<pb::Reply>,
) {
    use pb::client_frame::Kind;
    let Some(kind) = frame.kind else {
        // Without a kind there is no request id to answer; nothing to do.
        tracing::debug!("ignoring an empty batch frame");
        return;
    };
    match kind {
        Kind::Request(wire) => {
            let id = wire.request_id;
            match Request::try_from(wire) {
                Err(e) => out.push(frame_reply(id, ReplyFrame::Failure(malformed(e)))),
                Ok(request) if let Some(failure) = super::too_large(&request, max_message_size) => {
                    out.push(frame_reply(id, ReplyFrame::Failure(failure)));
                }
                Ok(request) if request.streaming => {
                    streams.insert(id, sharding.handle_stream(request));
                }
                Ok(request) => {
                    let sharding = sharding.clone();
                    pending.push(Box::pin(async move {
                        Some(frame_reply(id, sharding.handle_request(request).await))
                    }));
                }
            }
        }
        Kind::Notify(wire) => {
            let request_id = match &wire.kind {
                Some(pb::notification::Kind::Request(r)) => Some(r.request_id),
                _ => None,
            };
            match Notification::try_from(wire) {
                Err(e) => {
                    if let Some(id) = request_id {
                        out.push(frame_reply(id, ReplyFrame::Failure(malformed(e))));
                    }
                }
                Ok(notification) => {
                    let sharding = sharding.clone();
                    pending.push(Box::pin(async move {
                        let result = sharding.handle_notification(notification).await;
                        request_id.map(|id| {
                            let frame = match result {
                                Ok(()) => ReplyFrame::Value(bytes::Bytes::new()),
                                Err(failure) => ReplyFrame::Failure(failure),
                            };
                            frame_reply(id, frame)
                        })
                    }));
                }
            }
        }
        Kind::Cancel(id) => {
            // A cancelled stream stops. A cancelled single request still completes (its entity
            // may already be working on it); its reply is simply not awaited.
            streams.remove(&id);
        }
    }
}
