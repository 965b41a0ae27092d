-- Per-entity durable key-value storage (shoal-storage `SqliteEntityKv`).
--
-- `{prefix}` is replaced by the configured table prefix (default `shoal`) before this runs. Writes
-- are fenced by `{prefix}_leases` (same prefix): each write is a `BEGIN IMMEDIATE` transaction
-- that reads the entity's shard lease epoch and refuses the write when it is newer than the
-- writer's.

CREATE TABLE {prefix}_entity_kv (
    entity_type TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    -- A BLOB: compared as unsigned bytes (memcmp), which is the order lists return.
    key BLOB NOT NULL,
    -- Never empty: the storage refuses empty values.
    value BLOB NOT NULL,
    -- Unix milliseconds of the database clock at the last write of this key.
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (entity_type, entity_id, key)
) WITHOUT ROWID;
