//! Transport settings.

use std::path::PathBuf;
use std::time::Duration;

/// How requests travel to another runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SendMode {
    /// Requests to one runner share one bidirectional stream, sent and answered in batches
    /// (the throughput path; default).
    #[default]
    Batch,
    /// One unary gRPC call per request (simpler; for comparison and debugging).
    Unary,
}

/// TLS material (PEM files) for TCP connections between runners. TLS is mutual: a runner
/// presents `cert` both as a server and as a client, and accepts a peer (server or client) only
/// if its certificate is signed by `ca`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// This runner's certificate chain (presented as server and as client).
    pub cert: PathBuf,
    /// This runner's private key.
    pub key: PathBuf,
    /// The CA that signs every runner's certificate: the servers this runner calls and the
    /// clients it serves are checked against it.
    pub ca: PathBuf,
    /// The name to expect in the other runners' certificates (default: the host being called).
    pub domain: Option<String>,
}

/// Settings of the socket transport.
#[derive(Debug, Clone)]
pub struct SocketConfig {
    /// Largest encoded request or reply accepted or sent (default 4 MiB). An oversize request
    /// fails for its caller with `MessageTooLarge`; the connection stays up.
    pub max_message_size: usize,
    /// Time to establish a connection (default 1 s).
    pub connect_timeout: Duration,
    /// Connections unused this long are closed (default 3 min).
    pub idle_timeout: Duration,
    /// Requests that may be in flight on one connection (default 8192). As a sender: callers
    /// past it wait for a place. As a server: a batch stream with this many requests running
    /// gets each further request refused at once with `mailbox_full` ("more than N requests in
    /// flight on this connection") until replies free places; nothing past it is queued.
    pub window: usize,
    /// Most frames in one batch (default 512).
    pub max_batch: usize,
    /// Batch or unary.
    pub mode: SendMode,
    /// Shared secret required from callers (`authorization: Bearer <token>` metadata).
    pub auth_token: Option<String>,
    /// Mutual TLS for TCP connections (off by default).
    pub tls: Option<TlsConfig>,
    /// Serve on a TCP address other hosts can reach (anything but 127.0.0.0/8 and `::1`) without
    /// `auth_token` and without `tls` (default `false`: such a server refuses to start with
    /// [`SocketError::InsecureTransport`](crate::SocketError::InsecureTransport)). Set it only
    /// when the network itself keeps strangers away from the port: without a token or mutual TLS,
    /// anything that reaches it can send requests to every entity of the runner.
    pub insecure_transport: bool,
}

impl Default for SocketConfig {
    fn default() -> Self {
        Self {
            max_message_size: 4 * 1024 * 1024,
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(180),
            window: 8192,
            max_batch: 512,
            mode: SendMode::Batch,
            auth_token: None,
            tls: None,
            insecure_transport: false,
        }
    }
}
