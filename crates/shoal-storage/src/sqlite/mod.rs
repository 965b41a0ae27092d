//! SQLite backend (feature `sqlite`).
//!
//! A database file (WAL mode; several processes may share it) or a private in-memory database.
//! Times are integers of unix milliseconds from SQLite's clock; writes that span statements run
//! in `BEGIN IMMEDIATE` transactions. See `docs/storage.md`.

mod message_queries;
mod messages;
mod queries;
mod runner;

pub use messages::SqliteMessageStorage;
pub use runner::{SqliteLocation, SqliteRunnerStorage};
