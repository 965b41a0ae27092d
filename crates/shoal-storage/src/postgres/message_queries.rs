//! The SQL of [`PostgresMessageStorage`](super::PostgresMessageStorage), built once per prefix.
//!
//! Statements that lock several message rows lock them in `id` order (claims skip locked rows
//! and never wait), so concurrent resets, replies and deletions cannot deadlock one another.

use std::sync::Arc;

use sqlx::{AssertSqlSafe, SqlSafeStr, SqlStr};

use crate::prefix::TablePrefix;

/// Every statement, with the table prefix substituted.
#[derive(Debug)]
pub(super) struct MessageQueries {
    pub(super) save_requests: SqlStr,
    pub(super) originals: SqlStr,
    pub(super) save_replies: SqlStr,
    pub(super) interrupted_request: SqlStr,
    pub(super) insert_interrupt: SqlStr,
    pub(super) message_request: SqlStr,
    pub(super) pending_requests: SqlStr,
    pub(super) ack_chunk: SqlStr,
    pub(super) replies_for: SqlStr,
    pub(super) claim: SqlStr,
    pub(super) next_deliver_at: SqlStr,
    pub(super) reset_shards: SqlStr,
    pub(super) reset_request: SqlStr,
    pub(super) reset_runner: SqlStr,
    pub(super) reset_address: SqlStr,
    pub(super) clear_address: SqlStr,
    pub(super) sweep: SqlStr,
    pub(super) notify: SqlStr,
}

fn sql(prefix: &TablePrefix, template: &str) -> SqlStr {
    AssertSqlSafe(Arc::<str>::from(prefix.substitute(template))).into_sql_str()
}

/// The columns a claimed message is read with (`MessageRow`), from a row source `c` and an
/// optional last-acknowledged chunk `a`.
const MESSAGE_COLUMNS: &str = "c.id, c.kind, c.message_key, c.shard_id, c.entity_type, \
    c.entity_id, c.request_id, c.tag, c.payload, c.headers, c.streaming, c.uninterruptible, \
    (extract(epoch FROM c.deliver_at) * 1000)::bigint AS deliver_at_ms, \
    a.id AS acked_id, a.sequence AS acked_sequence, a.frame AS acked_frame";

/// The columns of a pending request (`MessageRow`, without an acknowledged chunk).
const PENDING_COLUMNS: &str = "c.id, c.kind, c.message_key, c.shard_id, c.entity_type, \
    c.entity_id, c.request_id, c.tag, c.payload, c.headers, c.streaming, c.uninterruptible, \
    (extract(epoch FROM c.deliver_at) * 1000)::bigint AS deliver_at_ms, \
    NULL::bigint AS acked_id, NULL::integer AS acked_sequence, NULL::bytea AS acked_frame";

impl MessageQueries {
    pub(super) fn new(prefix: &TablePrefix) -> Self {
        Self {
            // $1..$13 one array per column (in lock order, see the caller), $14 channel, $15
            // notification payloads. Conflicts (a key or an id already stored, or stored by an
            // earlier row of the same batch) store nothing; only inserted ids come back. The
            // notifications go out with the commit, and only if something was inserted.
            save_requests: sql(
                prefix,
                "WITH input AS ( \
                   SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], \
                     $5::text[], $6::text[], $7::bytea[], $8::bytea[], $9::boolean[], \
                     $10::boolean[], $11::bigint[], $12::text[], $13::bigint[]) WITH ORDINALITY \
                   AS t(id, message_key, shard_id, entity_type, entity_id, tag, payload, \
                     headers, streaming, uninterruptible, deliver_at_ms, claimed_by, claim_ms, \
                     ord) \
                 ), inserted AS ( \
                   INSERT INTO {prefix}_messages (id, message_key, shard_id, entity_type, \
                     entity_id, kind, request_id, tag, payload, headers, streaming, \
                     uninterruptible, deliver_at, claimed_by, claimed_until) \
                   SELECT id, message_key, shard_id, entity_type, entity_id, 0, id, tag, \
                     payload, headers, streaming, uninterruptible, \
                     timestamptz 'epoch' + deliver_at_ms * interval '1 millisecond', \
                     claimed_by, now() + claim_ms * interval '1 millisecond' \
                   FROM input ORDER BY ord \
                   ON CONFLICT DO NOTHING \
                   RETURNING id \
                 ), notified AS ( \
                   SELECT count(pg_notify($14, p)) AS n FROM unnest($15::text[]) AS p \
                 ) \
                 SELECT id, (SELECT n FROM notified) AS notified FROM inserted",
            ),
            // $1 keys, $2 ids. Each message holding one of them (requests and interrupts: an id
            // may collide with either), a request with its final reply, else its last chunk.
            originals: sql(
                prefix,
                "SELECT m.id, m.kind, m.message_key, m.entity_type, m.entity_id, m.tag, \
                   m.payload, r.id AS reply_id, r.kind AS reply_kind, \
                   r.sequence AS reply_sequence, r.frame AS reply_frame, r.acked AS reply_acked \
                 FROM {prefix}_messages m \
                 LEFT JOIN LATERAL ( \
                   SELECT id, kind, sequence, frame, acked FROM {prefix}_replies \
                   WHERE m.kind = 0 AND request_id = m.id ORDER BY kind, sequence DESC LIMIT 1 \
                 ) r ON TRUE \
                 WHERE m.message_key = ANY($1::text[]) OR m.id = ANY($2::bigint[])",
            ),
            // $1..$6 reply columns, $7 fence shards, $8 fence epochs (in lock order, see the
            // caller), $9 channel, $10 notification payloads, $11 the distinct fence shards.
            //
            // The fence: the lease rows of the fence shards are share-locked (in shard order),
            // so no acquire can change an epoch between the check and the commit; a row whose
            // shard has a newer epoch is not written and comes back in `fenced`. Replies are
            // stored only for stored requests; a reply id, a chunk sequence or a second final
            // reply already stored is ignored. A final reply that was stored marks its request
            // and the request's interrupts processed, rows locked in id order (they cannot be
            // processed already: only a stored final reply processes a request, and there is
            // one). Rows are found by primary key (`id = ANY(ARRAY(...))`): a condition on
            // `processed_at` would tempt the planner into scanning the whole backlog through
            // the unprocessed-messages index when its statistics lag behind.
            save_replies: sql(
                prefix,
                "WITH input AS ( \
                   SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::smallint[], \
                     $4::integer[], $5::bytea[], $6::boolean[], $7::text[], $8::bigint[]) \
                     WITH ORDINALITY \
                   AS t(id, request_id, kind, sequence, frame, acked, shard_id, epoch, ord) \
                 ), lease AS ( \
                   SELECT shard_id, epoch FROM {prefix}_leases \
                   WHERE shard_id = ANY($11::text[]) ORDER BY shard_id FOR SHARE \
                 ), fenced AS ( \
                   SELECT i.ord, l.epoch FROM input i JOIN lease l ON l.shard_id = i.shard_id \
                   WHERE l.epoch > i.epoch \
                 ), inserted AS ( \
                   INSERT INTO {prefix}_replies (id, request_id, kind, sequence, frame, acked) \
                   SELECT i.id, i.request_id, i.kind, i.sequence, i.frame, i.acked FROM input i \
                   WHERE NOT EXISTS (SELECT 1 FROM fenced f WHERE f.ord = i.ord) \
                     AND EXISTS (SELECT 1 FROM {prefix}_messages m \
                                 WHERE m.id = i.request_id AND m.kind = 0) \
                   ORDER BY i.ord \
                   ON CONFLICT DO NOTHING \
                   RETURNING request_id, kind \
                 ), done AS ( \
                   SELECT request_id FROM inserted WHERE kind = 0 \
                 ), finished AS ( \
                   SELECT id FROM {prefix}_messages \
                   WHERE id = ANY(ARRAY( \
                     SELECT request_id FROM done \
                     UNION ALL \
                     SELECT e.id FROM {prefix}_messages e \
                     WHERE e.kind <> 0 AND e.request_id = ANY(ARRAY(SELECT request_id FROM done)))) \
                   ORDER BY id FOR NO KEY UPDATE \
                 ), processed AS ( \
                   UPDATE {prefix}_messages m \
                   SET processed_at = now(), claimed_by = NULL, claimed_until = NULL \
                   FROM finished WHERE m.id = finished.id \
                   RETURNING 1 \
                 ), notified AS ( \
                   SELECT count(pg_notify($9, p)) AS n FROM unnest($10::text[]) AS p \
                 ) \
                 SELECT ARRAY(SELECT ord FROM fenced ORDER BY ord) AS fenced_ord, \
                   ARRAY(SELECT epoch FROM fenced ORDER BY ord) AS fenced_epoch, \
                   (SELECT count(*) FROM processed) AS processed, \
                   (SELECT n FROM notified) AS notified",
            ),
            // $1 request id: the request an interrupt names, share-locked so that it cannot
            // finish (or be swept) before the interrupt is stored.
            interrupted_request: sql(
                prefix,
                "SELECT shard_id, entity_type, entity_id, uninterruptible, \
                   processed_at IS NOT NULL AS processed \
                 FROM {prefix}_messages WHERE id = $1 AND kind = 0 FOR SHARE",
            ),
            // $1 envelope id, $2 request id, $3 shard, $4 entity type, $5 entity id, $6
            // processed; returns a row when stored.
            insert_interrupt: sql(
                prefix,
                "INSERT INTO {prefix}_messages (id, shard_id, entity_type, entity_id, kind, \
                   request_id, processed_at) \
                 VALUES ($1, $3, $4, $5, 1, $2, CASE WHEN $6 THEN now() END) \
                 ON CONFLICT DO NOTHING RETURNING 1",
            ),
            // $1 id: the request an interrupt stored under this id interrupts (NULL: a request).
            message_request: sql(
                prefix,
                "SELECT CASE WHEN kind <> 0 THEN request_id END FROM {prefix}_messages WHERE id = $1",
            ),
            // $1 ids: the stored, unprocessed requests among them.
            pending_requests: sql(
                prefix,
                &format!(
                    "SELECT {PENDING_COLUMNS} FROM {{prefix}}_messages c \
                     WHERE c.id = ANY($1::bigint[]) AND c.kind = 0 AND c.processed_at IS NULL"
                ),
            ),
            // $1 chunk id, $2 request id.
            ack_chunk: sql(
                prefix,
                "UPDATE {prefix}_replies SET acked = TRUE \
                 WHERE id = $1 AND request_id = $2 AND kind = 1 AND NOT acked",
            ),
            // $1 distinct request ids. Per request in the order asked: unacknowledged chunks by
            // sequence, then the final reply.
            replies_for: sql(
                prefix,
                "SELECT r.id, r.request_id, r.kind, r.sequence, r.frame, r.acked \
                 FROM unnest($1::bigint[]) WITH ORDINALITY AS q(request_id, ord) \
                 JOIN {prefix}_replies r ON r.request_id = q.request_id \
                 WHERE r.kind = 0 OR NOT r.acked \
                 ORDER BY q.ord, r.kind DESC, r.sequence",
            ),
            // $1 shards, $2 limit, $3 runner, $4 claim ms. Oldest first: up to `limit`
            // candidates per shard from the unprocessed index (so a claim reads at most
            // shards x limit rows, whatever the backlog), the oldest `limit` of them locked by
            // primary key, skipping rows another claimer holds, re-checked on their latest
            // version, and claimed. Two claimers never get the same row.
            claim: sql(
                prefix,
                &format!(
                    "WITH candidates AS ( \
                       SELECT c.id FROM unnest($1::text[]) AS s(shard_id) \
                       CROSS JOIN LATERAL ( \
                         SELECT m.id, m.seq FROM {{prefix}}_messages m \
                         WHERE m.shard_id = s.shard_id AND m.processed_at IS NULL \
                           AND (m.claimed_until IS NULL OR m.claimed_until <= now()) \
                           AND (m.deliver_at IS NULL OR m.deliver_at <= now()) \
                         ORDER BY m.seq LIMIT $2 \
                       ) c \
                       ORDER BY c.seq LIMIT $2 \
                     ), picked AS ( \
                       SELECT id FROM {{prefix}}_messages \
                       WHERE id = ANY(ARRAY(SELECT id FROM candidates)) \
                         AND processed_at IS NULL \
                         AND (claimed_until IS NULL OR claimed_until <= now()) \
                         AND (deliver_at IS NULL OR deliver_at <= now()) \
                       ORDER BY seq \
                       FOR UPDATE SKIP LOCKED \
                     ), c AS ( \
                       UPDATE {{prefix}}_messages m \
                       SET claimed_by = $3, \
                         claimed_until = now() + $4::bigint * interval '1 millisecond' \
                       FROM picked WHERE m.id = picked.id \
                       RETURNING m.* \
                     ) \
                     SELECT {MESSAGE_COLUMNS} FROM c \
                     LEFT JOIN LATERAL ( \
                       SELECT id, sequence, frame FROM {{prefix}}_replies r \
                       WHERE c.kind = 0 AND r.request_id = c.id AND r.kind = 1 AND r.acked \
                       ORDER BY r.sequence DESC LIMIT 1 \
                     ) a ON TRUE \
                     ORDER BY c.seq"
                ),
            ),
            // $1 shards.
            next_deliver_at: sql(
                prefix,
                "SELECT (extract(epoch FROM min(deliver_at)) * 1000)::bigint \
                 FROM {prefix}_messages \
                 WHERE shard_id = ANY($1::text[]) AND processed_at IS NULL \
                   AND deliver_at IS NOT NULL AND deliver_at > now()",
            ),
            // $1 shards.
            reset_shards: sql(
                prefix,
                "WITH locked AS ( \
                   SELECT id FROM {prefix}_messages \
                   WHERE shard_id = ANY($1::text[]) AND processed_at IS NULL \
                     AND claimed_by IS NOT NULL \
                   ORDER BY id FOR NO KEY UPDATE \
                 ) \
                 UPDATE {prefix}_messages m SET claimed_by = NULL, claimed_until = NULL \
                 FROM locked WHERE m.id = locked.id RETURNING m.shard_id",
            ),
            // $1 request id: the request and its interrupts. (A processed message has no
            // claim, so `claimed_by IS NOT NULL` finds unprocessed ones without a condition on
            // `processed_at` that could mislead the planner; see `save_replies`.)
            reset_request: sql(
                prefix,
                "WITH locked AS ( \
                   SELECT id FROM {prefix}_messages \
                   WHERE (id = $1 OR (kind <> 0 AND request_id = $1)) \
                     AND claimed_by IS NOT NULL \
                   ORDER BY id FOR NO KEY UPDATE \
                 ) \
                 UPDATE {prefix}_messages m SET claimed_by = NULL, claimed_until = NULL \
                 FROM locked WHERE m.id = locked.id RETURNING m.shard_id",
            ),
            // $1 runner.
            reset_runner: sql(
                prefix,
                "WITH locked AS ( \
                   SELECT id FROM {prefix}_messages \
                   WHERE claimed_by = $1 \
                   ORDER BY id FOR NO KEY UPDATE \
                 ) \
                 UPDATE {prefix}_messages m SET claimed_by = NULL, claimed_until = NULL \
                 FROM locked WHERE m.id = locked.id RETURNING m.shard_id",
            ),
            // $1 entity type, $2 entity id.
            reset_address: sql(
                prefix,
                "WITH locked AS ( \
                   SELECT id FROM {prefix}_messages \
                   WHERE entity_type = $1 AND entity_id = $2 AND claimed_by IS NOT NULL \
                   ORDER BY id FOR NO KEY UPDATE \
                 ) \
                 UPDATE {prefix}_messages m SET claimed_by = NULL, claimed_until = NULL \
                 FROM locked WHERE m.id = locked.id RETURNING m.shard_id",
            ),
            // $1 entity type, $2 entity id. Its messages, and the replies of its requests.
            clear_address: sql(
                prefix,
                "WITH doomed AS ( \
                   SELECT id, kind FROM {prefix}_messages \
                   WHERE entity_type = $1 AND entity_id = $2 \
                   ORDER BY id FOR UPDATE \
                 ), replies AS ( \
                   DELETE FROM {prefix}_replies \
                   WHERE request_id IN (SELECT id FROM doomed WHERE kind = 0) \
                 ) \
                 DELETE FROM {prefix}_messages WHERE id IN (SELECT id FROM doomed)",
            ),
            // $1 age ms, $2 limit. The oldest processed requests (rows locked by someone else
            // are left for the next sweep), with their interrupts and replies, deleted by id.
            sweep: sql(
                prefix,
                "WITH doomed AS ( \
                   SELECT id FROM {prefix}_messages \
                   WHERE kind = 0 \
                     AND processed_at < now() - $1::bigint * interval '1 millisecond' \
                   ORDER BY processed_at LIMIT $2 \
                   FOR UPDATE SKIP LOCKED \
                 ), replies AS ( \
                   DELETE FROM {prefix}_replies WHERE request_id IN (SELECT id FROM doomed) \
                 ), envelopes AS ( \
                   DELETE FROM {prefix}_messages \
                   WHERE kind <> 0 AND request_id IN (SELECT id FROM doomed) \
                 ), requests AS ( \
                   DELETE FROM {prefix}_messages WHERE id IN (SELECT id FROM doomed) \
                   RETURNING 1 \
                 ) \
                 SELECT count(*) FROM requests",
            ),
            // $1 channel, $2 payloads.
            notify: sql(
                prefix,
                "SELECT count(pg_notify($1, p)) FROM unnest($2::text[]) AS p",
            ),
        }
    }
}
