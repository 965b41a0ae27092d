//! Postgres backend (feature `postgres`).
//!
//! All times come from the database clock (`now()`); leases are rows in `{prefix}_leases` that
//! `acquire`, `refresh` and `release` change in one statement each. Durable messages live in
//! `{prefix}_messages` and `{prefix}_replies` of the same database. See `docs/storage.md`.

mod listener;
mod message_queries;
mod messages;
mod queries;
mod runner;

pub use messages::PostgresMessageStorage;
pub use runner::PostgresRunnerStorage;
