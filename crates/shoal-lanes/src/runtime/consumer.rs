//! The consumer of one queue: claims up to `prefetch` messages at a time and settles each.

use shoal_protocol::Backoff;
use std::sync::Arc;
use std::time::Duration;

use serde::de::IgnoredAny;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::{DispatchFailure, Inner};
use crate::auth::{Subject, TargetKind};
use crate::diagnostics as diag;
use crate::envelope::Envelope;
use crate::plan::ConsumerPlan;
use crate::queue::{EventQueue, QueueError};
use crate::registry::EventContext;

/// How long a message of a lane this profile does not consume waits before it is offered again.
const INACTIVE_LANE_BACKOFF: Duration = Duration::from_secs(1);

pub(super) async fn run(inner: Arc<Inner>, plan: ConsumerPlan, shutdown_timeout: Duration) {
    let slots = Arc::new(Semaphore::new(plan.prefetch));
    let plan = Arc::new(plan);
    let mut handlers = JoinSet::new();
    let stop = inner.stopping.clone();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5)).attempts();
    loop {
        while handlers.try_join_next().is_some() {}
        let mut permits = tokio::select! {
            () = stop.cancelled() => break,
            permit = Arc::clone(&slots).acquire_many_owned(1) => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let free = slots.available_permits();
        if free > 0
            && let Ok(more) =
                Arc::clone(&slots).try_acquire_many_owned(u32::try_from(free).unwrap_or(1))
        {
            permits.merge(more);
        }
        let wanted = permits.num_permits();
        let batch = tokio::select! {
            () = stop.cancelled() => break,
            batch = plan.queue.receive(wanted) => batch,
        };
        match batch {
            Ok(batch) => {
                backoff.reset();
                for message in batch {
                    let Some(slot) = permits.split(1) else { break };
                    handlers.spawn(handle(Arc::clone(&inner), Arc::clone(&plan), message, slot));
                }
            }
            Err(QueueError::Closed) => break,
            Err(err) => {
                tracing::warn!(target: "shoal_lanes", queue = plan.queue.name(), %err, "receiving from the queue failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
    // Let in-flight messages finish; whatever does not finish in time is abandoned to the
    // queue's visibility timeout.
    let _ = tokio::time::timeout(shutdown_timeout, async {
        while handlers.join_next().await.is_some() {}
    })
    .await;
}

async fn settle(queue: &dyn EventQueue, message: &Envelope, result: Result<(), QueueError>) {
    if let Err(err) = result {
        tracing::warn!(target: "shoal_lanes", queue = queue.name(), message_id = %message.id, event = %message.event, %err, "settling a message failed; it will be delivered again");
    }
}

async fn dead_letter(queue: &dyn EventQueue, message: &Envelope, reason: String) {
    tracing::warn!(
        target: diag::TARGET,
        diag = diag::DEAD_LETTER,
        message_id = %message.id,
        event = %message.event,
        lane = %message.lane,
        attempts = message.attempts,
        reason = %reason,
        "event dead-lettered"
    );
    metrics::counter!("shoal_lanes_dead_lettered_total", "lane" => message.lane.clone())
        .increment(1);
    settle(queue, message, queue.dead_letter(message, &reason).await).await;
}

async fn handle(
    inner: Arc<Inner>,
    plan: Arc<ConsumerPlan>,
    message: Envelope,
    _slot: OwnedSemaphorePermit,
) {
    let queue = plan.queue.as_ref();
    let lane = message.lane.as_str();
    if !plan.lanes.iter().any(|l| l == lane) {
        tracing::info!(
            target: diag::TARGET,
            diag = diag::SKIP_INACTIVE_LANE,
            message_id = %message.id,
            event = %message.event,
            lane,
            profile = %inner.profile,
            active_lanes = ?plan.lanes,
            routing_decision = "lane-not-consumed-by-profile",
            "message of a lane this profile does not consume given back"
        );
        settle(
            queue,
            &message,
            queue.release(&message, INACTIVE_LANE_BACKOFF).await,
        )
        .await;
        return;
    }
    let Some(binding) = inner.plan.event_bindings.get(lane) else {
        settle(
            queue,
            &message,
            queue.release(&message, INACTIVE_LANE_BACKOFF).await,
        )
        .await;
        return;
    };
    let subject = Subject {
        lane,
        kind: TargetKind::Event,
        target: &message.event,
        payload: &message.payload,
        context: &message.context,
    };
    if let Err(err) = binding.auth.verify_queued(
        message.auth_token.as_deref(),
        &subject,
        message.created_at_ms,
        crate::auth::now_ms(),
    ) {
        super::auth_failure(lane, TargetKind::Event, &message.event, &err);
        dead_letter(queue, &message, format!("{}: {err}", err.id())).await;
        return;
    }
    if !inner.registry.events.contains_key(&message.event) {
        let reason = format!(
            "lanes-event-not-registered: event \"{}\" is not registered here",
            message.event
        );
        dead_letter(queue, &message, reason).await;
        return;
    }
    if inner
        .plan
        .event_routes
        .get(&message.event)
        .map(String::as_str)
        != Some(lane)
    {
        let reason = format!(
            "lanes-wrong-lane: event \"{}\" is not assigned to lane \"{lane}\"",
            message.event
        );
        dead_letter(queue, &message, reason).await;
        return;
    }
    if !is_json(&message.payload) {
        let reason = "lanes-payload-malformed: the payload is not valid JSON".to_owned();
        dead_letter(queue, &message, reason).await;
        return;
    }
    let source = inner.relay_source(lane, false);
    tracing::debug!(
        target: diag::TARGET,
        diag = diag::RELAY,
        message_id = %message.id,
        event = %message.event,
        lane,
        profile = %inner.profile,
        relay_source = %source.id(),
        attempt = message.attempts,
        "relaying event to local handlers"
    );
    let cx = EventContext {
        context: message.context.only(&binding.allowed_context),
        source,
        attempt: message.attempts,
    };
    let only = inner.plan.consumed.get(lane).cloned().flatten();
    match inner
        .dispatch_bytes(&message.event, &message.payload, cx, only.as_deref())
        .await
    {
        Ok(()) => {
            metrics::counter!("shoal_lanes_consumed_total", "lane" => lane.to_owned()).increment(1);
            settle(queue, &message, queue.ack(&message).await).await;
        }
        Err(DispatchFailure::Decode(err)) => {
            dead_letter(queue, &message, format!("lanes-payload-malformed: {err}")).await;
        }
        Err(DispatchFailure::Handler(handler, err)) => {
            if message.attempts < binding.max_attempts {
                tracing::warn!(
                    target: diag::TARGET,
                    diag = diag::RETRY,
                    message_id = %message.id,
                    event = %message.event,
                    lane,
                    handler,
                    %err,
                    attempts = message.attempts,
                    max_attempts = binding.max_attempts,
                    retry_delay_ms = u64::try_from(binding.retry_delay.as_millis()).unwrap_or(u64::MAX),
                    "event handler failed; message scheduled for retry"
                );
                metrics::counter!("shoal_lanes_retried_total", "lane" => lane.to_owned())
                    .increment(1);
                settle(
                    queue,
                    &message,
                    queue.retry(&message, binding.retry_delay).await,
                )
                .await;
            } else {
                let reason = format!(
                    "lanes-handler-failed: handler \"{handler}\" failed after {} attempt(s): {err}",
                    message.attempts
                );
                dead_letter(queue, &message, reason).await;
            }
        }
    }
}

/// Whether `bytes` are one JSON value. UTF-8 is checked first: serde_json skips the bytes of
/// strings it ignores without checking them, so an ignored field could carry invalid text.
fn is_json(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|text| serde_json::from_str::<IgnoredAny>(text).is_ok())
}
