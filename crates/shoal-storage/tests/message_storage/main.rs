//! The `MessageStorage` conformance suite: the same cases against every backend.
//!
//! Each backend gets a module (`memory`, `sqlite_file`, `sqlite_memory`, `postgres`) with one test
//! per case, so a run shows `postgres::stale_epoch_replies_are_fenced` next to
//! `memory::stale_epoch_replies_are_fenced`. Postgres tests use `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`), a table prefix of their own, and fail — never
//! skip — when Postgres is unreachable.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod cases;
mod fixtures;
mod harness;
mod sql;

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
            cases::save_then_claim_round_trips,
            cases::duplicate_key_returns_original_and_latest_reply,
            cases::long_keys_deduplicate,
            cases::same_id_saved_twice_is_a_duplicate,
            cases::claims_respect_limit_and_fifo,
            cases::concurrent_claimers_never_share_a_message,
            cases::lapsed_claims_are_claimable_again,
            cases::pre_claimed_request_is_not_claimable_by_others,
            cases::resets_make_messages_claimable_again,
            cases::claims_filter_by_shard,
            cases::scheduled_messages_wait_for_deliver_at,
            cases::final_reply_marks_processed,
            cases::final_reply_with_a_chunk_frame_is_refused,
            cases::replies_for_unknown_requests_are_dropped,
            cases::chunks_acks_and_resumption,
            cases::interrupts_are_claimable_while_the_request_is_unprocessed,
            cases::stale_epoch_replies_are_fenced,
            cases::clear_address_deletes_one_entity,
            cases::sweep_deletes_old_processed_messages_only,
            cases::events_are_published,
            cases::concurrent_saves_get_their_own_results,
            cases::a_reused_id_is_refused_not_answered_with_another_requests_reply,
            cases::interrupts_must_match_their_request,
            cases::keys_that_differ_only_in_where_the_separator_falls_do_not_collide,
            cases::replies_of_two_requests_may_share_an_id,
            $($path::$case),*
        );
    };
}

backend!(memory => crate::harness::Kind::Memory;);

backend!(sqlite_file => crate::harness::Kind::SqliteFile;
    sql::malformed_reply_row_is_reported,
    sql::malformed_message_row_is_reported,
    sql::hung_call_hits_deadline,
);

backend!(sqlite_memory => crate::harness::Kind::SqliteMemory;
    sql::malformed_reply_row_is_reported,
    sql::malformed_message_row_is_reported,
);

backend!(postgres => crate::harness::Kind::Postgres;
    sql::malformed_reply_row_is_reported,
    sql::malformed_message_row_is_reported,
    sql::hung_call_hits_deadline,
    sql::events_cross_processes,
    sql::listener_reconnects_after_a_broken_connection,
);

/// `connect_storage` gives both seams over one database: the message storage is fenced by the
/// runner storage's leases.
mod connect {
    use shoal_storage::{Fence, MessageStorage, RunnerStorage, StorageError, connect_storage};

    use crate::fixtures::*;
    use crate::harness::{database_url, drop_postgres_tables, test_options};

    async fn shares_the_leases(runners: &dyn RunnerStorage, messages: &dyn MessageStorage) {
        let mut id = ids();
        let r = request(id(), &address(1, "a"));
        messages.save_request(&r, None).await.unwrap();
        let old = runners
            .acquire(&holder(1), &[shard(1)], LONG)
            .await
            .unwrap();
        runners.release_all(&holder(1)).await.unwrap();
        runners
            .acquire(&holder(2), &[shard(1)], LONG)
            .await
            .unwrap();
        let stale = Fence {
            shard: shard(1),
            epoch: old[0].epoch,
        };
        assert!(matches!(
            messages
                .save_reply(&final_value(id(), r.id, b"x"), &stale)
                .await,
            Err(StorageError::Fenced { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory() {
        let (runners, messages) = connect_storage("memory:", test_options()).await.unwrap();
        shares_the_leases(&*runners, &*messages).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("shoal.db").display());
        let (runners, messages) = connect_storage(&url, test_options()).await.unwrap();
        shares_the_leases(&*runners, &*messages).await;
        assert!(matches!(
            connect_storage("mysql://db/x", test_options()).await,
            Err(StorageError::InvalidArgument { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let options = test_options();
        let prefix = options.table_prefix.clone();
        let (runners, messages) = connect_storage(&database_url(), options).await.unwrap();
        shares_the_leases(&*runners, &*messages).await;
        drop_postgres_tables(&database_url(), &prefix).await;
    }
}
