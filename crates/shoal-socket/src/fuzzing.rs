//! **Not part of the public API** (hidden from the docs, may change in any release): the batch
//! stream's codec as the server and the client run it, for the fuzz targets in `fuzz/` and the
//! property tests that check it against prost.

use bytes::{Bytes, BytesMut};
use shoal_protocol::proto::runner::v1 as pb;
use shoal_protocol::{ReplyFrame, Request};

pub use crate::codec::decode::{BatchError, Inbound, Malformed};
use crate::codec::encode::{self, RequestFrame};
use crate::codec::intern::Interner;

/// The server's decoder of one batch stream: names are shared across the batches it reads, as
/// on a real stream.
#[derive(Debug, Default)]
pub struct BatchDecoder {
    names: Interner,
}

impl BatchDecoder {
    /// A decoder for a new stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads one encoded `ClientBatch` (what the server does with each message of the stream).
    pub fn decode(&mut self, batch: &Bytes) -> Result<Vec<Inbound>, BatchError> {
        let mut frames = Vec::new();
        crate::codec::decode::client_batch(batch, &mut self.names, &mut frames)?;
        Ok(frames)
    }
}

/// A request as the client writes it into a `ClientBatch`: the bytes of one batch element
/// (`frames` field, `ClientFrame`, `request`), with `streaming` overriding the request's flag.
pub fn encode_request(request: &Request, streaming: bool) -> Bytes {
    let frame = RequestFrame::new(request, streaming);
    let mut buf = BytesMut::with_capacity(frame.element_len());
    frame.put(&mut buf);
    buf.freeze()
}

/// The encoded size of the request message alone, as the client computes it for its size limit.
pub fn encoded_request_len(request: &Request, streaming: bool) -> usize {
    RequestFrame::new(request, streaming).request_len()
}

/// Any client frame as the client writes it into a `ClientBatch` (notifications, cancels).
pub fn encode_client_frame(frame: &pb::ClientFrame) -> Bytes {
    let mut buf = BytesMut::with_capacity(encode::client_frame_element_len(frame));
    encode::put_client_frame(frame, &mut buf);
    buf.freeze()
}

/// A reply as the server writes it into a `ServerBatch`: the bytes of one batch element.
pub fn encode_reply(request_id: u64, frame: ReplyFrame) -> Bytes {
    let mut buf = BytesMut::new();
    encode::put_reply(request_id, frame, &mut buf);
    buf.freeze()
}
