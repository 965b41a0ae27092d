-- Event lane queue: one message table and one dead-letter table per table prefix.
-- `{prefix}` is replaced by the queue's validated table prefix before this runs.

CREATE TABLE IF NOT EXISTS {prefix}_lane_messages (
    id          BIGSERIAL PRIMARY KEY,
    lane        TEXT NOT NULL,
    event       TEXT NOT NULL,
    payload     BYTEA NOT NULL,
    source      TEXT NOT NULL,
    context     TEXT NOT NULL DEFAULT '{}',
    auth_token  TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Deliveries so far; raised by every claim, and the fencing token of ack/retry/dead-letter.
    attempts    INTEGER NOT NULL DEFAULT 0,
    -- Deliverable from this time on: now() when enqueued, now() + visibility timeout while
    -- claimed (a crashed consumer's message comes back then), now() + retry delay after a retry.
    visible_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    claimed_at  TIMESTAMPTZ
);

CREATE INDEX IF NOT EXISTS {prefix}_lane_messages_visible
    ON {prefix}_lane_messages (visible_at, id);

CREATE TABLE IF NOT EXISTS {prefix}_lane_dead_letters (
    id          BIGINT PRIMARY KEY,
    lane        TEXT NOT NULL,
    event       TEXT NOT NULL,
    payload     BYTEA NOT NULL,
    source      TEXT NOT NULL,
    context     TEXT NOT NULL,
    auth_token  TEXT,
    created_at  TIMESTAMPTZ NOT NULL,
    attempts    INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    dead_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
