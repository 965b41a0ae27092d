//! The transport seam: how a runner reaches other runners.

use async_trait::async_trait;
use futures::stream::BoxStream;
use shoal_protocol::{Failure, Notification, ReplyFrame, Request, RunnerAddress};

/// A transport-level failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The request did not reach the runner (refused, unknown, not connected): safe to retry.
    #[error("runner {runner} is unreachable: {reason}")]
    Unreachable {
        /// The runner.
        runner: RunnerAddress,
        /// What happened.
        reason: String,
    },
    /// The request may have reached the runner, but no reply came (the connection broke or the
    /// deadline passed): its outcome is unknown.
    #[error("lost contact with runner {runner}: {reason}")]
    Lost {
        /// The runner.
        runner: RunnerAddress,
        /// What happened.
        reason: String,
    },
    /// The runner refused the request before processing it for a transport reason (too large,
    /// unauthenticated).
    #[error("runner {runner} refused the request: {failure}")]
    Refused {
        /// The runner.
        runner: RunnerAddress,
        /// Why.
        failure: Box<Failure>,
    },
}

/// A stream of reply frames from another runner: chunks, then one final frame.
pub type ReplyFrames = BoxStream<'static, Result<ReplyFrame, TransportError>>;

/// Reaches other runners. `shoal-socket` implements it over gRPC; [`crate::InProcessNetwork`]
/// connects runners living in one process.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Checks that `runner` answers.
    async fn ping(&self, runner: &RunnerAddress) -> Result<(), TransportError>;

    /// Sends a request and waits for its final reply (a value or a failure).
    async fn send(
        &self,
        runner: &RunnerAddress,
        request: Request,
    ) -> Result<ReplyFrame, TransportError>;

    /// Sends a request whose replies are streamed.
    async fn send_stream(
        &self,
        runner: &RunnerAddress,
        request: Request,
    ) -> Result<ReplyFrames, TransportError>;

    /// Delivers a notification; `Ok(Some(failure))` when the runner refused it.
    async fn notify(
        &self,
        runner: &RunnerAddress,
        notification: Notification,
    ) -> Result<Option<Failure>, TransportError>;

    /// `runner` left the cluster: drop what is kept for it (connections).
    fn runner_left(&self, runner: &RunnerAddress) {
        let _ = runner;
    }

    /// The runtime using this transport has stopped: close its connections. (A transport
    /// shared by several runtimes, as [`crate::InProcessNetwork`] is, keeps them.)
    fn close(&self) {}
}
