//! # shoal-socket
//!
//! The transport between Shoal runners: each runner serves `shoal.runner.v1.RunnerService`
//! (gRPC, tonic) on a TCP port or a Unix socket, and reaches the others through
//! [`GrpcTransport`], an implementation of the sharding runtime's `Transport` trait. Requests to one
//! runner share a single HTTP/2 **batch stream**: callers' requests are written in batches and
//! replies come back in batches, matched by request id.
//!
//! A runtime joins the other runners through a [`SocketNetwork`] given to its builder
//! (`ShardingBuilder::network`): [`SocketNetwork::bind`] for a full runner,
//! [`SocketNetwork::client_only`] for a process that only sends. [`SocketRunner::serve`] and
//! [`SocketRunner::client_only`] are shorthands for the same.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use shoal_sharding::ShardingConfig;
//! use shoal_socket::{ServeOptions, SocketConfig, SocketRunner};
//! use shoal_storage::MemoryRunnerStorage;
//!
//! let runner = SocketRunner::serve(
//!     ServeOptions {
//!         listen: "127.0.0.1:0".parse()?,
//!         advertise_host: None,
//!         advertise_port: None,
//!         sharding: ShardingConfig::default(),
//!         socket: SocketConfig::default(),
//!     },
//!     Arc::new(MemoryRunnerStorage::new()),
//!     |builder| builder, // register entity types here
//! )
//! .await?;
//! runner.shutdown().await;
//! # Ok(()) }
//! ```

mod auth;
mod client;
mod codec;
mod config;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod listen;
mod network;
mod runner;
mod server;
mod tls;

pub use client::GrpcTransport;
pub use config::{SendMode, SocketConfig, TlsConfig};
pub use error::SocketError;
pub use listen::ListenAddress;
pub use network::{BindOptions, SocketNetwork};
pub use runner::{ServeOptions, SocketRunner};
pub use server::{Bound, ServerHandle, serve};
