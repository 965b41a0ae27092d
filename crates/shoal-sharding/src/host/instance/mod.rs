//! One entity instance: its mailbox, its task, and the handle the manager keeps.

mod delivery;
mod interrupts;
mod owner;
mod retirement;
mod task;

pub(crate) use delivery::{Control, Delivery};
pub(crate) use owner::InstanceOwner;
pub(crate) use retirement::{Done, Retirement};
pub(crate) use task::{InstanceSettings, InstanceTask, spawn_instance};

/// How many interrupts an instance's control channel holds before more are dropped.
pub(crate) const CONTROL_CAPACITY: usize = 64;
