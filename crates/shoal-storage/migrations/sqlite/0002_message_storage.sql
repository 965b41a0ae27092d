-- Durable messages (shoal-storage `SqliteMessageStorage`).
--
-- `{prefix}` is replaced by the configured table prefix (default `shoal`) before this runs. Times
-- are integers of unix milliseconds; claim expiries, processing and creation times come from the
-- database clock, `deliver_at` is the caller's wall-clock time compared with it.

CREATE TABLE {prefix}_messages (
    -- Insertion order (the rowid): messages are claimed oldest first. AUTOINCREMENT: never
    -- reused, so the order holds after deletions.
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The request id (requests) or the envelope id (interrupts): a Snowflake.
    id INTEGER NOT NULL UNIQUE,
    -- Deduplication key of a request with a primary key (keys longer than 255 bytes are stored
    -- as `sha256:<hex>`); NULL otherwise. NULLs are distinct.
    message_key TEXT UNIQUE,
    -- `group:id` of the entity's shard.
    shard_id TEXT NOT NULL,
    entity_type TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    -- 0 request, 1 interrupt.
    kind INTEGER NOT NULL CHECK (kind IN (0, 1)),
    -- The request concerned: `id` itself for a request.
    request_id INTEGER NOT NULL,
    -- Request only: tag, encoded payload, headers (protobuf `repeated Header`, NULL when none).
    tag TEXT,
    payload BLOB,
    headers BLOB,
    streaming INTEGER NOT NULL DEFAULT 0,
    uninterruptible INTEGER NOT NULL DEFAULT 0,
    -- Unix ms; not deliverable before (NULL: at once).
    deliver_at INTEGER,
    -- The runner delivering the message and until when (unix ms) its claim holds.
    claimed_by TEXT,
    claimed_until INTEGER,
    -- Unix ms of the final reply of the request (NULL while unprocessed).
    processed_at INTEGER,
    created_at INTEGER NOT NULL,
    CHECK ((kind = 0) = (id = request_id)),
    CHECK (kind <> 0 OR (tag IS NOT NULL AND payload IS NOT NULL))
);

CREATE INDEX {prefix}_messages_unprocessed
    ON {prefix}_messages (shard_id, seq) WHERE processed_at IS NULL;
CREATE INDEX {prefix}_messages_envelopes
    ON {prefix}_messages (request_id) WHERE kind <> 0;
CREATE INDEX {prefix}_messages_address ON {prefix}_messages (entity_type, entity_id);
CREATE INDEX {prefix}_messages_claimed_by
    ON {prefix}_messages (claimed_by) WHERE claimed_by IS NOT NULL;
CREATE INDEX {prefix}_messages_processed
    ON {prefix}_messages (processed_at) WHERE processed_at IS NOT NULL;

CREATE TABLE {prefix}_replies (
    id INTEGER PRIMARY KEY,
    request_id INTEGER NOT NULL,
    -- 0 final reply, 1 stream chunk.
    kind INTEGER NOT NULL CHECK (kind IN (0, 1)),
    -- Chunk position from 0; NULL for the final reply.
    sequence INTEGER CHECK (sequence >= 0),
    -- The frame: protobuf `shoal.runner.v1.Reply`.
    frame BLOB NOT NULL,
    acked INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    CHECK ((kind = 0) = (sequence IS NULL)),
    UNIQUE (request_id, sequence)
);

CREATE UNIQUE INDEX {prefix}_replies_final ON {prefix}_replies (request_id) WHERE kind = 0;
