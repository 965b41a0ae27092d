//! A call that hangs in the database hits its deadline, and the storage recovers on a fresh
//! connection (Effect #6508: a refresh stuck forever let two runners run one entity).

use std::time::Duration;

use shoal_storage::{PostgresRunnerStorage, RunnerStorage, SqliteRunnerStorage, StorageError};
use sqlx::{Connection, Executor};

use crate::cases::{LONG, id, runner, shards};
use crate::harness::{Env, Kind};

const DEADLINE: Duration = Duration::from_millis(500);

fn assert_timeout(result: Result<impl std::fmt::Debug, StorageError>, operation: &str) {
    match result {
        Err(StorageError::Timeout {
            operation: op,
            timeout,
        }) => {
            assert_eq!(op, operation);
            assert_eq!(timeout, DEADLINE);
        }
        other => panic!("expected a time-out of `{operation}`, got {other:?}"),
    }
}

pub async fn hung_call_hits_deadline(env: &Env) {
    match env.kind {
        Kind::Postgres => postgres(env).await,
        Kind::SqliteFile => sqlite_file(env).await,
        other => panic!("no hung-call scenario for {other:?}"),
    }
}

async fn postgres(env: &Env) {
    let url = crate::harness::database_url();
    let options = env
        .options()
        .unwrap()
        .clone()
        .with_call_timeout(DEADLINE)
        .with_max_connections(1)
        .with_migrate(false);
    let storage = PostgresRunnerStorage::connect(&url, options).await.unwrap();
    let pool = storage.inner().pool().clone();
    let (a, b) = (runner(1), runner(2));
    storage.acquire(&id(&a), &shards([1]), LONG).await.unwrap();
    let pid_before: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .unwrap();

    // Another session locks the lease row and sits on it.
    let mut blocker = sqlx::PgConnection::connect(&url).await.unwrap();
    blocker.execute("BEGIN").await.unwrap();
    blocker
        .execute(sqlx::AssertSqlSafe(
            env.options().unwrap().table_prefix.substitute(
                "SELECT * FROM {prefix}_leases WHERE shard_id = 'default:1' FOR UPDATE",
            ),
        ))
        .await
        .unwrap();

    assert_timeout(
        storage.acquire(&id(&b), &shards([1]), LONG).await,
        "acquire",
    );
    assert_timeout(
        storage.refresh(&id(&a), &shards([1]), LONG).await,
        "refresh",
    );

    blocker.execute("ROLLBACK").await.unwrap();
    blocker.close().await.unwrap();

    // The next calls work, on a new connection: the one that hung was closed, not pooled. The
    // lease is still a's: the calls that timed out changed nothing.
    let got = storage.refresh(&id(&a), &shards([1]), LONG).await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(
        storage
            .acquire(&id(&b), &shards([1]), LONG)
            .await
            .unwrap()
            .is_empty()
    );
    let pid_after: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_ne!(
        pid_before, pid_after,
        "the hung connection went back to the pool"
    );
}

async fn sqlite_file(env: &Env) {
    let path = env.sqlite_path().unwrap();
    let options = env
        .options()
        .unwrap()
        .clone()
        .with_call_timeout(DEADLINE)
        .with_migrate(false);
    let storage = SqliteRunnerStorage::open_file(path, options).await.unwrap();
    let (a, b) = (runner(1), runner(2));
    storage.acquire(&id(&a), &shards([1]), LONG).await.unwrap();

    // Another connection (another process, as far as SQLite is concerned) takes the write lock
    // and sits on it.
    let url = format!("sqlite://{}", path.display());
    let mut blocker = sqlx::SqliteConnection::connect(&url).await.unwrap();
    blocker.execute("BEGIN IMMEDIATE").await.unwrap();

    assert_timeout(
        storage.acquire(&id(&b), &shards([2]), LONG).await,
        "acquire",
    );
    assert_timeout(
        storage.refresh(&id(&a), &shards([1]), LONG).await,
        "refresh",
    );

    blocker.execute("ROLLBACK").await.unwrap();
    blocker.close().await.unwrap();

    let got = storage.refresh(&id(&a), &shards([1]), LONG).await.unwrap();
    assert_eq!(got.len(), 1);
    let got = storage.acquire(&id(&b), &shards([2]), LONG).await.unwrap();
    assert_eq!(got.len(), 1);
}
