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
    pub(super) report_unreachable: SqlStr,
    pub(super) leases: SqlStr,
    pub(super) acquire: SqlStr,
    pub(super) refresh: SqlStr,
    pub(super) release: SqlStr,
    pub(super) release_all: SqlStr,
    pub(super) lease_machine_id: SqlStr,
    pub(super) renew_machine_id: SqlStr,
    pub(super) release_machine_id: SqlStr,
    pub(super) cluster_parameters: SqlStr,
    pub(super) machine_ids: SqlStr,
}

fn sql(prefix: &TablePrefix, template: &str) -> SqlStr {
    AssertSqlSafe(Arc::<str>::from(prefix.substitute(template))).into_sql_str()
}

impl Queries {
    pub(super) fn new(prefix: &TablePrefix) -> Self {
        Self {
            // $1 address, $2 runner JSON, $3 incarnation, $4 healthy, $5 ttl ms. The row is
            // written unless another incarnation's heartbeat there is live; then the first
            // column is 0 and the others say whose it is and for how long. (The main query reads
            // the snapshot from before the upsert.)
            register: sql(
                prefix,
                "WITH up AS ( \
                   INSERT INTO {prefix}_runners AS r \
                     (address, runner, incarnation, healthy, heartbeat_expires_at) \
                   VALUES ($1, $2, $3, $4, now() + $5::bigint * interval '1 millisecond') \
                   ON CONFLICT (address) DO UPDATE SET \
                     runner = EXCLUDED.runner, \
                     incarnation = EXCLUDED.incarnation, \
                     healthy = EXCLUDED.healthy, \
                     heartbeat_expires_at = EXCLUDED.heartbeat_expires_at, \
                     unreachable = CASE WHEN r.incarnation = EXCLUDED.incarnation \
                       THEN r.unreachable ELSE '' END \
                   WHERE r.heartbeat_expires_at <= now() OR r.incarnation = EXCLUDED.incarnation \
                   RETURNING 1 \
                 ) \
                 SELECT (SELECT count(*) FROM up), \
                   (SELECT incarnation FROM {prefix}_runners WHERE address = $1), \
                   (SELECT (extract(epoch FROM heartbeat_expires_at - now()) * 1000)::bigint \
                    FROM {prefix}_runners WHERE address = $1)",
            ),
            // $1 address, $2 incarnation, $3 retention ms of dead rows.
            unregister: sql(
                prefix,
                "DELETE FROM {prefix}_runners WHERE (address = $1 AND incarnation = $2) \
                 OR heartbeat_expires_at < now() - $3::bigint * interval '1 millisecond'",
            ),
            runners: sql(
                prefix,
                "SELECT address, runner, incarnation, healthy, unreachable FROM {prefix}_runners \
                 WHERE heartbeat_expires_at > now()",
            ),
            // $1 address, $2 healthy.
            set_runner_health: sql(
                prefix,
                "UPDATE {prefix}_runners SET healthy = $2 WHERE address = $1",
            ),
            // $1 address, $2 incarnation, $3 unreachable addresses (one per line).
            report_unreachable: sql(
                prefix,
                "UPDATE {prefix}_runners SET unreachable = $3 \
                 WHERE address = $1 AND incarnation = $2",
            ),
            leases: sql(
                prefix,
                "SELECT shard_id, runner, COALESCE(incarnation, 0), epoch, \
                   CEIL(EXTRACT(EPOCH FROM expires_at - now()) * 1000)::bigint \
                 FROM {prefix}_leases WHERE runner IS NOT NULL AND expires_at > now()",
            ),
            // $1 address, $2 incarnation, $3 shard texts, $4 ttl ms. Rows are visited in byte
            // order so that concurrent acquirers lock them in the same order. A lease is taken
            // when it is free, expired or already this incarnation's, always under a new epoch.
            // Only rows taken are returned, and only requested rows can be.
            acquire: sql(
                prefix,
                "INSERT INTO {prefix}_leases AS l (shard_id, runner, incarnation, epoch, expires_at) \
                 SELECT s.shard_id, $1, $2, 1, now() + $4::bigint * interval '1 millisecond' \
                 FROM unnest($3::text[]) AS s(shard_id) ORDER BY s.shard_id COLLATE \"C\" \
                 ON CONFLICT (shard_id) DO UPDATE SET \
                   runner = EXCLUDED.runner, \
                   incarnation = EXCLUDED.incarnation, \
                   epoch = l.epoch + 1, \
                   expires_at = EXCLUDED.expires_at \
                 WHERE l.runner IS NULL OR l.expires_at <= now() \
                   OR (l.runner = EXCLUDED.runner AND l.incarnation = EXCLUDED.incarnation) \
                 RETURNING l.shard_id, l.epoch",
            ),
            // $1 address, $2 incarnation, $3 shard texts, $4 ttl ms. The heartbeat is written
            // first (the `(SELECT count(*) FROM heartbeat)` forces it before any lease row is
            // locked, so the runner row and lease rows are always locked in that order). Then
            // only leases this incarnation holds live are extended, locked in byte order; a
            // lapsed lease is not renewed. Locked rows are matched through
            // `= ANY(ARRAY(SELECT ...))` (an array built once) here and in `release`: joining
            // the CTE instead gets planned as a nested loop on a young table and costs ten
            // times more for 300 shards.
            refresh: sql(
                prefix,
                "WITH heartbeat AS ( \
                   UPDATE {prefix}_runners \
                   SET heartbeat_expires_at = now() + $4::bigint * interval '1 millisecond' \
                   WHERE address = $1 AND incarnation = $2 RETURNING 1 \
                 ), locked AS ( \
                   SELECT shard_id FROM {prefix}_leases \
                   WHERE shard_id = ANY($3::text[]) AND runner = $1 AND incarnation = $2 \
                     AND expires_at > now() AND (SELECT count(*) FROM heartbeat) >= 0 \
                   ORDER BY shard_id FOR UPDATE \
                 ) \
                 UPDATE {prefix}_leases AS l \
                 SET expires_at = now() + $4::bigint * interval '1 millisecond' \
                 WHERE l.shard_id = ANY(ARRAY(SELECT shard_id FROM locked)) \
                   AND l.runner = $1 AND l.incarnation = $2 AND l.expires_at > now() \
                 RETURNING l.shard_id, l.epoch",
            ),
            // $1 address, $2 incarnation, $3 shard texts. The row and its epoch stay; the owner
            // goes.
            release: sql(
                prefix,
                "WITH locked AS ( \
                   SELECT shard_id FROM {prefix}_leases \
                   WHERE shard_id = ANY($3::text[]) AND runner = $1 AND incarnation = $2 \
                   ORDER BY shard_id FOR UPDATE \
                 ) \
                 UPDATE {prefix}_leases AS l \
                 SET runner = NULL, incarnation = NULL, expires_at = now() \
                 WHERE l.shard_id = ANY(ARRAY(SELECT shard_id FROM locked)) \
                   AND l.runner = $1 AND l.incarnation = $2",
            ),
            // $1 address, $2 incarnation.
            release_all: sql(
                prefix,
                "WITH locked AS ( \
                   SELECT shard_id FROM {prefix}_leases WHERE runner = $1 AND incarnation = $2 \
                   ORDER BY shard_id FOR UPDATE \
                 ) \
                 UPDATE {prefix}_leases AS l \
                 SET runner = NULL, incarnation = NULL, expires_at = now() \
                 WHERE l.shard_id = ANY(ARRAY(SELECT shard_id FROM locked)) \
                   AND l.runner = $1 AND l.incarnation = $2",
            ),
            // $1 incarnation, $2 the caller's wall clock (unix ms), $3 ttl ms. This
            // incarnation's own id first, then the lowest free id whose reservation has passed,
            // then the lowest free id; the row is locked (rows other lessees hold locked are
            // skipped, and a row taken meanwhile fails the re-check) and its reservation moved
            // past the previous holder's, which comes back as the floor.
            lease_machine_id: sql(
                prefix,
                "WITH candidate AS ( \
                   SELECT machine_id, reserved_until FROM {prefix}_machine_ids \
                   WHERE expires_at <= now() OR incarnation = $1 \
                   ORDER BY (incarnation = $1) DESC, (reserved_until > $2), machine_id \
                   LIMIT 1 FOR UPDATE SKIP LOCKED \
                 ) \
                 UPDATE {prefix}_machine_ids AS m SET \
                   incarnation = $1, \
                   expires_at = now() + $3::bigint * interval '1 millisecond', \
                   reserved_until = GREATEST(c.reserved_until, $2) + $3 \
                 FROM candidate c WHERE m.machine_id = c.machine_id \
                 RETURNING m.machine_id::bigint, c.reserved_until, m.reserved_until",
            ),
            // $1 machine id, $2 incarnation, $3 the caller's wall clock (unix ms), $4 ttl ms.
            // Renewed as long as nobody else took it, also after it lapsed.
            renew_machine_id: sql(
                prefix,
                "UPDATE {prefix}_machine_ids SET \
                   expires_at = now() + $4::bigint * interval '1 millisecond', \
                   reserved_until = GREATEST(reserved_until, $3 + $4) \
                 WHERE machine_id = $1 AND incarnation = $2 \
                 RETURNING reserved_until",
            ),
            // $1 machine id, $2 incarnation, $3 the last timestamp used (unix ms).
            release_machine_id: sql(
                prefix,
                "UPDATE {prefix}_machine_ids SET expires_at = now(), \
                   reserved_until = LEAST(reserved_until, $3) \
                 WHERE machine_id = $1 AND incarnation = $2",
            ),
            machine_ids: sql(
                prefix,
                "SELECT machine_id::bigint, incarnation FROM {prefix}_machine_ids \
                 WHERE expires_at > now() ORDER BY machine_id",
            ),
            // $1 names, $2 values. Stored unless present; every stored parameter comes back
            // (the main query reads the snapshot from before the insert, hence the union).
            cluster_parameters: sql(
                prefix,
                "WITH inserted AS ( \
                   INSERT INTO {prefix}_cluster (name, value) \
                   SELECT * FROM unnest($1::text[], $2::text[]) \
                   ON CONFLICT (name) DO NOTHING \
                   RETURNING name, value \
                 ) \
                 SELECT name, value FROM {prefix}_cluster \
                 UNION ALL SELECT name, value FROM inserted",
            ),
        }
    }
}
