//! The `EntityKv` conformance suite: the same cases against every backend.
//!
//! Each backend gets a module (`memory`, `sqlite_file`, `sqlite_memory`, `postgres`) with one test
//! per case. Postgres tests use `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`),
//! a table prefix of their own, and fail — never skip — when Postgres is unreachable.

#![cfg(all(feature = "postgres", feature = "sqlite"))]
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod cases;
mod harness;

/// Generates `mod $backend { #[tokio::test] async fn $case() { ... } }` for every case.
macro_rules! backend {
    ($backend:ident => $kind:expr; $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let env = crate::harness::Env::open($kind).await;
                    crate::cases::$case(&env).await;
                    env.cleanup().await;
                }
            )*
        }
    };
}

/// The cases every backend passes, then `$extra` cases of its own.
macro_rules! conformance {
    ($backend:ident => $kind:expr; $($extra:ident),* $(,)?) => {
        backend!($backend => $kind;
            get_put_delete,
            get_edge_cases,
            binary_keys_order_as_unsigned_bytes,
            list_all_reverse_limit,
            list_prefix,
            list_range,
            list_default_limit,
            delete_range,
            drop_all,
            entities_are_isolated,
            limits_are_enforced,
            put_is_all_or_nothing,
            stale_epoch_writes_are_fenced,
            unleased_shards_fence_nothing,
            fence_must_name_the_entity_shard,
            concurrent_writers_keep_every_key,
            concurrent_puts_are_fenced_one_by_one,
            $($extra),*
        );
    };
}

conformance!(memory => crate::harness::Kind::Memory;);

conformance!(sqlite_file => crate::harness::Kind::SqliteFile;
    prefixes_are_isolated,
    malformed_rows_are_reported,
    hung_call_hits_deadline,
);

conformance!(sqlite_memory => crate::harness::Kind::SqliteMemory;
    prefixes_are_isolated,
    malformed_rows_are_reported,
);

conformance!(postgres => crate::harness::Kind::Postgres;
    prefixes_are_isolated,
    malformed_rows_are_reported,
    hung_call_hits_deadline,
);
