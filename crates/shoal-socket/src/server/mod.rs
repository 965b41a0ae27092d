//! The runner service: answers other runners' requests by handing them to the local sharding
//! runtime.

mod batch;
mod listener;
mod routes;
mod unix_socket;

pub use listener::{Bound, ServerHandle, serve};
pub(crate) use listener::{Listener, bind, serve_on};
pub(crate) use routes::Routes;

use futures::StreamExt;
use futures::stream::BoxStream;
use shoal_protocol::proto::runner::v1 as pb;
use shoal_protocol::{ErrorCode, Failure, Notification, Reply, ReplyFrame, Request, Snowflake};
use shoal_sharding::InboundHandler;
use tonic::{Response, Status, Streaming};

/// Serves `shoal.runner.v1.RunnerService`, handing what arrives to `handler` (the runtime).
#[derive(Debug, Clone)]
pub(crate) struct RunnerServiceImpl<H> {
    pub(crate) handler: H,
    pub(crate) max_batch: usize,
    pub(crate) max_message_size: usize,
    /// Requests one batch stream may have in flight (`SocketConfig::window`).
    pub(crate) window: usize,
}

/// The failure for a request whose payload exceeds the limit (for its caller only).
pub(crate) fn too_large(request: &Request, max: usize) -> Option<Failure> {
    if request.payload.len() > max {
        return Some(
            Failure::new(
                ErrorCode::MessageTooLarge,
                format!(
                    "the request payload is {} bytes; this runner accepts at most {max} \
                 (max_message_size)",
                    request.payload.len()
                ),
            )
            .with_address(request.address.clone()),
        );
    }
    None
}

pub(crate) fn malformed(error: impl std::fmt::Display) -> Failure {
    Failure::new(
        ErrorCode::MalformedMessage,
        format!("malformed request: {error}"),
    )
}

fn reply(request_id: u64, frame: ReplyFrame) -> pb::Reply {
    pb::Reply::from(Reply {
        request_id: Snowflake::from_raw(request_id),
        frame,
    })
}

#[tonic::async_trait]
impl<H: InboundHandler> pb::runner_service_server::RunnerService for RunnerServiceImpl<H> {
    async fn ping(
        &self,
        _request: tonic::Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        Ok(Response::new(pb::PingResponse {
            runner_address: self
                .handler
                .address()
                .map(ToString::to_string)
                .unwrap_or_default(),
        }))
    }

    async fn send(
        &self,
        request: tonic::Request<pb::Request>,
    ) -> Result<Response<pb::Reply>, Status> {
        let wire = request.into_inner();
        let id = wire.request_id;
        let frame = match Request::try_from(wire) {
            Ok(request) if let Some(failure) = too_large(&request, self.max_message_size) => {
                ReplyFrame::Failure(failure)
            }
            Ok(request) => {
                let span = tracing::debug_span!("runner.send", address = %request.address, tag = %request.tag);
                tracing::Instrument::instrument(self.handler.handle_request(request), span).await
            }
            Err(e) => ReplyFrame::Failure(malformed(e)),
        };
        Ok(Response::new(reply(id, frame)))
    }

    type SendStreamStream = BoxStream<'static, Result<pb::Reply, Status>>;

    async fn send_stream(
        &self,
        request: tonic::Request<pb::Request>,
    ) -> Result<Response<Self::SendStreamStream>, Status> {
        let wire = request.into_inner();
        let id = wire.request_id;
        let frames = match Request::try_from(wire) {
            Ok(request) => self.handler.handle_stream(request),
            Err(e) => {
                futures::stream::once(async move { ReplyFrame::Failure(malformed(e)) }).boxed()
            }
        };
        Ok(Response::new(
            frames.map(move |frame| Ok(reply(id, frame))).boxed(),
        ))
    }

    async fn notify(
        &self,
        request: tonic::Request<pb::Notification>,
    ) -> Result<Response<pb::NotifyAck>, Status> {
        let failure = match Notification::try_from(request.into_inner()) {
            Ok(notification) => self.handler.handle_notification(notification).await.err(),
            Err(e) => Some(malformed(e)),
        };
        Ok(Response::new(pb::NotifyAck {
            failure: failure.as_ref().map(Into::into),
        }))
    }

    type BatchStream = futures::stream::Empty<Result<pb::ServerBatch, Status>>;

    /// Never called: [`routes::Routes`] serves the batch stream with this crate's own codecs.
    async fn batch(
        &self,
        _request: tonic::Request<Streaming<pb::ClientBatch>>,
    ) -> Result<Response<Self::BatchStream>, Status> {
        Err(Status::unimplemented(
            "the batch stream is served by the transport's own route",
        ))
    }
}
