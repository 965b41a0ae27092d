//! # shoal-worker
//!
//! Entities implemented by worker processes (work in progress).

mod describe;
mod error;
mod host;
pub mod sdk;
mod spec;

pub use describe::{WorkerEntityType, WorkerTag};
pub use error::WorkerError;
pub use host::{WorkerHost, is_worker_unavailable};
pub use spec::{WorkerOptions, WorkerSource, WorkerSpec};

/// The `shoal.worker.v1` protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;
