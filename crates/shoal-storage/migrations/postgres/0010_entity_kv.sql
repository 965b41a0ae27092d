-- Per-entity durable key-value storage (shoal-storage `PostgresEntityKv`).
--
-- `{prefix}` is replaced by the configured table prefix (default `shoal`) before this runs. Writes
-- are fenced by `{prefix}_leases` (same prefix): each write statement locks the entity's shard
-- lease row FOR SHARE and applies only when the lease has no newer epoch than the writer's.

CREATE TABLE {prefix}_entity_kv (
    entity_type TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    -- Compared as unsigned bytes (bytea order), which is the order lists return.
    key BYTEA NOT NULL,
    -- Never empty: the storage refuses empty values.
    value BYTEA NOT NULL,
    -- Database clock at the last write of this key.
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (entity_type, entity_id, key)
);
