//! The task that runs one entity instance.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::{AbortHandle, Abortable};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use shoal_protocol::{EntityId, ErrorCode, Snowflake};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::sleep_until;
use tracing::Instrument;

use super::delivery::{Control, Delivery};
use super::interrupts::Pending;
use super::owner::InstanceOwner;
use super::retirement::{Done, Retirement};
use crate::clock::Clock;
use crate::entity::{
    Behavior, BehaviorFactory, CallFailure, CallResult, EntityContext, InstanceFlags,
};

/// Tunables of one instance.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InstanceSettings {
    pub(crate) max_idle: Duration,
    pub(crate) concurrency: usize,
    pub(crate) defect_max_retries: u32,
    pub(crate) defect_backoff: Duration,
}

/// Everything an instance task needs.
pub(crate) struct InstanceTask {
    pub(crate) id: EntityId,
    pub(crate) generation: u64,
    pub(crate) ctx: EntityContext,
    pub(crate) factory: Arc<dyn BehaviorFactory>,
    pub(crate) mailbox: mpsc::Receiver<Delivery>,
    /// Interrupts; closed when the manager wants the instance to stop.
    pub(crate) control: mpsc::Receiver<Control>,
    pub(crate) flags: Arc<InstanceFlags>,
    pub(crate) settings: InstanceSettings,
    pub(crate) owner: Weak<dyn InstanceOwner>,
    pub(crate) clock: Clock,
    /// The previous instance of this entity, still finishing: waited for before activating.
    pub(crate) previous: Option<Done>,
    /// Signals the end of this instance's task (dropped with it).
    pub(crate) _retirement: Retirement,
}

pub(crate) fn spawn_instance(task: InstanceTask) -> JoinHandle<()> {
    let span = tracing::debug_span!(
        "entity",
        address = %task.ctx.address(),
        generation = task.generation
    );
    tokio::spawn(task.run().instrument(span))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        format!("panic: {s}")
    } else if let Some(s) = panic.downcast_ref::<String>() {
        format!("panic: {s}")
    } else {
        "panic".to_owned()
    }
}

fn defect_of(
    result: Result<CallResult, Box<dyn std::any::Any + Send>>,
) -> Result<CallResult, String> {
    match result {
        Ok(Err(CallFailure::Fatal(message))) => Err(message),
        Ok(other) => Ok(other),
        Err(panic) => Err(panic_message(&*panic)),
    }
}

impl InstanceTask {
    async fn run(mut self) {
        let address = self.ctx.address().clone();
        // The previous instance of this entity must have finished (saved its state in
        // `deactivate`) before this one activates and loads it.
        if let Some(previous) = self.previous.take() {
            previous.await;
        }

        let Some(mut behavior) = self.activate().await else {
            self.drain(ErrorCode::Defect, "the entity failed to activate");
            self.exited();
            return;
        };
        tracing::debug!(%address, "entity activated");
        metrics::counter!("shoal_entity_activations_total", "type" => address.entity_type.to_string())
            .increment(1);

        match &mut behavior {
            Behavior::Exclusive(_) => self.run_exclusive(&mut behavior).await,
            Behavior::Shared(_) => self.run_shared(&mut behavior).await,
        };
        self.deactivate(behavior).await;
        tracing::debug!(%address, "entity stopped");
        self.exited();
    }

    /// Activates the entity, retrying defects with backoff. `None` when every attempt failed.
    async fn activate(&mut self) -> Option<Behavior> {
        let mut attempt = 0u32;
        loop {
            let activation =
                AssertUnwindSafe(self.factory.activate(self.ctx.clone())).catch_unwind();
            let error = match activation.await {
                Ok(Ok(behavior)) => return Some(behavior),
                Ok(Err(message)) => message,
                Err(panic) => panic_message(&*panic),
            };
            tracing::warn!(address = %self.ctx.address(), attempt, error = %error, "entity activation failed");
            if attempt >= self.settings.defect_max_retries {
                return None;
            }
            tokio::time::sleep(self.backoff(attempt)).await;
            attempt += 1;
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        shoal_protocol::Backoff::new(self.settings.defect_backoff, Duration::from_secs(10))
            .delay(attempt)
    }

    async fn deactivate(&self, behavior: Behavior) {
        match behavior {
            Behavior::Exclusive(mut b) => {
                let _ = AssertUnwindSafe(b.deactivate(&self.ctx))
                    .catch_unwind()
                    .await;
            }
            Behavior::Shared(b) => {
                let _ = AssertUnwindSafe(b.deactivate(self.ctx.clone()))
                    .catch_unwind()
                    .await;
            }
        }
    }

    fn exited(&self) {
        if let Some(manager) = self.owner.upgrade() {
            manager.instance_exited(&self.id, self.generation);
        }
    }

    /// Fails every queued request (the instance is going away without processing them),
    /// handing each payload back so that its caller can send it on.
    fn drain(&mut self, code: ErrorCode, message: &str) {
        self.mailbox.close();
        while let Ok(delivery) = self.mailbox.try_recv() {
            self.flags.done_pending(self.clock.now_ms());
            delivery.hand_back(code, message);
        }
    }

    fn finish(&self, delivery: Delivery, result: CallResult) {
        let outcome = result.map_err(|failure| match failure {
            CallFailure::Failed(f) => f.into(),
            CallFailure::Fatal(message) => {
                shoal_protocol::Failure::new(ErrorCode::Defect, message).into()
            }
        });
        // Count the request done before the caller sees the reply, so that a caller's next
        // request finds this instance idle (and evictable under the resident cap).
        self.flags.done_pending(self.clock.now_ms());
        delivery.reply.send(outcome);
    }

    fn idle_deadline(&self) -> tokio::time::Instant {
        self.clock.instant_at(self.flags.last_active()) + self.settings.max_idle
    }

    /// Handles an idle timer: passivates when nothing is pending. `true` means stop.
    fn on_idle(&self) -> bool {
        if self.flags.is_idle()
            && let Some(manager) = self.owner.upgrade()
            && manager.try_passivate(&self.id, self.generation)
        {
            tracing::debug!(address = %self.ctx.address(), "entity passivated after idling");
            return true;
        }
        // Busy or kept alive: look again after another idle period.
        self.flags.touch(self.clock.now_ms());
        false
    }

    async fn run_exclusive(&mut self, behavior: &mut Behavior) -> Flow {
        let mut interrupted = Pending::default();
        loop {
            let idle_at = self.idle_deadline();
            tokio::select! {
                biased;
                control = self.control.recv() => match control {
                    Some(Control::Interrupt(id)) => interrupted.insert(id),
                    None => {
                        self.drain(ErrorCode::EntityNotAssigned, "the entity stopped on this runner; retry");
                        return Flow::Stop;
                    }
                },
                delivery = self.mailbox.recv() => {
                    let Some(delivery) = delivery else { return Flow::Stop };
                    if interrupted.take(&delivery.call.id) {
                        self.flags.done_pending(self.clock.now_ms());
                        delivery.fail(ErrorCode::Interrupted, "interrupted before it started");
                        continue;
                    }
                    if let Flow::Stop = self.process_exclusive(behavior, delivery, &mut interrupted).await {
                        self.drain(ErrorCode::EntityNotAssigned, "the entity stopped on this runner; retry");
                        return Flow::Stop;
                    }
                }
                _ = sleep_until(idle_at) => {
                    if self.on_idle() {
                        return Flow::Stop;
                    }
                }
            }
        }
    }

    /// Runs one request to completion (replaying it after defects). Returns `Stop` when a stop
    /// was requested meanwhile.
    async fn process_exclusive(
        &mut self,
        behavior: &mut Behavior,
        delivery: Delivery,
        interrupted: &mut Pending,
    ) -> Flow {
        let mut stopping = false;
        let mut attempt = 0u32;
        loop {
            let Behavior::Exclusive(exclusive) = behavior else {
                return Flow::Stop;
            };
            self.flags.set_current_request(delivery.call.id);
            let outcome = {
                let fut =
                    AssertUnwindSafe(exclusive.handle(&delivery.call, &self.ctx)).catch_unwind();
                tokio::pin!(fut);
                loop {
                    tokio::select! {
                        biased;
                        result = &mut fut => break Some(result),
                        control = self.control.recv(), if !stopping => match control {
                            Some(Control::Interrupt(id)) if id == delivery.call.id => break None,
                            Some(Control::Interrupt(id)) => interrupted.insert(id),
                            // Closed: stop after this request. Only read once: a closed channel
                            // answers at once, forever.
                            None => stopping = true,
                        },
                    }
                }
            };
            let Some(result) = outcome else {
                self.flags.done_pending(self.clock.now_ms());
                delivery.fail(ErrorCode::Interrupted, "interrupted by the caller");
                return if stopping { Flow::Stop } else { Flow::Continue };
            };
            match defect_of(result) {
                Ok(result) => {
                    self.finish(delivery, result);
                    return if stopping { Flow::Stop } else { Flow::Continue };
                }
                Err(defect) => {
                    tracing::warn!(address = %self.ctx.address(), attempt, %defect, "entity defect; rebuilding the instance");
                    metrics::counter!("shoal_entity_defects_total", "type" => self.ctx.address().entity_type.to_string())
                        .increment(1);
                    let give_up = attempt >= self.settings.defect_max_retries
                        || delivery.call.chunks.is_some()
                        || stopping;
                    if !give_up {
                        tokio::time::sleep(self.backoff(attempt)).await;
                    }
                    // The instance's state can no longer be trusted: build a new one.
                    match self.activate().await {
                        Some(fresh) => *behavior = fresh,
                        None => {
                            self.finish(delivery, Err(CallFailure::Fatal(defect)));
                            return Flow::Stop;
                        }
                    }
                    if give_up {
                        self.finish(delivery, Err(CallFailure::Fatal(defect)));
                        return if stopping { Flow::Stop } else { Flow::Continue };
                    }
                    attempt += 1;
                }
            }
        }
    }

    #[expect(
        clippy::result_large_err,
        reason = "a delivery that cannot start is handed back whole, to run it another way"
    )]
    async fn run_shared(&mut self, behavior: &mut Behavior) -> Flow {
        type Done = (
            Delivery,
            u32,
            Result<Result<CallResult, Box<dyn std::any::Any + Send>>, futures::future::Aborted>,
        );
        let concurrency = self.settings.concurrency.max(1);
        let mut in_flight: FuturesUnordered<futures::future::BoxFuture<'static, Done>> =
            FuturesUnordered::new();
        let mut aborts: HashMap<Snowflake, AbortHandle> = HashMap::new();
        let mut interrupted = Pending::default();
        let mut stopping = false;

        let start = |behavior: &Behavior,
                     ctx: &EntityContext,
                     delivery: Delivery,
                     attempt: u32,
                     aborts: &mut HashMap<Snowflake, AbortHandle>|
         -> Result<futures::future::BoxFuture<'static, Done>, Delivery> {
            let Behavior::Shared(shared) = behavior else {
                return Err(delivery);
            };
            let fut =
                AssertUnwindSafe(shared.clone().handle(&delivery.call, ctx.clone())).catch_unwind();
            let (handle, registration) = AbortHandle::new_pair();
            aborts.insert(delivery.call.id, handle);
            let fut = Abortable::new(fut, registration);
            Ok(Box::pin(async move {
                let result = fut.await;
                (delivery, attempt, result)
            }))
        };

        loop {
            if stopping && in_flight.is_empty() {
                self.drain(
                    ErrorCode::EntityNotAssigned,
                    "the entity stopped on this runner; retry",
                );
                return Flow::Stop;
            }
            let idle_at = self.idle_deadline();
            let can_start = !stopping && in_flight.len() < concurrency;
            tokio::select! {
                biased;
                control = self.control.recv(), if !stopping => match control {
                    Some(Control::Interrupt(id)) => match aborts.remove(&id) {
                        Some(handle) => handle.abort(),
                        None => interrupted.insert(id),
                    },
                    None => stopping = true,
                },
                Some((delivery, attempt, result)) = in_flight.next(), if !in_flight.is_empty() => {
                    aborts.remove(&delivery.call.id);
                    let Ok(result) = result else {
                        self.flags.done_pending(self.clock.now_ms());
                        delivery.fail(ErrorCode::Interrupted, "interrupted by the caller");
                        continue;
                    };
                    match defect_of(result) {
                        Ok(result) => self.finish(delivery, result),
                        Err(defect) => {
                            tracing::warn!(address = %self.ctx.address(), attempt, %defect, "entity defect; rebuilding the instance");
                            metrics::counter!("shoal_entity_defects_total", "type" => self.ctx.address().entity_type.to_string())
                                .increment(1);
                            let give_up = attempt >= self.settings.defect_max_retries
                                || delivery.call.chunks.is_some()
                                || stopping;
                            if !give_up {
                                tokio::time::sleep(self.backoff(attempt)).await;
                            }
                            match self.activate().await {
                                Some(fresh) => *behavior = fresh,
                                None => {
                                    self.finish(delivery, Err(CallFailure::Fatal(defect)));
                                    stopping = true;
                                    continue;
                                }
                            }
                            if give_up {
                                self.finish(delivery, Err(CallFailure::Fatal(defect)));
                            } else {
                                match start(behavior, &self.ctx, delivery, attempt + 1, &mut aborts) {
                                    Ok(fut) => in_flight.push(fut),
                                    Err(delivery) => self.finish(delivery, Err(CallFailure::Fatal(defect))),
                                }
                            }
                        }
                    }
                }
                delivery = self.mailbox.recv(), if can_start => {
                    let Some(delivery) = delivery else {
                        stopping = true;
                        continue;
                    };
                    if interrupted.take(&delivery.call.id) {
                        self.flags.done_pending(self.clock.now_ms());
                        delivery.fail(ErrorCode::Interrupted, "interrupted before it started");
                        continue;
                    }
                    match start(behavior, &self.ctx, delivery, 0, &mut aborts) {
                        Ok(fut) => in_flight.push(fut),
                        Err(delivery) => {
                            self.flags.done_pending(self.clock.now_ms());
                            delivery.fail(ErrorCode::Defect, "the entity instance is not concurrent");
                        }
                    }
                }
                _ = sleep_until(idle_at), if in_flight.is_empty() && !stopping => {
                    if self.on_idle() {
                        return Flow::Stop;
                    }
                }
            }
        }
    }
}
