//! Postgres backend (feature `postgres`).
//!
//! All times come from the database clock (`now()`); leases are rows in `{prefix}_leases` that
//! `acquire`, `refresh` and `release` change in one statement each. Durable messages live in
//! `{prefix}_messages` and `{prefix}_replies` of the same database. See `docs/storage.md`.
//!
//! **Plans.** Statements on the tables that grow (messages, replies, entity KV) run as unnamed
//! statements (`persistent(false)`), planned for their parameters at every execution. A named
//! prepared statement is soon given a *generic* plan, costed with the statistics of the moment:
//! made while the tables of a fresh deployment were nearly empty, it scans them sequentially and
//! keeps doing so as they grow (measured: a batch of 59 replies took 36 ms against 1,900
//! messages, nested loops over a sequential scan, and the cost grew with the backlog). Planning
//! a batch statement costs far less than one such mistake. The leases and runners tables keep a
//! fixed size, so their statements stay prepared, and so does the claim, whose cached plan
//! measured better (see `claim_unprocessed`).

mod listener;
mod message_queries;
mod messages;
mod queries;
mod runner;

pub use messages::PostgresMessageStorage;
pub use runner::PostgresRunnerStorage;
