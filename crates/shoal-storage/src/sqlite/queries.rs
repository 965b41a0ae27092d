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
    pub(super) registered: SqlStr,
    pub(super) unregister: SqlStr,
    pub(super) runners: SqlStr,
    pub(super) set_runner_health: SqlStr,
    pub(super) report_unreachable: SqlStr,
    pub(super) leases: SqlStr,
    pub(super) acquire: SqlStr,
    pub(super) heartbeat: SqlStr,
    pub(super) refresh: SqlStr,
    pub(super) release: SqlStr,
    pub(super) release_all: SqlStr,
    pub(super) free_machine_id: SqlStr,
    pub(super) take_machine_id: SqlStr,
    pub(super) renew_machine_id: SqlStr,
    pub(super) release_machine_id: SqlStr,
    pub(super) store_parameters: SqlStr,
    pub(super) parameters: SqlStr,
    pub(super) machine_ids: SqlStr,
}

fn sql(prefix: &TablePrefix, template: &str) -> SqlStr {
    let text = prefix.substitute(template).replace("{now}", NOW_MS);
    AssertSqlSafe(Arc::<str>::from(text)).into_sql_str()
}

impl Queries {
    pub(super) fn new(prefix: &TablePrefix) -> Self {
        Self {
            // ?1 address, ?2 runner JSON, ?3 incarnation, ?4 healthy, ?5 ttl ms. Written unless
            // another incarnation's heartbeat there is live (then no row comes back).
            register: sql(
                prefix,
                "INSERT INTO {prefix}_runners \
                   (address, runner, incarnation, healthy, heartbeat_expires_at) \
                 VALUES (?1, ?2, ?3, ?4, {now} + ?5) \
                 ON CONFLICT (address) DO UPDATE SET \
                   runner = excluded.runner, \
                   incarnation = excluded.incarnation, \
                   healthy = excluded.healthy, \
                   heartbeat_expires_at = excluded.heartbeat_expires_at, \
                   unreachable = CASE WHEN {prefix}_runners.incarnation = excluded.incarnation \
                     THEN {prefix}_runners.unreachable ELSE '' END \
                 WHERE {prefix}_runners.heartbeat_expires_at <= {now} \
                   OR {prefix}_runners.incarnation = excluded.incarnation \
                 RETURNING 1",
            ),
            // ?1 address: who holds it, for how many more ms.
            registered: sql(
                prefix,
                "SELECT incarnation, heartbeat_expires_at - {now} FROM {prefix}_runners \
                 WHERE address = ?1",
            ),
            // ?1 address, ?2 incarnation, ?3 retention ms of dead rows.
            unregister: sql(
                prefix,
                "DELETE FROM {prefix}_runners \
                 WHERE (address = ?1 AND incarnation = ?2) OR heartbeat_expires_at < {now} - ?3",
            ),
            runners: sql(
                prefix,
                "SELECT address, runner, incarnation, healthy, unreachable FROM {prefix}_runners \
                 WHERE heartbeat_expires_at > {now}",
            ),
            // ?1 address, ?2 healthy.
            set_runner_health: sql(
                prefix,
                "UPDATE {prefix}_runners SET healthy = ?2 WHERE address = ?1",
            ),
            // ?1 address, ?2 incarnation, ?3 unreachable addresses (one per line).
            report_unreachable: sql(
                prefix,
                "UPDATE {prefix}_runners SET unreachable = ?3 \
                 WHERE address = ?1 AND incarnation = ?2",
            ),
            leases: sql(
                prefix,
                "SELECT shard_id, runner, COALESCE(incarnation, 0), epoch, expires_at - {now} \
                 FROM {prefix}_leases WHERE runner IS NOT NULL AND expires_at > {now}",
            ),
            // ?1 address, ?2 incarnation, ?3 JSON array of shard texts, ?4 ttl ms. One statement
            // (SQLite runs it atomically under the database write lock). A lease is taken when
            // it is free, expired or already this incarnation's, always under a new epoch.
            // `WHERE true` keeps the parser from reading `ON CONFLICT` as a join constraint.
            acquire: sql(
                prefix,
                "INSERT INTO {prefix}_leases AS l (shard_id, runner, incarnation, epoch, expires_at) \
                 SELECT s.value, ?1, ?2, 1, {now} + ?4 FROM json_each(?3) AS s \
                 WHERE true ORDER BY s.value \
                 ON CONFLICT (shard_id) DO UPDATE SET \
                   runner = excluded.runner, \
                   incarnation = excluded.incarnation, \
                   epoch = l.epoch + 1, \
                   expires_at = excluded.expires_at \
                 WHERE l.runner IS NULL OR l.expires_at <= {now} \
                   OR (l.runner = excluded.runner AND l.incarnation = excluded.incarnation) \
                 RETURNING shard_id, epoch",
            ),
            // ?1 address, ?2 incarnation, ?3 ttl ms. First statement of a refresh (same
            // transaction).
            heartbeat: sql(
                prefix,
                "UPDATE {prefix}_runners SET heartbeat_expires_at = {now} + ?3 \
                 WHERE address = ?1 AND incarnation = ?2",
            ),
            // ?1 address, ?2 incarnation, ?3 JSON array of shard texts, ?4 ttl ms. Only leases
            // held live are extended; a lapsed lease is not renewed.
            refresh: sql(
                prefix,
                "UPDATE {prefix}_leases SET expires_at = {now} + ?4 \
                 WHERE runner = ?1 AND incarnation = ?2 AND expires_at > {now} \
                   AND shard_id IN (SELECT value FROM json_each(?3)) \
                 RETURNING shard_id, epoch",
            ),
            // ?1 address, ?2 incarnation, ?3 JSON array of shard texts. The row and its epoch
            // stay.
            release: sql(
                prefix,
                "UPDATE {prefix}_leases SET runner = NULL, incarnation = NULL, expires_at = {now} \
                 WHERE runner = ?1 AND incarnation = ?2 \
                   AND shard_id IN (SELECT value FROM json_each(?3))",
            ),
            // ?1 address, ?2 incarnation.
            release_all: sql(
                prefix,
                "UPDATE {prefix}_leases SET runner = NULL, incarnation = NULL, expires_at = {now} \
                 WHERE runner = ?1 AND incarnation = ?2",
            ),
            // ?1 incarnation, ?2 the caller's wall clock (unix ms). This incarnation's own id
            // first, then the lowest free id whose reservation has passed, then the lowest free
            // id (first statement of a `BEGIN IMMEDIATE` transaction).
            free_machine_id: sql(
                prefix,
                "SELECT machine_id, reserved_until FROM {prefix}_machine_ids \
                 WHERE expires_at <= {now} OR incarnation = ?1 \
                 ORDER BY (incarnation = ?1) DESC, (reserved_until > ?2), machine_id LIMIT 1",
            ),
            // ?1 machine id, ?2 incarnation, ?3 ttl ms, ?4 the caller's wall clock (unix ms).
            take_machine_id: sql(
                prefix,
                "UPDATE {prefix}_machine_ids SET incarnation = ?2, expires_at = {now} + ?3, \
                   reserved_until = max(reserved_until, ?4) + ?3 \
                 WHERE machine_id = ?1 RETURNING reserved_until",
            ),
            // ?1 machine id, ?2 incarnation, ?3 the caller's wall clock (unix ms), ?4 ttl ms.
            renew_machine_id: sql(
                prefix,
                "UPDATE {prefix}_machine_ids SET expires_at = {now} + ?4, \
                   reserved_until = max(reserved_until, ?3 + ?4) \
                 WHERE machine_id = ?1 AND incarnation = ?2 RETURNING reserved_until",
            ),
            // ?1 machine id, ?2 incarnation, ?3 the last timestamp used (unix ms).
            release_machine_id: sql(
                prefix,
                "UPDATE {prefix}_machine_ids SET expires_at = {now}, \
                   reserved_until = min(reserved_until, ?3) \
                 WHERE machine_id = ?1 AND incarnation = ?2",
            ),
            // ?1 JSON object of name -> value.
            store_parameters: sql(
                prefix,
                "INSERT INTO {prefix}_cluster (name, value) \
                 SELECT j.key, j.value FROM json_each(?1) AS j WHERE true \
                 ON CONFLICT (name) DO NOTHING",
            ),
            parameters: sql(prefix, "SELECT name, value FROM {prefix}_cluster"),
            machine_ids: sql(
                prefix,
                "SELECT machine_id, incarnation FROM {prefix}_machine_ids \
                 WHERE expires_at > {now} ORDER BY machine_id",
            ),
        }
    }
}
