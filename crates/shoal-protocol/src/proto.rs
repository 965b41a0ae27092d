//! Code generated from `proto/` by prost and tonic.

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
#![allow(missing_debug_implementations)]

/// `shoal.runner.v1`: the runner-to-runner service.
pub mod runner {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("shoal.runner.v1");
    }
}

/// `shoal.lanes.v1`: RPC lane exposure (run a task, emit an event).
pub mod lanes {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("shoal.lanes.v1");
    }
}

/// `shoal.worker.v1`: the runner-to-worker session (entity calls to worker processes, their KV
/// requests back).
pub mod worker {
    /// The `shoal.worker.v1` protocol version: what a worker answers in
    /// `DescribeResponse.protocol_version`, and what the runner accepts.
    pub const PROTOCOL_VERSION: u32 = 1;

    /// How many KV requests one session may have outstanding by default, on both sides: the
    /// runner holds at most this many (queued, running, or answered and not yet handed to the
    /// transport) and the Rust worker SDK sends at most this many before waiting for answers.
    pub const DEFAULT_MAX_KV_IN_FLIGHT: usize = 256;

    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("shoal.worker.v1");
    }
}

/// The encoded `FileDescriptorSet` of every Shoal proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("shoal_descriptor");
