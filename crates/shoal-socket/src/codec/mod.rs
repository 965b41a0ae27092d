//! The batch stream's wire codecs. The messages are the generated `ClientBatch` and
//! `ServerBatch`, but both sides write their elements directly from the domain types into one
//! buffer ([`encode`]) and the server reads requests without building the generated structs
//! ([`decode`]), so a request costs no allocation beyond its entity id on the way in.

pub(crate) mod decode;
pub(crate) mod encode;
pub(crate) mod intern;

use bytes::{Buf, BufMut, Bytes};
use prost::Message as _;
use shoal_protocol::proto::runner::v1 as pb;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use decode::Inbound;
use intern::Interner;

/// The gRPC path of the batch stream.
pub(crate) const BATCH_PATH: &str = "/shoal.runner.v1.RunnerService/Batch";

/// Writes messages that are already encoded.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

/// The caller's side: sends encoded `ClientBatch`es, receives `ServerBatch`es.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ClientCodec;

/// Decodes `ServerBatch`es with prost (replies are mostly a request id and a byte slice).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ReplyDecoder;

impl Decoder for ReplyDecoder {
    type Item = pb::ServerBatch;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<pb::ServerBatch>, Status> {
        pb::ServerBatch::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl Codec for ClientCodec {
    type Encode = Bytes;
    type Decode = pb::ServerBatch;
    type Encoder = RawEncoder;
    type Decoder = ReplyDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> ReplyDecoder {
        ReplyDecoder
    }
}

/// The serving side: receives `ClientBatch`es as domain frames, sends encoded `ServerBatch`es.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ServerCodec;

/// Decodes `ClientBatch`es into [`Inbound`] frames, sharing names across the stream.
#[derive(Debug, Default)]
pub(crate) struct RequestDecoder {
    names: Interner,
}

impl Decoder for RequestDecoder {
    type Item = Vec<Inbound>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<Inbound>>, Status> {
        let batch = src.copy_to_bytes(src.remaining());
        let mut frames = Vec::new();
        decode::client_batch(&batch, &mut self.names, &mut frames)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Some(frames))
    }
}

impl Codec for ServerCodec {
    type Encode = Bytes;
    type Decode = Vec<Inbound>;
    type Encoder = RawEncoder;
    type Decoder = RequestDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RequestDecoder {
        RequestDecoder::default()
    }
}
