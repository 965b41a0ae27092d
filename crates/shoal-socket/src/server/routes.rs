//! The runner service as served: the generated service for the unary and server-streaming
//! methods, and the batch stream with this crate's own codecs (see [`crate::codec`]).

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use shoal_protocol::proto::runner::v1::runner_service_server::RunnerServiceServer;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::{Status, Streaming};
use tower::Service;

use shoal_sharding::InboundHandler;

use super::RunnerServiceImpl;
use super::batch::{Limits, Session};
use crate::codec::decode::Inbound;
use crate::codec::{BATCH_PATH, ServerCodec};

/// Routes the batch stream to [`Session`], everything else to the generated service.
#[derive(Debug, Clone)]
pub(crate) struct Routes<H> {
    generated: RunnerServiceServer<RunnerServiceImpl<H>>,
    service: RunnerServiceImpl<H>,
    max_decoding: usize,
    max_encoding: usize,
}

impl<H: InboundHandler> Routes<H> {
    /// Messages up to `max_decoding` bytes are accepted and up to `max_encoding` sent.
    pub(crate) fn new(
        service: RunnerServiceImpl<H>,
        max_decoding: usize,
        max_encoding: usize,
    ) -> Self {
        Self {
            generated: RunnerServiceServer::new(service.clone())
                .max_decoding_message_size(max_decoding)
                .max_encoding_message_size(max_encoding),
            service,
            max_decoding,
            max_encoding,
        }
    }
}

impl<H> NamedService for Routes<H> {
    const NAME: &'static str = "shoal.runner.v1.RunnerService";
}

impl<H: InboundHandler> Service<http::Request<Body>> for Routes<H> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != BATCH_PATH {
            return self.generated.call(request);
        }
        let handler = BatchHandler {
            service: self.service.clone(),
        };
        let (max_decoding, max_encoding) = (self.max_decoding, self.max_encoding);
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ServerCodec)
                .apply_max_message_size_config(Some(max_decoding), Some(max_encoding));
            Ok(grpc.streaming(handler, request).await)
        })
    }
}

/// Opens a [`Session`] for each batch stream.
#[derive(Debug, Clone)]
struct BatchHandler<H> {
    service: RunnerServiceImpl<H>,
}

impl<H: InboundHandler> Service<tonic::Request<Streaming<Vec<Inbound>>>> for BatchHandler<H> {
    type Response = tonic::Response<Session<H>>;
    type Error = Status;
    type Future = std::future::Ready<Result<Self::Response, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::Request<Streaming<Vec<Inbound>>>) -> Self::Future {
        let session = Session::new(
            self.service.handler.clone(),
            request.into_inner(),
            Limits {
                max_batch: self.service.max_batch,
                max_message_size: self.service.max_message_size,
                window: self.service.window,
            },
        );
        std::future::ready(Ok(tonic::Response::new(session)))
    }
}
