//! Streamed replies.

use std::fmt;
use std::marker::PhantomData;

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

pub(crate) type ChunkSender = mpsc::Sender<ReplyValue>;
pub(crate) type ChunkReceiver = mpsc::Receiver<ReplyValue>;

pub(crate) fn chunk_channel() -> (ChunkSender, ChunkReceiver) {
    mpsc::channel(STREAM_BUFFER)
}

/// Where a streaming handler sends its items. Sending waits when the caller is slow.
pub struct ChunkSink<T> {
    tx: ChunkSender,
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
            tx,
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
        self.tx.send(value).await.map_err(|_| StreamClosed)
    }

    /// Whether the caller has gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Where a dynamic streaming handler sends its already-encoded items.
#[derive(Debug, Clone)]
pub struct RawChunkSink {
    tx: ChunkSender,
}

impl RawChunkSink {
    pub(crate) fn new(tx: ChunkSender) -> Self {
        Self { tx }
    }

    /// Sends one encoded item to the caller.
    pub async fn send(&self, item: Bytes) -> Result<(), StreamClosed> {
        self.tx
            .send(ReplyValue::Encoded(item))
            .await
            .map_err(|_| StreamClosed)
    }

    /// Whether the caller has gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}
