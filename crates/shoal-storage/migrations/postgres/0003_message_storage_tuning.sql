-- Durable messages: scheduling index and autovacuum settings (shoal-storage
-- `PostgresMessageStorage`). `{prefix}` is replaced by the configured table prefix.

-- `next_deliver_at` reads only unprocessed, scheduled messages.
CREATE INDEX {prefix}_messages_scheduled
    ON {prefix}_messages (shard_id, deliver_at)
    WHERE processed_at IS NULL AND deliver_at IS NOT NULL;

-- Both tables behave like queues: rows are inserted, updated once or twice and deleted by
-- retention. Analyze and vacuum them after a small fraction of changes (not the default 10-20%)
-- so that the planner's picture of the unprocessed backlog stays close to the truth.
ALTER TABLE {prefix}_messages SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.01
);
ALTER TABLE {prefix}_replies SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.01
);
