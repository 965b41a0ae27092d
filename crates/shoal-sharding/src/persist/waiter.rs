//! Waiting for the stored reply of a persisted request.

use shoal_protocol::{EntityAddress, ReplyFrame, Snowflake};
use shoal_storage::{MessageEvent, StoredReplyKind};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Instant, sleep_until};

use super::Persistence;
use crate::entity::ReplyValue;
use crate::error::{CallError, CallErrorKind};

/// Turns a settled final reply into the caller's result.
pub(crate) fn frame_result(
    address: &EntityAddress,
    id: Snowflake,
    frame: ReplyFrame,
) -> Result<ReplyValue, CallError> {
    match frame {
        ReplyFrame::Value(bytes) => Ok(ReplyValue::Encoded(bytes)),
        ReplyFrame::Failure(failure) => Err(CallError::from_failure(address.clone(), failure, id)),
        other => Err(CallError::new(
            CallErrorKind::MalformedMessage,
            address.clone(),
            format!("a single request was answered with {other:?}"),
        )),
    }
}

impl Persistence {
    /// Waits until the final reply of `id` is in storage, woken by reply events (other runners'
    /// saves reach this process through the backend's notifications where it has them) and
    /// reading storage every `reply_poll_interval` otherwise. Fails with a timeout at
    /// `deadline`; the request stays stored and will still be processed.
    pub(crate) async fn wait_reply(
        &self,
        address: &EntityAddress,
        id: Snowflake,
        deadline: Instant,
        storage_timeout: std::time::Duration,
        call_timeout: std::time::Duration,
    ) -> Result<ReplyValue, CallError> {
        // Subscribe first, so a reply saved between the read and the wait still wakes us.
        let mut events = self.storage.subscribe();
        loop {
            match tokio::time::timeout(storage_timeout, self.storage.replies_for(&[id])).await {
                Ok(Ok(replies)) => {
                    let last = replies.into_iter().find_map(|reply| match reply.kind {
                        StoredReplyKind::Final(frame) if reply.request_id == id => Some(frame),
                        _ => None,
                    });
                    if let Some(frame) = last {
                        return frame_result(address, id, frame);
                    }
                }
                Ok(Err(error)) => {
                    tracing::debug!(request = %id, %error, "reading a persisted reply failed; retrying");
                }
                Err(_) => tracing::debug!(request = %id, "reading a persisted reply timed out"),
            }
            if Instant::now() >= deadline {
                return Err(CallError::timed_out(address, call_timeout));
            }
            let next = (Instant::now() + self.settings.reply_poll_interval).min(deadline);
            loop {
                tokio::select! {
                    event = events.recv() => match event {
                        Ok(MessageEvent::Replied { request_id }) if request_id == id => break,
                        Ok(_) => {}
                        Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => {
                            sleep_until(next).await;
                            break;
                        }
                    },
                    _ = sleep_until(next) => break,
                }
            }
        }
    }
}
