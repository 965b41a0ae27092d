//! In-memory storage: real semantics, no durability. For tests and single-process applications.

mod messages;
mod runner;

pub use messages::MemoryMessageStorage;
pub use runner::MemoryRunnerStorage;
