//! How a process treats its lanes.

use std::fmt;

/// How lanes behave in this process. The mode wins over the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Real queues and communicators: lane-assigned events are enqueued, tasks of lanes this
    /// profile does not serve are called remotely, served lanes are exposed over gRPC.
    #[default]
    Network,
    /// Lanes are ignored: every task and event runs locally, nothing is serialized, no queue or
    /// communicator is touched.
    Transparent,
    /// Everything runs in this process, but as if it crossed a lane: payloads are serialized,
    /// tokens are signed and verified, and lane events are delivered asynchronously. Catches
    /// payloads that do not survive serialization and auth misconfiguration, without any
    /// infrastructure. Queues and communicators are never touched.
    LocalSimulated,
}

impl Mode {
    /// The mode's name as used in logs and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Network => "network",
            Mode::Transparent => "transparent",
            Mode::LocalSimulated => "local-simulated",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
