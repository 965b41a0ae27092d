-- Process identity (shoal-storage `SqliteRunnerStorage`): incarnations, machine-id leases and
-- cluster parameters. `{prefix}` is replaced by the configured table prefix. Times are unix ms.

-- A runner is its address and its incarnation (one per process start): a registration or a
-- lease belongs to the incarnation that wrote it. (The `machine_id` rowid of the runners table
-- is no longer used: machine ids come from `{prefix}_machine_ids`.)
ALTER TABLE {prefix}_runners ADD COLUMN incarnation INTEGER NOT NULL DEFAULT 0;
-- The holder's incarnation; NULL once released.
ALTER TABLE {prefix}_leases ADD COLUMN incarnation INTEGER;

-- The 1024 machine ids (the 10 machine bits of a Snowflake id), each leased to at most one live
-- process. `reserved_until` (unix ms, the holder's wall clock) is the latest timestamp the holder
-- may stamp into an id; the next holder starts after it.
CREATE TABLE {prefix}_machine_ids (
    machine_id INTEGER PRIMARY KEY CHECK (machine_id BETWEEN 0 AND 1023),
    incarnation INTEGER NOT NULL,
    -- Unix ms (database clock); the lease is live while this is ahead of it.
    expires_at INTEGER NOT NULL,
    reserved_until INTEGER NOT NULL
);
WITH RECURSIVE ids(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM ids WHERE n < 1023)
INSERT INTO {prefix}_machine_ids (machine_id, incarnation, expires_at, reserved_until)
SELECT n, 0, 0, 0 FROM ids;

-- Settings every process of the cluster must share (shards per group, shard hash): stored by
-- the first process, compared by every later one.
CREATE TABLE {prefix}_cluster (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
