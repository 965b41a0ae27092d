//! Streamed replies.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;

use super::payload::ReplyValue;

/// How many streamed items may wait for the caller before the handler is slowed down.
const STREAM_BUFFER: usize = 32;

/// The caller stopped listening to a stream (it was dropped or interrupted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the caller stopped listening to the stream")]
pub struct StreamClosed;

/// The runtime's end of a stream for one request, shared by every attempt at it (a defect
/// replays the request with the same sender). It counts the items that went through: an
/// attempt's items before that count were already passed on (by an earlier attempt here, or
/// stored by an earlier run of a persisted stream elsewhere) and are dropped, so a handler that
/// starts over produces each item once.
#[derive(Debug, Clone)]
pub(crate) struct ChunkSender {
    tx: mpsc::Sender<ReplyValue>,
    /// Items passed on so far, counting those stored by earlier runs.
    delivered: Arc<AtomicU64>,
}

pub(crate) type ChunkReceiver = mpsc::Receiver<ReplyValue>;

/// A stream that starts at its first item.
pub(crate) fn chunk_channel() -> (ChunkSender, ChunkReceiver) {
    resumed_chunk_channel(0)
}

/// A stream whose first `resume` items are already stored: the receiver gets items from
/// position `resume` on.
pub(crate) fn resumed_chunk_channel(resume: u64) -> (ChunkSender, ChunkReceiver) {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let sender = ChunkSender {
        tx,
        delivered: Arc::new(AtomicU64::new(resume)),
    };
    (sender, rx)
}

/// One attempt's view of a stream: its own position, and where it may resume.
#[derive(Debug, Clone)]
struct Attempt {
    sender: ChunkSender,
    /// Items passed on before this attempt started.
    resume: u64,
    /// This attempt's items so far (sent or skipped), shared by clones of a dynamic sink.
    position: Arc<AtomicU64>,
}

impl Attempt {
    fn new(sender: ChunkSender) -> Self {
        let resume = sender.delivered.load(Ordering::Acquire);
        Self {
            sender,
            resume,
            position: Arc::new(AtomicU64::new(0)),
        }
    }

    async fn send(&self, value: ReplyValue) -> Result<(), StreamClosed> {
        let position = self.position.fetch_add(1, Ordering::AcqRel);
        if position < self.sender.delivered.load(Ordering::Acquire) {
            // Already passed on by an earlier attempt or run.
            return Ok(());
        }
        self.sender.tx.send(value).await.map_err(|_| StreamClosed)?;
        self.sender
            .delivered
            .fetch_max(position + 1, Ordering::AcqRel);
        Ok(())
    }

    fn is_closed(&self) -> bool {
        self.sender.tx.is_closed()
    }

    fn skip_to_resume_point(&self) -> u64 {
        self.position.fetch_max(self.resume, Ordering::AcqRel);
        self.resume
    }
}

/// Where a streaming handler sends its items. Sending waits when the caller is slow.
///
/// # Persisted streams
///
/// Each item of a persisted stream is stored before the caller sees it, and a stream whose owner
/// died reruns on the shard's next owner. There, [`ChunkSink::resume_point`] says how many items
/// are already stored: a handler that starts over simply produces them again (they are dropped,
/// so the caller gets each item once, provided the handler produces the same items in the same
/// order); a handler that can seek calls [`ChunkSink::skip_to_resume_point`] and continues from
/// there.
pub struct ChunkSink<T> {
    tx: Attempt,
    encode: bool,
    _item: PhantomData<fn(T)>,
}

impl<T> fmt::Debug for ChunkSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkSink").finish_non_exhaustive()
    }
}

impl<T: Serialize + Send + 'static> ChunkSink<T> {
    pub(crate) fn new(tx: ChunkSender, encode: bool) -> Self {
        Self {
            tx: Attempt::new(tx),
            encode,
            _item: PhantomData,
        }
    }

    /// Sends one item to the caller.
    pub async fn send(&mut self, item: T) -> Result<(), StreamClosed> {
        let value = if self.encode {
            // Serialization of a reply type that cannot be encoded is a programming error of the
            // entity; the stream ends for the caller.
            let bytes = serde_json::to_vec(&item).map_err(|_| StreamClosed)?;
            ReplyValue::Encoded(Bytes::from(bytes))
        } else {
            ReplyValue::Local(Box::new(item))
        };
        self.tx.send(value).await
    }

    /// Whether the caller has gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// How many items of this stream were passed on before this run started: stored by an
    /// earlier run of a persisted stream (rerun on a new owner), or sent by an earlier attempt
    /// that failed with a defect and was replayed. 0 on a first run.
    pub fn resume_point(&self) -> u64 {
        self.tx.resume
    }

    /// Declares that the handler continues from [`ChunkSink::resume_point`] instead of producing
    /// the stored items again: the next item sent is item number `resume_point`. Returns it.
    /// Call it before sending anything.
    pub fn skip_to_resume_point(&mut self) -> u64 {
        self.tx.skip_to_resume_point()
    }
}

/// Where a dynamic streaming handler sends its already-encoded items. See [`ChunkSink`] for how
/// persisted streams resume.
#[derive(Debug, Clone)]
pub struct RawChunkSink {
    tx: Attempt,
}

impl RawChunkSink {
    pub(crate) fn new(tx: ChunkSender) -> Self {
        Self {
            tx: Attempt::new(tx),
        }
    }

    /// Sends one encoded item to the caller.
    pub async fn send(&self, item: Bytes) -> Result<(), StreamClosed> {
        self.tx.send(ReplyValue::Encoded(item)).await
    }

    /// Whether the caller has gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// How many items an earlier run already stored (see [`ChunkSink::resume_point`]).
    pub fn resume_point(&self) -> u64 {
        self.tx.resume
    }

    /// Continues from the resume point (see [`ChunkSink::skip_to_resume_point`]).
    pub fn skip_to_resume_point(&self) -> u64 {
        self.tx.skip_to_resume_point()
    }
}
