//! The SQL of [`PostgresRunnerStorage`](super::PostgresRunnerStorage), built once per prefix.

use std::sync::Arc;

use sqlx::{AssertSqlSafe, SqlSafeStr, SqlStr};

use crate::prefix::TablePrefix;

/// Every statement, with the table prefix substituted.
#[derive(Debug)]
pub(super) struct Queries {
    pub(super) register: SqlStr,
    pub(super) unregister: SqlStr,
    pub(super) runners: SqlStr,
    pub(super) set_runner_health: SqlStr,
    pub(super) leases: SqlStr,
    pub(super) acquire: SqlStr,
    pub(super) refresh: SqlStr,
    pub(super) release: SqlStr,
    pub(super) release_all: SqlStr,
}

fn sql(prefix: &TablePrefix, template: &str) -> SqlStr {
    AssertSqlSafe(Arc::<str>::from(prefix.substitute(template))).into_sql_str()
}

impl Queries {
    pub(super) fn new(prefix: &TablePrefix) -> Self {
        Self {
            // $1 address, $2 runner JSON, $3 healthy, $4 ttl ms. A re-registration takes a new
            // machine id from the sequence: ids are never reused.
            register: sql(
                prefix,
                "INSERT INTO {prefix}_runners (address, runner, healthy, heartbeat_expires_at) \
                 VALUES ($1, $2, $3, now() + $4::bigint * interval '1 millisecond') \
                 ON CONFLICT (address) DO UPDATE SET \
                   machine_id = nextval('{prefix}_machine_ids'), \
                   runner = EXCLUDED.runner, \
                   healthy = EXCLUDED.healthy, \
                   heartbeat_expires_at = EXCLUDED.heartbeat_expires_at \
                 RETURNING machine_id",
            ),
            // $1 address, $2 retention ms of dead rows.
            unregister: sql(
                prefix,
                "DELETE FROM {prefix}_runners WHERE address = $1 \
                 OR heartbeat_expires_at < now() - $2::bigint * interval '1 millisecond'",
            ),
            runners: sql(
                prefix,
                "SELECT address, runner, healthy FROM {prefix}_runners \
                 WHERE heartbeat_expires_at > now()",
            ),
            // $1 address, $2 healthy.
            set_runner_health: sql(
                prefix,
                "UPDATE {prefix}_runners SET healthy = $2 WHERE address = $1",
            ),
            leases: sql(
                prefix,
                "SELECT shard_id, runner, epoch FROM {prefix}_leases \
                 WHERE runner IS NOT NULL AND expires_at > now()",
            ),
            // $1 address, $2 shard texts, $3 ttl ms. Rows are visited in byte order so that
            // concurrent acquirers lock them in the same order. A lease is taken when it is free,
            // expired or already ours; the epoch grows unless we held it live. Only rows taken
            // are returned, and only requested rows can be.
            acquire: sql(
                prefix,
                "INSERT INTO {prefix}_leases AS l (shard_id, runner, epoch, expires_at) \
                 SELECT s.shard_id, $1, 1, now() + $3::bigint * interval '1 millisecond' \
                 FROM unnest($2::text[]) AS s(shard_id) ORDER BY s.shard_id COLLATE \"C\" \
                 ON CONFLICT (shard_id) DO UPDATE SET \
                   runner = EXCLUDED.runner, \
                   epoch = CASE WHEN l.runner = EXCLUDED.runner AND l.expires_at > now() \
                                THEN l.epoch ELSE l.epoch + 1 END, \
                   expires_at = EXCLUDED.expires_at \
                 WHERE l.runner IS NULL OR l.expires_at <= now() OR l.runner = EXCLUDED.runner \
                 RETURNING l.shard_id, l.epoch",
            ),
            // $1 address, $2 shard texts, $3 ttl ms. The heartbeat is written first (the
            // `(SELECT count(*) FROM heartbeat)` forces it before any lease row is locked, so
            // the runner row and lease rows are always locked in that order). Then only leases
            // we hold live are extended, locked in byte order; a lapsed lease is not renewed.
            // Locked rows are matched through `= ANY(ARRAY(SELECT ...))` (an array built once)
            // here and in `release`: joining the CTE instead gets planned as a nested loop on a
            // young table and costs ten times more for 300 shards.
            refresh: sql(
                prefix,
                "WITH heartbeat AS ( \
                   UPDATE {prefix}_runners \
                   SET heartbeat_expires_at = now() + $3::bigint * interval '1 millisecond' \
                   WHERE address = $1 RETURNING 1 \
                 ), locked AS ( \
                   SELECT shard_id FROM {prefix}_leases \
                   WHERE shard_id = ANY($2::text[]) AND runner = $1 AND expires_at > now() \
                     AND (SELECT count(*) FROM heartbeat) >= 0 \
                   ORDER BY shard_id FOR UPDATE \
                 ) \
                 UPDATE {prefix}_leases AS l \
                 SET expires_at = now() + $3::bigint * interval '1 millisecond' \
                 WHERE l.shard_id = ANY(ARRAY(SELECT shard_id FROM locked)) \
                   AND l.runner = $1 AND l.expires_at > now() \
                 RETURNING l.shard_id, l.epoch",
            ),
            // $1 address, $2 shard texts. The row and its epoch stay; the owner goes.
            release: sql(
                prefix,
                "WITH locked AS ( \
                   SELECT shard_id FROM {prefix}_leases \
                   WHERE shard_id = ANY($2::text[]) AND runner = $1 \
                   ORDER BY shard_id FOR UPDATE \
                 ) \
                 UPDATE {prefix}_leases AS l SET runner = NULL, expires_at = now() \
                 WHERE l.shard_id = ANY(ARRAY(SELECT shard_id FROM locked)) AND l.runner = $1",
            ),
            // $1 address.
            release_all: sql(
                prefix,
                "WITH locked AS ( \
                   SELECT shard_id FROM {prefix}_leases WHERE runner = $1 \
                   ORDER BY shard_id FOR UPDATE \
                 ) \
                 UPDATE {prefix}_leases AS l SET runner = NULL, expires_at = now() \
                 WHERE l.shard_id = ANY(ARRAY(SELECT shard_id FROM locked)) AND l.runner = $1",
            ),
        }
    }
}
