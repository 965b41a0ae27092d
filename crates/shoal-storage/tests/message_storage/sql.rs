//! Cases for the SQL backends only: what is on disk when it is wrong, deadlines, and (Postgres)
//! wake-ups across processes.

use std::time::Duration;

use shoal_protocol::Snowflake;
use shoal_storage::{
    MessageEvent, MessageStorage, SaveResult, SqliteMessageStorage, SqliteRunnerStorage,
    StorageError,
};
use sqlx::{Connection, Executor};

use crate::cases::{expect_event, next_event};
use crate::fixtures::*;
use crate::harness::{Env, Kind, database_url};

pub async fn malformed_reply_row_is_reported(env: &Env) {
    let s = &*env.messages;
    let mut id = ids();
    let a = address(1, "a");
    let r = keyed(id(), &a, "counter/a/increment/k");
    s.save_request(&r, None).await.unwrap();
    let bad = id();
    env.exec(&format!(
        "INSERT INTO {{prefix}}_replies (id, request_id, kind, sequence, frame, acked, created_at) \
         VALUES ({}, {}, 0, NULL, {}, false, {})",
        bad.raw() as i64,
        r.id.raw() as i64,
        env.blob_sql("FFFFFF"),
        env.now_sql()
    ))
    .await;
    match s.replies_for(&[r.id]).await {
        Err(StorageError::Malformed { what, detail }) => {
            assert!(what.contains(&bad.to_string()), "row not named: {what}");
            assert!(detail.contains("protobuf"), "{detail}");
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
    // A duplicate save reads the original's latest reply: that caller gets the error too.
    match s
        .save_request(&keyed(id(), &a, "counter/a/increment/k"), None)
        .await
    {
        Err(StorageError::Malformed { what, .. }) => {
            assert!(what.contains(&bad.to_string()), "row not named: {what}")
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
    // Other callers of the same storage are not affected.
    assert_eq!(
        s.save_request(&request(id(), &a), None).await.unwrap(),
        SaveResult::Saved
    );
}

pub async fn malformed_message_row_is_reported(env: &Env) {
    let s = &*env.messages;
    let bad: i64 = 4242;
    env.exec(&format!(
        "INSERT INTO {{prefix}}_messages (id, shard_id, entity_type, entity_id, kind, request_id, \
           tag, payload, created_at) \
         VALUES ({bad}, 'default:1', 'counter', 'a', 0, {bad}, 'bad tag\n', {}, {})",
        env.blob_sql("00"),
        env.now_sql()
    ))
    .await;
    match s.claim_unprocessed(&[shard(1)], 10, &claim(1, LONG)).await {
        Err(StorageError::Malformed { what, detail }) => {
            assert!(
                what.contains(&Snowflake::from_raw(bad as u64).to_string()),
                "{what}"
            );
            assert!(detail.contains("tag"), "{detail}");
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
}

const DEADLINE: Duration = Duration::from_millis(500);

fn assert_timeout<T>(result: Result<T, StorageError>, operation: &str) {
    match result {
        Err(StorageError::Timeout {
            operation: op,
            timeout,
        }) => {
            assert_eq!(op, operation);
            assert_eq!(timeout, DEADLINE);
        }
        Err(other) => panic!("expected a time-out of `{operation}`, got {other:?}"),
        Ok(_) => panic!("expected a time-out of `{operation}`, got a result"),
    }
}

pub async fn hung_call_hits_deadline(env: &Env) {
    let mut id = ids();
    let a = address(1, "a");
    match env.kind {
        Kind::Postgres => {
            let storage = env
                .postgres_process(|o| o.with_call_timeout(DEADLINE).with_max_connections(2))
                .await;
            let mut blocker = sqlx::PgConnection::connect(&database_url()).await.unwrap();
            blocker.execute("BEGIN").await.unwrap();
            blocker
                .execute(sqlx::AssertSqlSafe(
                    env.options()
                        .unwrap()
                        .table_prefix
                        .substitute("LOCK TABLE {prefix}_messages IN ACCESS EXCLUSIVE MODE"),
                ))
                .await
                .unwrap();
            assert_timeout(
                storage.save_request(&request(id(), &a), None).await,
                "save_request",
            );
            assert_timeout(
                storage
                    .claim_unprocessed(&[shard(1)], 10, &claim(1, LONG))
                    .await,
                "claim_unprocessed",
            );
            blocker.execute("ROLLBACK").await.unwrap();
            blocker.close().await.unwrap();
            // Fresh connections: the storage works again.
            let r = request(id(), &a);
            assert_eq!(
                storage.save_request(&r, None).await.unwrap(),
                SaveResult::Saved
            );
            let claimed = storage
                .claim_unprocessed(&[shard(1)], 10, &claim(1, LONG))
                .await
                .unwrap();
            assert!(claimed_ids(&claimed).contains(&r.id));
        }
        Kind::SqliteFile => {
            let options = env
                .options()
                .unwrap()
                .clone()
                .with_call_timeout(DEADLINE)
                .with_migrate(false);
            let runners = SqliteRunnerStorage::open_file(env.sqlite_path(), options)
                .await
                .unwrap();
            let storage = SqliteMessageStorage::new(runners.inner()).await.unwrap();
            // Another connection (another process, as far as SQLite is concerned) takes the
            // write lock and sits on it.
            let mut blocker = sqlx::SqliteConnection::connect(&format!(
                "sqlite://{}",
                env.sqlite_path().display()
            ))
            .await
            .unwrap();
            blocker.execute("BEGIN IMMEDIATE").await.unwrap();
            assert_timeout(
                storage.save_request(&request(id(), &a), None).await,
                "save_request",
            );
            assert_timeout(
                storage
                    .claim_unprocessed(&[shard(1)], 10, &claim(1, LONG))
                    .await,
                "claim_unprocessed",
            );
            blocker.execute("ROLLBACK").await.unwrap();
            blocker.close().await.unwrap();
            let r = request(id(), &a);
            assert_eq!(
                storage.save_request(&r, None).await.unwrap(),
                SaveResult::Saved
            );
        }
        other => panic!("no hung-call scenario for {other:?}"),
    }
}

pub async fn events_cross_processes(env: &Env) {
    let mut id = ids();
    let here = env.postgres();
    let there = env.postgres_process(|o| o).await;
    let mut rx = here.subscribe();
    here.listen().await.unwrap();
    let r = request(id(), &address(5, "a"));
    there.save_request(&r, None).await.unwrap();
    expect_event(&mut rx, MessageEvent::Saved { shard: shard(5) }).await;
    there
        .save_reply(&final_value(id(), r.id, b"x"), &unfenced(5))
        .await
        .unwrap();
    expect_event(&mut rx, MessageEvent::Replied { request_id: r.id }).await;
    // A lifted claim in another process wakes this one.
    let r2 = request(id(), &address(6, "b"));
    there
        .save_request(&r2, Some(&claim(1, LONG)))
        .await
        .unwrap();
    there.reset_request(r2.id).await.unwrap();
    // The claimed save published nothing: the lift is the next event.
    next_event(&mut rx, MessageEvent::Saved { shard: shard(6) }).await;
    // An interrupt too.
    there.save_envelope(&interrupt(id(), &r2)).await.unwrap();
    expect_event(&mut rx, MessageEvent::Saved { shard: shard(6) }).await;
    // Its own writes reach a process once, not twice (its own notifications are skipped).
    let mut own = there.subscribe();
    there.listen().await.unwrap();
    let r3 = request(id(), &address(7, "c"));
    there.save_request(&r3, None).await.unwrap();
    expect_event(&mut own, MessageEvent::Saved { shard: shard(7) }).await;
    expect_event(&mut rx, MessageEvent::Saved { shard: shard(7) }).await;
    // Anything the other process's notifications could have added has arrived here by now
    // (the same commit); only then check that nothing was doubled.
    assert!(
        !std::iter::from_fn(|| own.try_recv().ok())
            .any(|e| e == MessageEvent::Saved { shard: shard(7) }),
        "own notification delivered again"
    );
}

pub async fn listener_reconnects_after_a_broken_connection(env: &Env) {
    let mut id = ids();
    let here = env.postgres();
    let there = env.postgres_process(|o| o).await;
    let mut rx = here.subscribe();
    here.listen().await.unwrap();
    // Kill the listening session, as a failover or an administrator would.
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE query = $1 AND pid <> pg_backend_pid()",
    )
    .bind(format!("LISTEN \"{}\"", here.channel()))
    .fetch_one(here.pool())
    .await
    .unwrap();
    assert_eq!(killed, 1, "the listening session was not found");
    // Notifications sent while it reconnects are lost (polling covers them); keep saving until
    // one arrives through the new connection.
    let arrived = async {
        loop {
            let r = request(id(), &address(9, "a"));
            there.save_request(&r, None).await.unwrap();
            let wait = tokio::time::timeout(Duration::from_millis(500), async {
                loop {
                    match rx.recv().await {
                        Ok(MessageEvent::Saved { shard: s }) if s == shard(9) => return,
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            });
            if wait.await.is_ok() {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), arrived)
        .await
        .expect("no event after the listener's connection was killed");
}
