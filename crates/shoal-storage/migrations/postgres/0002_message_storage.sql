-- Durable messages (shoal-storage `PostgresMessageStorage`).
--
-- `{prefix}` is replaced by the configured table prefix (default `shoal`) before this runs. Claim
-- expiries, processing and creation times are the database clock; `deliver_at` is the caller's
-- wall-clock time, compared with the database clock.

CREATE TABLE {prefix}_messages (
    -- The request id (requests) or the envelope id (interrupts): a Snowflake.
    id BIGINT PRIMARY KEY,
    -- Insertion order: messages are claimed oldest first.
    seq BIGINT GENERATED ALWAYS AS IDENTITY,
    -- Deduplication key of a request with a primary key (keys longer than 255 bytes are stored
    -- as `sha256:<hex>`); NULL otherwise. NULLs are distinct.
    message_key TEXT UNIQUE,
    -- `group:id` of the entity's shard.
    shard_id TEXT COLLATE "C" NOT NULL,
    entity_type TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    -- 0 request, 1 interrupt.
    kind SMALLINT NOT NULL CHECK (kind IN (0, 1)),
    -- The request concerned: `id` itself for a request.
    request_id BIGINT NOT NULL,
    -- Request only: tag, encoded payload, headers (protobuf `repeated Header`, NULL when none).
    tag TEXT,
    payload BYTEA,
    headers BYTEA,
    streaming BOOLEAN NOT NULL DEFAULT FALSE,
    uninterruptible BOOLEAN NOT NULL DEFAULT FALSE,
    -- Not deliverable before this time (NULL: at once).
    deliver_at TIMESTAMPTZ,
    -- The runner delivering the message and until when its claim holds (NULL: unclaimed).
    claimed_by TEXT,
    claimed_until TIMESTAMPTZ,
    -- When the request got its final reply (for an interrupt: when its request did). NULL while
    -- unprocessed. Retention counts from here.
    processed_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((kind = 0) = (id = request_id)),
    CHECK (kind <> 0 OR (tag IS NOT NULL AND payload IS NOT NULL))
);

-- The claim query: unprocessed messages of some shards in insertion order.
CREATE INDEX {prefix}_messages_unprocessed
    ON {prefix}_messages (shard_id, seq) WHERE processed_at IS NULL;
-- Interrupts of a request (marked processed with it).
CREATE INDEX {prefix}_messages_envelopes
    ON {prefix}_messages (request_id) WHERE kind <> 0;
-- reset_address and clear_address.
CREATE INDEX {prefix}_messages_address ON {prefix}_messages (entity_type, entity_id);
-- reset_runner.
CREATE INDEX {prefix}_messages_claimed_by
    ON {prefix}_messages (claimed_by) WHERE claimed_by IS NOT NULL;
-- Retention: the oldest processed messages.
CREATE INDEX {prefix}_messages_processed
    ON {prefix}_messages (processed_at) WHERE processed_at IS NOT NULL;

CREATE TABLE {prefix}_replies (
    -- The reply's Snowflake id.
    id BIGINT PRIMARY KEY,
    -- The request answered.
    request_id BIGINT NOT NULL,
    -- 0 final reply, 1 stream chunk.
    kind SMALLINT NOT NULL CHECK (kind IN (0, 1)),
    -- Chunk position in the stream, from 0; NULL for the final reply.
    sequence INTEGER CHECK (sequence >= 0),
    -- The frame: protobuf `shoal.runner.v1.Reply`.
    frame BYTEA NOT NULL,
    -- The caller acknowledged the chunk.
    acked BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((kind = 0) = (sequence IS NULL)),
    -- Also the index of replies by request.
    UNIQUE (request_id, sequence)
);

-- At most one final reply per request: the first one stands.
CREATE UNIQUE INDEX {prefix}_replies_final ON {prefix}_replies (request_id) WHERE kind = 0;
