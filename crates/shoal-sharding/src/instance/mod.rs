//! One entity instance: its mailbox, its task, and the handle the manager keeps.

mod delivery;
mod task;

pub(crate) use delivery::{Control, Delivery, Outcome, ReplyTo};
pub(crate) use task::{InstanceSettings, InstanceTask, spawn_instance};
