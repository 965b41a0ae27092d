-- Runner membership and shard leases (shoal-storage `PostgresRunnerStorage`).
--
-- `{prefix}` is replaced by the configured table prefix (default `shoal`) before this runs; the
-- prefix is validated as a plain lower-case identifier. Every time is the database clock.

-- Machine ids come from a sequence and are never reused: a runner registering again under the
-- same address gets a new one.
CREATE SEQUENCE {prefix}_machine_ids AS BIGINT;

CREATE TABLE {prefix}_runners (
    -- The runner's address text (`host:port` or `unix:/path`).
    address TEXT PRIMARY KEY,
    machine_id BIGINT NOT NULL UNIQUE DEFAULT nextval('{prefix}_machine_ids'),
    -- The runner's JSON description (address, groups, weight).
    runner TEXT NOT NULL,
    healthy BOOLEAN NOT NULL DEFAULT TRUE,
    -- `now() + ttl` at the last register or refresh; the runner is listed while this is ahead.
    heartbeat_expires_at TIMESTAMPTZ NOT NULL
);

ALTER SEQUENCE {prefix}_machine_ids OWNED BY {prefix}_runners.machine_id;

CREATE TABLE {prefix}_leases (
    -- `group:id`. Byte-order collation, so every statement locks rows in the same order.
    shard_id TEXT COLLATE "C" PRIMARY KEY,
    -- The holder's address text; NULL once released.
    runner TEXT,
    -- Fencing token: grows every time the lease goes to a runner that did not hold it live.
    epoch BIGINT NOT NULL CHECK (epoch > 0),
    -- The lease is live while this is ahead of `now()` and `runner` is set.
    expires_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX {prefix}_leases_by_runner ON {prefix}_leases (runner) WHERE runner IS NOT NULL;
