//! Opening a gRPC channel to a runner over TCP or a Unix socket.

use std::time::Duration;

use hyper_util::rt::TokioIo;
use shoal_protocol::proto::runner::v1::runner_service_client::RunnerServiceClient;
use shoal_protocol::{RunnerAddress, RunnerEndpoint};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::auth::AttachToken;
use crate::config::SocketConfig;

/// A connected runner service client.
pub(crate) type Client = RunnerServiceClient<InterceptedService<Channel, AttachToken>>;

/// A connection to a runner: the generated client for the unary methods, and the raw gRPC client
/// the batch stream uses with its own codec.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    pub(crate) client: Client,
    pub(crate) grpc: tonic::client::Grpc<InterceptedService<Channel, AttachToken>>,
}

fn endpoint(uri: String, config: &SocketConfig) -> Result<Endpoint, String> {
    Ok(Endpoint::from_shared(uri)
        .map_err(|e| format!("invalid endpoint: {e}"))?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(8 * 1024 * 1024))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true))
}

/// Connects to `address` (eagerly, so an unreachable runner is reported at once).
pub(crate) async fn connect(
    address: &RunnerAddress,
    config: &SocketConfig,
    token: AttachToken,
) -> Result<Connection, String> {
    let channel = match address.endpoint() {
        RunnerEndpoint::Tcp { host, port } => {
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let authority = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let mut endpoint = endpoint(format!("{scheme}://{authority}"), config)?;
            if let Some(tls) = &config.tls {
                endpoint = endpoint
                    .tls_config(crate::tls::client(tls, host).map_err(|e| e.to_string())?)
                    .map_err(|e| format!("TLS: {e}"))?;
            }
            endpoint
                .connect()
                .await
                .map_err(|e| format!("connect to {authority} failed: {}", source_chain(&e)))?
        }
        RunnerEndpoint::Unix(path) => {
            let path = path.to_path_buf();
            let shown = path.display().to_string();
            // The URI is required by the HTTP layer but unused by the connector.
            endpoint("http://unix.socket".to_owned(), config)?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
                .map_err(|e| format!("connect to unix:{shown} failed: {}", source_chain(&e)))?
        }
    };
    let service = InterceptedService::new(channel, token);
    Ok(Connection {
        client: RunnerServiceClient::new(service.clone())
            .max_decoding_message_size(config.max_message_size)
            .max_encoding_message_size(config.max_message_size),
        // A batch holds at most `max_message_size` bytes of requests; replies come in batches
        // the runner limits to four times its own limit.
        grpc: tonic::client::Grpc::new(service)
            .max_decoding_message_size(config.max_message_size.saturating_mul(4))
            .max_encoding_message_size(config.max_message_size.saturating_mul(4)),
    })
}

fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
