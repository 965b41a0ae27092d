-- Process identity (shoal-storage `PostgresRunnerStorage`): incarnations, machine-id leases and
-- cluster parameters. `{prefix}` is replaced by the configured table prefix.

-- A runner is its address and its incarnation (one per process start): a registration or a
-- lease belongs to the incarnation that wrote it. Machine ids now come from
-- `{prefix}_machine_ids`; the old per-registration sequence goes with its column.
ALTER TABLE {prefix}_runners DROP COLUMN machine_id;
ALTER TABLE {prefix}_runners ADD COLUMN incarnation BIGINT NOT NULL DEFAULT 0;
-- The holder's incarnation; NULL once released.
ALTER TABLE {prefix}_leases ADD COLUMN incarnation BIGINT;

-- The 1024 machine ids (the 10 machine bits of a Snowflake id), each leased to at most one live
-- process. `reserved_until` (unix ms, the holder's wall clock) is the latest timestamp the holder
-- may stamp into an id; the next holder starts after it.
CREATE TABLE {prefix}_machine_ids (
    machine_id INTEGER PRIMARY KEY CHECK (machine_id BETWEEN 0 AND 1023),
    incarnation BIGINT NOT NULL,
    -- The lease is live while this is ahead of `now()`.
    expires_at TIMESTAMPTZ NOT NULL,
    reserved_until BIGINT NOT NULL
);
INSERT INTO {prefix}_machine_ids (machine_id, incarnation, expires_at, reserved_until)
SELECT g, 0, 'epoch', 0 FROM generate_series(0, 1023) AS g;

-- Settings every process of the cluster must share (shards per group, shard hash): stored by
-- the first process, compared by every later one.
CREATE TABLE {prefix}_cluster (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
