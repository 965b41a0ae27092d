//! The `RunnerStorage` conformance suite: the same cases against every backend.
//!
//! Each backend gets a module (`memory`, `sqlite_file`, `sqlite_memory`, `postgres`) with one test
//! per case, so a run shows `postgres::takeover_after_expiry` next to
//! `sqlite_file::takeover_after_expiry`. Postgres tests use `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`), a table prefix of their own, and fail — never
//! skip — when Postgres is unreachable.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod cases;
mod deadline;
mod harness;
mod race;

/// Generates `mod $backend { #[tokio::test] async fn $case() { ... } }` for every case.
macro_rules! conformance {
    ($backend:ident => $kind:expr; $($path:ident :: $case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let env = crate::harness::Env::open($kind).await;
                    crate::$path::$case(&env).await;
                    env.cleanup().await;
                }
            )*
        }
    };
}

/// A backend's module: the cases every backend must pass, then `$extra` cases of its own.
macro_rules! backend {
    ($backend:ident => $kind:expr; $($path:ident :: $case:ident),* $(,)?) => {
        conformance!($backend => $kind;
            cases::machine_ids_are_unique_among_live_processes,
            cases::a_lapsed_machine_id_is_taken_after_its_reservation,
            cases::a_live_address_is_refused_to_another_incarnation,
            cases::leases_belong_to_an_incarnation,
            cases::cluster_parameters_are_stored_once,
            cases::unregister_removes_only_that_runner,
            cases::unregister_forgets_long_dead_runners,
            cases::lapsed_runner_reappears_on_refresh,
            cases::health_flags,
            cases::unreachable_reports,
            cases::heartbeat_expiry_hides_runner,
            cases::acquire_free_shards,
            cases::acquire_refused_while_another_lease_is_live,
            cases::takeover_after_expiry,
            cases::refresh_extends_held_leases,
            cases::refresh_does_not_renew_a_lapsed_lease,
            cases::release_hands_over_at_once,
            cases::release_all_hands_over_at_once,
            cases::epochs_never_go_back,
            cases::acquire_returns_only_requested_shards,
            cases::leases_lists_live_leases_only,
            cases::leases_tell_their_time_left,
            race::race_never_gives_a_shard_two_owners,
            $($path::$case),*
        );
    };
}

backend!(memory => crate::harness::Kind::Memory;);

backend!(sqlite_file => crate::harness::Kind::SqliteFile;
    cases::prefix_isolation,
    cases::malformed_runner_row_is_reported,
    cases::malformed_lease_row_is_reported,
    cases::migrations_are_idempotent,
    deadline::hung_call_hits_deadline,
);

backend!(sqlite_memory => crate::harness::Kind::SqliteMemory;
    cases::prefix_isolation,
    cases::malformed_runner_row_is_reported,
    cases::malformed_lease_row_is_reported,
    cases::migrations_are_idempotent,
);

backend!(postgres => crate::harness::Kind::Postgres;
    cases::prefix_isolation,
    cases::malformed_runner_row_is_reported,
    cases::malformed_lease_row_is_reported,
    cases::migrations_are_idempotent,
    deadline::hung_call_hits_deadline,
);
