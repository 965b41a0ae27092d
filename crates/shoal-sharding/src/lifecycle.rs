//! The life of one runtime: whether it is stopping, the signal its background tasks stop on,
//! the tasks themselves, and the signal that it has stopped.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Shared (`Arc`) by the parts of one runtime.
#[derive(Debug, Default)]
pub(crate) struct Lifecycle {
    closing: AtomicBool,
    /// Cancelled when shutdown begins: background loops stop, the lease keeper starts handing
    /// shards off.
    cancel: CancellationToken,
    /// Cancelled once the runtime has stopped (the lease keeper finished handing off, or gave
    /// up because another process took this runner's address).
    stopped: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Lifecycle {
    /// Whether shutdown has begun (or the runtime crashed).
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Marks the runtime as stopping; `false` when it already was.
    pub(crate) fn close(&self) -> bool {
        !self.closing.swap(true, Ordering::AcqRel)
    }

    /// The signal background loops stop on.
    pub(crate) fn cancel(&self) -> &CancellationToken {
        &self.cancel
    }

    /// The signal that the runtime has stopped.
    pub(crate) fn stopped(&self) -> &CancellationToken {
        &self.stopped
    }

    /// Keeps a background task, to abort it when the runtime stops.
    pub(crate) fn spawn(&self, task: JoinHandle<()>) {
        self.tasks.lock().push(task);
    }

    /// Aborts every background task.
    pub(crate) fn abort_tasks(&self) {
        for task in std::mem::take(&mut *self.tasks.lock()) {
            task.abort();
        }
    }
}
