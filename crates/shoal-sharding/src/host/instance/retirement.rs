//! Knowing when an instance's task has ended, however it ends.

use std::sync::Weak;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use shoal_protocol::EntityId;
use tokio::sync::oneshot;

use super::owner::InstanceOwner;

/// Resolves once an instance's task has ended (after `deactivate`, or aborted). Cloneable: a
/// new instance of the same entity waits on it before it activates.
pub(crate) type Done = Shared<BoxFuture<'static, ()>>;

/// Held by an instance's task; dropped when the task ends (returns, panics or is aborted),
/// which resolves the instance's [`Done`] and tells its owner the instance is gone.
pub(crate) struct Retirement {
    owner: Weak<dyn InstanceOwner>,
    id: EntityId,
    generation: u64,
    _done: oneshot::Sender<()>,
}

impl Retirement {
    pub(crate) fn new(
        owner: Weak<dyn InstanceOwner>,
        id: EntityId,
        generation: u64,
    ) -> (Self, Done) {
        let (tx, rx) = oneshot::channel::<()>();
        let done: BoxFuture<'static, ()> = Box::pin(rx.map(|_| ()));
        (
            Self {
                owner,
                id,
                generation,
                _done: tx,
            },
            done.shared(),
        )
    }
}

impl Drop for Retirement {
    fn drop(&mut self) {
        if let Some(manager) = self.owner.upgrade() {
            manager.retired(&self.id, self.generation);
        }
    }
}
