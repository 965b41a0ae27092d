//! The SQL of [`SqliteMessageStorage`](super::SqliteMessageStorage), built once per prefix (the
//! multi-row inserts of a batch are built per batch size).

use std::sync::Arc;

use sqlx::{AssertSqlSafe, SqlSafeStr, SqlStr};

use crate::prefix::TablePrefix;

/// The database clock in unix milliseconds (the same expression as the runner storage's).
const NOW_MS: &str = "CAST(round(unixepoch('subsec') * 1000) AS INTEGER)";

/// The columns a claimed message is read with (`MessageRow`, plus `seq` to sort by); the last
/// acknowledged chunk is read by a second query.
const MESSAGE_COLUMNS: &str = "seq, id, kind, message_key, shard_id, entity_type, entity_id, \
    request_id, tag, payload, headers, streaming, uninterruptible, deliver_at AS deliver_at_ms, \
    NULL AS acked_id, NULL AS acked_sequence, NULL AS acked_frame";

/// Every statement, with the table prefix and the clock substituted.
#[derive(Debug)]
pub(super) struct MessageQueries {
    prefix: TablePrefix,
    pub(super) originals: SqlStr,
    pub(super) lease_epochs: SqlStr,
    pub(super) mark_requests_processed: SqlStr,
    pub(super) mark_envelopes_processed: SqlStr,
    pub(super) interrupted_request: SqlStr,
    pub(super) insert_interrupt: SqlStr,
    pub(super) message_request: SqlStr,
    pub(super) pending_requests: SqlStr,
    pub(super) ack_chunk: SqlStr,
    pub(super) replies_for: SqlStr,
    pub(super) claim: SqlStr,
    pub(super) acked_chunks: SqlStr,
    pub(super) next_deliver_at: SqlStr,
    pub(super) reset_shards: SqlStr,
    pub(super) reset_request: SqlStr,
    pub(super) reset_runner: SqlStr,
    pub(super) reset_address: SqlStr,
    pub(super) clear_address_replies: SqlStr,
    pub(super) clear_address_messages: SqlStr,
    pub(super) sweep_pick: SqlStr,
    pub(super) sweep_replies: SqlStr,
    pub(super) sweep_envelopes: SqlStr,
    pub(super) sweep_requests: SqlStr,
}

fn text(prefix: &TablePrefix, template: &str) -> String {
    prefix.substitute(template).replace("{now}", NOW_MS)
}

fn sql(prefix: &TablePrefix, template: &str) -> SqlStr {
    AssertSqlSafe(Arc::<str>::from(text(prefix, template))).into_sql_str()
}

/// `count` comma-separated copies of `row`.
fn rows(row: &str, count: usize) -> String {
    let mut out = String::with_capacity((row.len() + 2) * count);
    for i in 0..count {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(row);
    }
    out
}

impl MessageQueries {
    pub(super) fn new(prefix: &TablePrefix) -> Self {
        let in_json = |n: u8| format!("(SELECT value FROM json_each(?{n}))");
        Self {
            prefix: prefix.clone(),
            // ?1 JSON keys, ?2 JSON ids. Each message holding one of them (requests and
            // interrupts: an id may collide with either), a request with its final reply, else
            // its last chunk.
            originals: sql(
                prefix,
                &format!(
                    "SELECT m.id, m.kind, m.message_key, m.entity_type, m.entity_id, m.tag, \
                       m.payload, r.id AS reply_id, r.kind AS reply_kind, \
                       r.sequence AS reply_sequence, r.frame AS reply_frame, \
                       r.acked AS reply_acked \
                     FROM {{prefix}}_messages m \
                     LEFT JOIN {{prefix}}_replies r ON m.kind = 0 AND r.request_id = m.id \
                       AND r.id = ( \
                         SELECT id FROM {{prefix}}_replies WHERE request_id = m.id \
                         ORDER BY kind, sequence DESC LIMIT 1) \
                     WHERE m.message_key IN {} OR m.id IN {}",
                    in_json(1),
                    in_json(2)
                ),
            ),
            // ?1 JSON shards.
            lease_epochs: sql(
                prefix,
                &format!(
                    "SELECT shard_id, epoch FROM {{prefix}}_leases WHERE shard_id IN {}",
                    in_json(1)
                ),
            ),
            // ?1 JSON request ids (with a final reply just stored: not processed yet).
            mark_requests_processed: sql(
                prefix,
                &format!(
                    "UPDATE {{prefix}}_messages \
                     SET processed_at = {{now}}, claimed_by = NULL, claimed_until = NULL \
                     WHERE id IN {}",
                    in_json(1)
                ),
            ),
            // ?1 JSON request ids.
            mark_envelopes_processed: sql(
                prefix,
                &format!(
                    "UPDATE {{prefix}}_messages \
                     SET processed_at = {{now}}, claimed_by = NULL, claimed_until = NULL \
                     WHERE kind <> 0 AND request_id IN {}",
                    in_json(1)
                ),
            ),
            // ?1 request id: the request an interrupt names.
            interrupted_request: sql(
                prefix,
                "SELECT shard_id, entity_type, entity_id, uninterruptible, \
                   processed_at IS NOT NULL AS processed \
                 FROM {prefix}_messages WHERE id = ?1 AND kind = 0",
            ),
            // ?1 envelope id, ?2 request id, ?3 shard, ?4 entity type, ?5 entity id, ?6
            // processed; returns a row when stored.
            insert_interrupt: sql(
                prefix,
                "INSERT INTO {prefix}_messages (id, shard_id, entity_type, entity_id, kind, \
                   request_id, processed_at, created_at) \
                 VALUES (?1, ?3, ?4, ?5, 1, ?2, CASE WHEN ?6 THEN {now} END, {now}) \
                 ON CONFLICT DO NOTHING RETURNING 1",
            ),
            // ?1 id: the request an interrupt stored under this id interrupts (NULL: a request).
            message_request: sql(
                prefix,
                "SELECT CASE WHEN kind <> 0 THEN request_id END FROM {prefix}_messages \
                 WHERE id = ?1",
            ),
            // ?1 JSON ids: the stored requests among them that are unprocessed.
            pending_requests: sql(
                prefix,
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM {{prefix}}_messages \
                     WHERE id IN {} AND kind = 0 AND processed_at IS NULL",
                    in_json(1)
                ),
            ),
            // ?1 chunk id, ?2 request id.
            ack_chunk: sql(
                prefix,
                "UPDATE {prefix}_replies SET acked = 1 \
                 WHERE id = ?1 AND request_id = ?2 AND kind = 1 AND acked = 0",
            ),
            // ?1 JSON distinct request ids. Per request in the order asked: unacknowledged
            // chunks by sequence, then the final reply.
            replies_for: sql(
                prefix,
                "SELECT r.id, r.request_id, r.kind, r.sequence, r.frame, r.acked \
                 FROM json_each(?1) AS q JOIN {prefix}_replies r ON r.request_id = q.value \
                 WHERE r.kind = 0 OR r.acked = 0 \
                 ORDER BY q.key, r.kind DESC, r.sequence",
            ),
            // ?1 runner, ?2 claim ms, ?3 JSON shards, ?4 limit. One statement: SQLite runs it
            // under the database write lock, so two claimers never get the same row.
            claim: sql(
                prefix,
                &format!(
                    "UPDATE {{prefix}}_messages \
                     SET claimed_by = ?1, claimed_until = {{now}} + ?2 \
                     WHERE seq IN ( \
                       SELECT seq FROM {{prefix}}_messages \
                       WHERE shard_id IN {} AND processed_at IS NULL \
                         AND (claimed_until IS NULL OR claimed_until <= {{now}}) \
                         AND (deliver_at IS NULL OR deliver_at <= {{now}}) \
                       ORDER BY seq LIMIT ?4) \
                     RETURNING {MESSAGE_COLUMNS}",
                    in_json(3)
                ),
            ),
            // ?1 JSON request ids: the acknowledged chunk with the highest sequence of each.
            acked_chunks: sql(
                prefix,
                &format!(
                    "SELECT r.id, r.request_id, r.kind, r.sequence, r.frame, r.acked \
                     FROM {{prefix}}_replies r \
                     WHERE r.request_id IN {} AND r.kind = 1 AND r.acked = 1 \
                       AND r.sequence = ( \
                         SELECT max(r2.sequence) FROM {{prefix}}_replies r2 \
                         WHERE r2.request_id = r.request_id AND r2.kind = 1 AND r2.acked = 1)",
                    in_json(1)
                ),
            ),
            // ?1 JSON shards.
            next_deliver_at: sql(
                prefix,
                &format!(
                    "SELECT min(deliver_at) FROM {{prefix}}_messages \
                     WHERE shard_id IN {} AND processed_at IS NULL AND deliver_at IS NOT NULL \
                       AND deliver_at > {{now}}",
                    in_json(1)
                ),
            ),
            // ?1 JSON shards.
            reset_shards: sql(
                prefix,
                &format!(
                    "UPDATE {{prefix}}_messages SET claimed_by = NULL, claimed_until = NULL \
                     WHERE shard_id IN {} AND processed_at IS NULL AND claimed_by IS NOT NULL \
                     RETURNING shard_id",
                    in_json(1)
                ),
            ),
            // ?1 request id: the request and its interrupts. (A processed message has no claim:
            // `claimed_by IS NOT NULL` finds unprocessed ones.)
            reset_request: sql(
                prefix,
                "UPDATE {prefix}_messages SET claimed_by = NULL, claimed_until = NULL \
                 WHERE (id = ?1 OR (kind <> 0 AND request_id = ?1)) AND claimed_by IS NOT NULL \
                 RETURNING shard_id",
            ),
            // ?1 runner.
            reset_runner: sql(
                prefix,
                "UPDATE {prefix}_messages SET claimed_by = NULL, claimed_until = NULL \
                 WHERE claimed_by = ?1 \
                 RETURNING shard_id",
            ),
            // ?1 entity type, ?2 entity id.
            reset_address: sql(
                prefix,
                "UPDATE {prefix}_messages SET claimed_by = NULL, claimed_until = NULL \
                 WHERE entity_type = ?1 AND entity_id = ?2 AND claimed_by IS NOT NULL \
                 RETURNING shard_id",
            ),
            // ?1 entity type, ?2 entity id.
            clear_address_replies: sql(
                prefix,
                "DELETE FROM {prefix}_replies WHERE request_id IN ( \
                   SELECT id FROM {prefix}_messages \
                   WHERE entity_type = ?1 AND entity_id = ?2 AND kind = 0)",
            ),
            clear_address_messages: sql(
                prefix,
                "DELETE FROM {prefix}_messages WHERE entity_type = ?1 AND entity_id = ?2",
            ),
            // ?1 age ms, ?2 limit: the oldest processed requests.
            sweep_pick: sql(
                prefix,
                "SELECT id FROM {prefix}_messages \
                 WHERE kind = 0 AND processed_at < {now} - ?1 \
                 ORDER BY processed_at LIMIT ?2",
            ),
            // ?1 JSON request ids.
            sweep_replies: sql(
                prefix,
                &format!(
                    "DELETE FROM {{prefix}}_replies WHERE request_id IN {}",
                    in_json(1)
                ),
            ),
            sweep_envelopes: sql(
                prefix,
                &format!(
                    "DELETE FROM {{prefix}}_messages WHERE kind <> 0 AND request_id IN {}",
                    in_json(1)
                ),
            ),
            sweep_requests: sql(
                prefix,
                &format!(
                    "DELETE FROM {{prefix}}_messages WHERE kind = 0 AND id IN {}",
                    in_json(1)
                ),
            ),
        }
    }

    /// Inserts `count` requests (14 parameters each: id, key, shard, entity type, entity id,
    /// request id, tag, payload, headers, streaming, uninterruptible, deliver_at ms, claimed by,
    /// claim ms); returns the ids inserted. Conflicts store nothing.
    pub(super) fn insert_requests(&self, count: usize) -> SqlStr {
        let row = format!("(?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, {NOW_MS} + ?, {NOW_MS})");
        let statement = format!(
            "INSERT INTO {}_messages (id, message_key, shard_id, entity_type, entity_id, kind, \
               request_id, tag, payload, headers, streaming, uninterruptible, deliver_at, \
               claimed_by, claimed_until, created_at) \
             VALUES {} ON CONFLICT DO NOTHING RETURNING id",
            self.prefix,
            rows(&row, count)
        );
        AssertSqlSafe(statement).into_sql_str()
    }

    /// Inserts `count` replies (6 parameters each: id, request id, kind, sequence, frame, acked)
    /// of stored requests; returns the request id and kind of each reply inserted. A reply id, a
    /// chunk sequence or a second final reply already stored is ignored.
    pub(super) fn insert_replies(&self, count: usize) -> SqlStr {
        let statement = format!(
            "INSERT INTO {p}_replies (id, request_id, kind, sequence, frame, acked, created_at) \
             SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, {NOW_MS} \
             FROM (VALUES {}) AS v \
             WHERE EXISTS (SELECT 1 FROM {p}_messages m WHERE m.id = v.column2 AND m.kind = 0) \
             ON CONFLICT DO NOTHING RETURNING request_id, kind",
            rows("(?, ?, ?, ?, ?, ?)", count),
            p = self.prefix,
        );
        AssertSqlSafe(statement).into_sql_str()
    }
}
