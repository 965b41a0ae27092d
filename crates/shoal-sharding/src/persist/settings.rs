//! Tunables of durable messages.

use std::time::Duration;

/// How a runner handles persisted messages. [`Default`] gives the values listed on each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageSettings {
    /// How often an owner polls storage for unprocessed messages of its shards when nothing woke
    /// it earlier (a safety net: saves, shard acquisitions and notifications wake it at once).
    /// Default 1 s.
    pub poll_interval: Duration,
    /// How many messages one poll claims at most. Default 256.
    pub poll_batch: usize,
    /// How long a claim keeps other pollers away from a message (a runner that died holding a
    /// claim delays its messages at most this long; acquiring the shard lifts claims at once).
    /// Default 30 s.
    pub claim_timeout: Duration,
    /// How often a caller whose reply was not pushed to it reads storage for the reply (events
    /// wake it earlier). Default 250 ms.
    pub reply_poll_interval: Duration,
    /// How long a message for an entity type not registered on its owner is held before it is
    /// answered with `unknown_entity_type`. Default 60 s.
    pub registration_timeout: Duration,
    /// Processed messages and their replies are deleted once older than this. Default 24 h.
    pub retention: Duration,
    /// How often the retention sweep runs. Default 60 s.
    pub sweep_interval: Duration,
    /// Rows deleted per sweep call (the sweep repeats while it finds this many). Default 1000.
    pub sweep_batch: usize,
}

impl Default for MessageSettings {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            poll_batch: 256,
            claim_timeout: Duration::from_secs(30),
            reply_poll_interval: Duration::from_millis(250),
            registration_timeout: Duration::from_secs(60),
            retention: Duration::from_secs(24 * 60 * 60),
            sweep_interval: Duration::from_secs(60),
            sweep_batch: 1000,
        }
    }
}
