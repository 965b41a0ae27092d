//! Queues that back event lanes.
//!
//! A queue stores envelopes and hands them out with an attempt count; the consumer decides what
//! happens next: [`EventQueue::ack`] (done), [`EventQueue::retry`] (deliver again after a delay,
//! counted as an attempt), [`EventQueue::release`] (give back uncounted) or
//! [`EventQueue::dead_letter`] (give up). Delays live in the queue, never in a consumer slot.

mod memory;
mod postgres;

use std::time::Duration;

use async_trait::async_trait;
use thiserror::Error;

use crate::envelope::{Envelope, NewEnvelope};

pub use memory::{MemoryQueue, QueueStats};
pub use postgres::{PostgresQueue, PostgresQueueOptions};

/// A queue failure.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum QueueError {
    /// The queue is closed.
    #[error("the queue is closed")]
    Closed,
    /// The message is no longer claimed by this delivery (its visibility timeout passed and
    /// another consumer took it, or it was settled already).
    #[error("message {id} is no longer held by this delivery")]
    ClaimLost {
        /// The message id.
        id: String,
    },
    /// A call did not finish within its deadline.
    #[error("queue call timed out after {0:?}")]
    Timeout(Duration),
    /// The backing store failed.
    #[error("queue backend error: {0}")]
    Backend(String),
    /// The queue's configuration is invalid.
    #[error("invalid queue configuration: {0}")]
    Config(String),
}

impl QueueError {
    /// The stable id of the error.
    pub fn id(&self) -> &'static str {
        match self {
            QueueError::Closed => "lanes-queue-closed",
            QueueError::ClaimLost { .. } => "lanes-queue-claim-lost",
            QueueError::Timeout(_) => "lanes-queue-timeout",
            QueueError::Backend(_) => "lanes-queue-backend",
            QueueError::Config(_) => "lanes-queue-config",
        }
    }
}

/// A queue backing one or more event lanes.
#[async_trait]
pub trait EventQueue: Send + Sync + std::fmt::Debug + 'static {
    /// A name for logs and errors.
    fn name(&self) -> &str;

    /// Prepares the queue (connections, schema). Called once at start, in network mode only.
    async fn init(&self) -> Result<(), QueueError> {
        Ok(())
    }

    /// Stores a message; returns its id.
    async fn enqueue(&self, message: NewEnvelope) -> Result<String, QueueError>;

    /// Waits until at least one message is deliverable, then claims up to `max` of them (each
    /// with its attempt count raised by one). Returns [`QueueError::Closed`] once closed.
    async fn receive(&self, max: usize) -> Result<Vec<Envelope>, QueueError>;

    /// The message is done: remove it.
    async fn ack(&self, message: &Envelope) -> Result<(), QueueError>;

    /// Deliver the message again after `delay` (this delivery counts as an attempt).
    async fn retry(&self, message: &Envelope, delay: Duration) -> Result<(), QueueError>;

    /// Give the message back untouched after `delay` (this delivery does not count).
    async fn release(&self, message: &Envelope, delay: Duration) -> Result<(), QueueError>;

    /// Move the message to the dead letters, with a reason.
    async fn dead_letter(&self, message: &Envelope, reason: &str) -> Result<(), QueueError>;

    /// Stops deliveries: pending and future `receive` calls return [`QueueError::Closed`].
    async fn close(&self) {}
}
