//! The SQL of [`SqliteRunnerStorage`](super::SqliteRunnerStorage), built once per prefix.

use std::sync::Arc;

use sqlx::{AssertSqlSafe, SqlSafeStr, SqlStr};

use crate::prefix::TablePrefix;

/// The database clock in unix milliseconds. SQLite evaluates `'now'` once per statement step, so
/// every use within one statement sees the same instant.
const NOW_MS: &str = "CAST(round(unixepoch('subsec') * 1000) AS INTEGER)";

/// Every statement, with the table prefix and the clock expression substituted.
#[derive(Debug)]
pub(super) struct Queries {
    pub(super) register: SqlStr,
    pub(super) unregister: SqlStr,
    pub(super) runners: SqlStr,
    pub(super) set_runner_health: SqlStr,
    pub(super) leases: SqlStr,
    pub(super) acquire: SqlStr,
    pub(super) heartbeat: SqlStr,
    pub(super) refresh: SqlStr,
    pub(super) release: SqlStr,
    pub(super) release_all: SqlStr,
}

fn sql(prefix: &TablePrefix, template: &str) -> SqlStr {
    let text = prefix.substitute(template).replace("{now}", NOW_MS);
    AssertSqlSafe(Arc::<str>::from(text)).into_sql_str()
}

impl Queries {
    pub(super) fn new(prefix: &TablePrefix) -> Self {
        Self {
            // ?1 address, ?2 runner JSON, ?3 healthy, ?4 ttl ms. REPLACE deletes the old row and
            // inserts a new one, which takes a fresh AUTOINCREMENT id: ids are never reused.
            register: sql(
                prefix,
                "REPLACE INTO {prefix}_runners (address, runner, healthy, heartbeat_expires_at) \
                 VALUES (?1, ?2, ?3, {now} + ?4) RETURNING machine_id",
            ),
            // ?1 address, ?2 retention ms of dead rows.
            unregister: sql(
                prefix,
                "DELETE FROM {prefix}_runners \
                 WHERE address = ?1 OR heartbeat_expires_at < {now} - ?2",
            ),
            runners: sql(
                prefix,
                "SELECT address, runner, healthy FROM {prefix}_runners \
                 WHERE heartbeat_expires_at > {now}",
            ),
            // ?1 address, ?2 healthy.
            set_runner_health: sql(
                prefix,
                "UPDATE {prefix}_runners SET healthy = ?2 WHERE address = ?1",
            ),
            leases: sql(
                prefix,
                "SELECT shard_id, runner, epoch FROM {prefix}_leases \
                 WHERE runner IS NOT NULL AND expires_at > {now}",
            ),
            // ?1 address, ?2 JSON array of shard texts, ?3 ttl ms. One statement (SQLite runs
            // it atomically under the database write lock). A lease is taken when it is free,
            // expired or already ours; the epoch grows unless we held it live. `WHERE true`
            // keeps the parser from reading `ON CONFLICT` as a join constraint.
            acquire: sql(
                prefix,
                "INSERT INTO {prefix}_leases AS l (shard_id, runner, epoch, expires_at) \
                 SELECT s.value, ?1, 1, {now} + ?3 FROM json_each(?2) AS s \
                 WHERE true ORDER BY s.value \
                 ON CONFLICT (shard_id) DO UPDATE SET \
                   runner = excluded.runner, \
                   epoch = CASE WHEN l.runner = excluded.runner AND l.expires_at > {now} \
                                THEN l.epoch ELSE l.epoch + 1 END, \
                   expires_at = excluded.expires_at \
                 WHERE l.runner IS NULL OR l.expires_at <= {now} OR l.runner = excluded.runner \
                 RETURNING shard_id, epoch",
            ),
            // ?1 address, ?2 ttl ms. First statement of a refresh (same transaction).
            heartbeat: sql(
                prefix,
                "UPDATE {prefix}_runners SET heartbeat_expires_at = {now} + ?2 WHERE address = ?1",
            ),
            // ?1 address, ?2 JSON array of shard texts, ?3 ttl ms. Only leases held live are
            // extended; a lapsed lease is not renewed.
            refresh: sql(
                prefix,
                "UPDATE {prefix}_leases SET expires_at = {now} + ?3 \
                 WHERE runner = ?1 AND expires_at > {now} \
                   AND shard_id IN (SELECT value FROM json_each(?2)) \
                 RETURNING shard_id, epoch",
            ),
            // ?1 address, ?2 JSON array of shard texts. The row and its epoch stay.
            release: sql(
                prefix,
                "UPDATE {prefix}_leases SET runner = NULL, expires_at = {now} \
                 WHERE runner = ?1 AND shard_id IN (SELECT value FROM json_each(?2))",
            ),
            // ?1 address.
            release_all: sql(
                prefix,
                "UPDATE {prefix}_leases SET runner = NULL, expires_at = {now} WHERE runner = ?1",
            ),
        }
    }
}
