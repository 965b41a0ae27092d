-- Durable messages: scheduling index (shoal-storage `SqliteMessageStorage`). `{prefix}` is
-- replaced by the configured table prefix.

-- `next_deliver_at` reads only unprocessed, scheduled messages.
CREATE INDEX {prefix}_messages_scheduled
    ON {prefix}_messages (shard_id, deliver_at)
    WHERE processed_at IS NULL AND deliver_at IS NOT NULL;
