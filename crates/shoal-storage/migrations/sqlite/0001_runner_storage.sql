-- Runner membership and shard leases (shoal-storage `SqliteRunnerStorage`).
--
-- `{prefix}` is replaced by the configured table prefix (default `shoal`) before this runs; the
-- prefix is validated as a plain lower-case identifier. Times are integers of unix milliseconds
-- from the database clock (`unixepoch('subsec')`), never a runner's clock.

CREATE TABLE {prefix}_runners (
    -- AUTOINCREMENT: ids are never reused, also after a row is deleted or replaced. A runner
    -- registering again replaces its row and so gets a new id.
    machine_id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The runner's address text (`host:port` or `unix:/path`).
    address TEXT NOT NULL UNIQUE,
    -- The runner's JSON description (address, groups, weight).
    runner TEXT NOT NULL,
    healthy INTEGER NOT NULL DEFAULT 1,
    -- `now + ttl` (unix ms) at the last register or refresh.
    heartbeat_expires_at INTEGER NOT NULL
);

CREATE TABLE {prefix}_leases (
    -- `group:id`.
    shard_id TEXT PRIMARY KEY,
    -- The holder's address text; NULL once released.
    runner TEXT,
    -- Fencing token: grows every time the lease goes to a runner that did not hold it live.
    epoch INTEGER NOT NULL CHECK (epoch > 0),
    -- Unix ms; the lease is live while this is ahead of the database clock and `runner` is set.
    expires_at INTEGER NOT NULL
);

CREATE INDEX {prefix}_leases_by_runner ON {prefix}_leases (runner) WHERE runner IS NOT NULL;
