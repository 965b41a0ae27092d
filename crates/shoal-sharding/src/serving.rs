//! The server a [`Network`](crate::Network) starts for a runtime, stopped with it.

use async_trait::async_trait;

/// Serves requests from other runners for one runtime; started by
/// [`Network::serve`](crate::Network::serve) and stopped by the runtime: gracefully by
/// [`Sharding::shutdown`](crate::Sharding::shutdown) once its shards are handed off, at once by
/// [`Sharding::crash`](crate::Sharding::crash).
#[async_trait]
pub trait Serving: Send + Sync + std::fmt::Debug + 'static {
    /// Stops accepting requests, lets those being answered finish (bounded), and closes what it
    /// holds (a listening socket, its file).
    async fn shutdown(self: Box<Self>);

    /// Stops at once, as a crash would.
    fn abort(self: Box<Self>);
}
