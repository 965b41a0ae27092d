-- Replies are identified within their request (shoal-storage `SqliteMessageStorage`): two
-- processes that mint the same reply id for different requests must not lose either reply. The
-- reply id is no longer the table's key: the rowid is, and a reply is unique by its request and
-- sequence (a chunk) or as its request's final reply. SQLite cannot change a primary key in
-- place: the table is rebuilt.
CREATE TABLE {prefix}_replies_rebuilt (
    -- Insertion order (the rowid).
    seq INTEGER PRIMARY KEY,
    -- The reply's Snowflake id (unique within its request).
    id INTEGER NOT NULL,
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
INSERT INTO {prefix}_replies_rebuilt (id, request_id, kind, sequence, frame, acked, created_at)
SELECT id, request_id, kind, sequence, frame, acked, created_at FROM {prefix}_replies;
DROP TABLE {prefix}_replies;
ALTER TABLE {prefix}_replies_rebuilt RENAME TO {prefix}_replies;
CREATE UNIQUE INDEX {prefix}_replies_final ON {prefix}_replies (request_id) WHERE kind = 0;
