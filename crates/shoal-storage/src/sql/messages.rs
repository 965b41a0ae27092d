//! What the SQL message backends store, and how rows turn back into values.
//!
//! Both backends use the same column layout (see `migrations/*/0002_message_storage.sql`): ids
//! are Snowflakes as signed 64-bit integers (the same bits), times are unix milliseconds at the
//! boundary, reply frames are protobuf `shoal.runner.v1.Reply` messages and headers a protobuf
//! `repeated Header`. Decoding never panics: anything that does not decode is reported as
//! [`StorageError::Malformed`] naming the row.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message as _;
use shoal_protocol::proto::runner::v1 as pb;
use shoal_protocol::{Chunk, EntityAddress, Headers, Reply, ReplyFrame, ShardId, Snowflake};

use crate::error::StorageError;
use crate::lease::Epoch;
use crate::messages::checks::{RequestView, check_interrupt, duplicate_or_conflict, stored_key};
use crate::messages::{
    Claim, ClaimedMessage, EnvelopeKind, PersistedEnvelope, PersistedRequest, StoredReply,
    StoredReplyKind,
};

/// `kind` of a request row.
pub(crate) const KIND_REQUEST: i16 = 0;
/// `kind` of an interrupt row.
pub(crate) const KIND_INTERRUPT: i16 = 1;
/// `kind` of a final reply row.
pub(crate) const REPLY_FINAL: i16 = 0;
/// `kind` of a chunk reply row.
pub(crate) const REPLY_CHUNK: i16 = 1;

/// The largest batch a group-commit writer writes at once.
pub(crate) const MAX_BATCH: usize = 512;

/// A Snowflake as stored (the same 64 bits, signed).
pub(crate) fn db_id(id: Snowflake) -> i64 {
    id.raw() as i64
}

/// A stored id as a Snowflake.
pub(crate) fn snowflake(id: i64) -> Snowflake {
    Snowflake::from_raw(id as u64)
}

/// An epoch as stored (epochs never come near `i64::MAX`; larger values saturate).
pub(crate) fn db_epoch(epoch: Epoch) -> i64 {
    i64::try_from(epoch.0).unwrap_or(i64::MAX)
}

/// Wall-clock time as unix milliseconds (negative before 1970).
pub(crate) fn unix_ms(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// Unix milliseconds as wall-clock time.
pub(crate) fn from_unix_ms(
    ms: i64,
    what: impl FnOnce() -> String,
) -> Result<SystemTime, StorageError> {
    let offset = Duration::from_millis(ms.unsigned_abs());
    let at = if ms >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    };
    at.ok_or_else(|| StorageError::Malformed {
        what: what(),
        detail: format!("time {ms} ms since 1970 is out of range"),
    })
}

/// Distinct shard texts, sorted.
pub(crate) fn shard_texts(shards: &[ShardId]) -> Vec<String> {
    shards
        .iter()
        .map(ToString::to_string)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Distinct request ids in the order first asked.
pub(crate) fn distinct_ids(ids: &[Snowflake]) -> Vec<i64> {
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    ids.iter()
        .filter(|id| seen.insert(**id))
        .map(|id| db_id(*id))
        .collect()
}

/// Headers as stored: a protobuf `repeated Header` (field 1), or `None` when there are none.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredHeaders {
    #[prost(message, repeated, tag = "1")]
    headers: Vec<pb::Header>,
}

fn encode_headers(headers: &Headers) -> Option<Vec<u8>> {
    if headers.is_empty() {
        return None;
    }
    let stored = StoredHeaders {
        headers: headers
            .iter()
            .map(|(name, value)| pb::Header {
                name: name.to_owned(),
                value: value.to_owned(),
            })
            .collect(),
    };
    Some(stored.encode_to_vec())
}

fn decode_headers(bytes: Option<&[u8]>) -> Result<Headers, String> {
    let Some(bytes) = bytes else {
        return Ok(Headers::new());
    };
    let stored = StoredHeaders::decode(bytes).map_err(|e| format!("headers do not decode: {e}"))?;
    Ok(stored
        .headers
        .into_iter()
        .map(|h| (h.name, h.value))
        .collect())
}

/// A request ready to be bound into an insert.
#[derive(Debug)]
pub(crate) struct RequestRow {
    pub(crate) id: i64,
    pub(crate) key: Option<String>,
    pub(crate) shard: ShardId,
    pub(crate) shard_id: String,
    pub(crate) entity_type: String,
    pub(crate) entity_id: String,
    pub(crate) tag: String,
    pub(crate) payload: Bytes,
    pub(crate) headers: Option<Vec<u8>>,
    pub(crate) streaming: bool,
    pub(crate) uninterruptible: bool,
    pub(crate) deliver_at_ms: Option<i64>,
    pub(crate) claimed_by: Option<String>,
    pub(crate) claim_ms: Option<i64>,
}

impl RequestRow {
    pub(crate) fn new(request: &PersistedRequest, claim: Option<&Claim>) -> Self {
        Self {
            id: db_id(request.id),
            key: request.key.as_deref().map(|k| stored_key(k).into_owned()),
            shard: request.address.shard.clone(),
            shard_id: request.address.shard.to_string(),
            entity_type: request.address.entity_type.to_string(),
            entity_id: request.address.entity_id.to_string(),
            tag: request.tag.to_string(),
            payload: request.payload.clone(),
            headers: encode_headers(&request.headers),
            streaming: request.streaming,
            uninterruptible: request.uninterruptible,
            deliver_at_ms: request.deliver_at.map(unix_ms),
            claimed_by: claim.map(|c| c.by.to_string()),
            claim_ms: claim.map(|c| super::millis(c.duration)),
        }
    }
}

/// A reply ready to be bound into an insert.
#[derive(Debug)]
pub(crate) struct ReplyInsert {
    pub(crate) id: i64,
    pub(crate) request_id: i64,
    pub(crate) kind: i16,
    pub(crate) sequence: Option<i32>,
    pub(crate) frame: Vec<u8>,
    pub(crate) acked: bool,
}

impl ReplyInsert {
    /// Encodes `reply` (refusing a chunk sequence beyond `i32::MAX`).
    pub(crate) fn new(reply: &StoredReply) -> Result<Self, StorageError> {
        let (kind, sequence, frame, acked) = match &reply.kind {
            StoredReplyKind::Final(frame) => (REPLY_FINAL, None, frame.clone(), false),
            StoredReplyKind::Chunk {
                sequence,
                values,
                acked,
            } => {
                let stored =
                    i32::try_from(*sequence).map_err(|_| StorageError::InvalidArgument {
                        operation: "save_reply",
                        detail: format!(
                            "chunk sequence {sequence} of request {} is beyond {}",
                            reply.request_id,
                            i32::MAX
                        ),
                    })?;
                let frame = ReplyFrame::Chunk(Chunk {
                    reply_id: reply.id,
                    sequence: *sequence,
                    values: values.clone(),
                });
                (REPLY_CHUNK, Some(stored), frame, *acked)
            }
        };
        let wire = pb::Reply::from(Reply {
            request_id: reply.request_id,
            frame,
        });
        Ok(Self {
            id: db_id(reply.id),
            request_id: db_id(reply.request_id),
            kind,
            sequence,
            frame: wire.encode_to_vec(),
            acked,
        })
    }
}

/// A stored reply row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ReplyRow {
    pub(crate) id: i64,
    pub(crate) request_id: i64,
    pub(crate) kind: i16,
    pub(crate) sequence: Option<i32>,
    pub(crate) frame: Vec<u8>,
    pub(crate) acked: bool,
}

impl ReplyRow {
    /// The reply, checked against the row's own columns.
    pub(crate) fn decode(self) -> Result<StoredReply, StorageError> {
        let (id, request_id) = (snowflake(self.id), snowflake(self.request_id));
        let malformed = |detail: String| StorageError::Malformed {
            what: format!("reply row {id} (request {request_id})"),
            detail,
        };
        let wire = pb::Reply::decode(self.frame.as_slice()).map_err(|e| {
            malformed(format!(
                "the frame is not a protobuf shoal.runner.v1.Reply: {e}"
            ))
        })?;
        let reply = Reply::try_from(wire).map_err(|e| malformed(format!("the frame: {e}")))?;
        if reply.request_id != request_id {
            return Err(malformed(format!(
                "the frame answers request {}",
                reply.request_id
            )));
        }
        let kind = match (self.kind, reply.frame) {
            (REPLY_FINAL, frame) if frame.is_final() => StoredReplyKind::Final(frame),
            (REPLY_CHUNK, ReplyFrame::Chunk(chunk)) => {
                let column = self.sequence.and_then(|s| u32::try_from(s).ok());
                if column != Some(chunk.sequence) || chunk.reply_id != id {
                    return Err(malformed(format!(
                        "chunk {} (sequence {}) does not match its row (sequence {:?})",
                        chunk.reply_id, chunk.sequence, self.sequence
                    )));
                }
                StoredReplyKind::Chunk {
                    sequence: chunk.sequence,
                    values: chunk.values,
                    acked: self.acked,
                }
            }
            (kind, frame) => {
                return Err(malformed(format!(
                    "kind {kind} does not fit a {} frame",
                    if frame.is_final() { "final" } else { "chunk" }
                )));
            }
        };
        Ok(StoredReply {
            id,
            request_id,
            kind,
        })
    }
}

/// Optional reply columns of a joined row: a reply when `id` is set.
#[allow(clippy::too_many_arguments)]
pub(crate) fn joined_reply(
    id: Option<i64>,
    request_id: i64,
    kind: Option<i16>,
    sequence: Option<i32>,
    frame: Option<Vec<u8>>,
    acked: Option<bool>,
) -> Result<Option<StoredReply>, StorageError> {
    let Some(id) = id else {
        return Ok(None);
    };
    ReplyRow {
        id,
        request_id,
        kind: kind.unwrap_or(-1),
        sequence,
        frame: frame.unwrap_or_default(),
        acked: acked.unwrap_or(false),
    }
    .decode()
    .map(Some)
}

/// A message row as claimed, with the request's last acknowledged chunk when it has one.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct MessageRow {
    pub(crate) id: i64,
    pub(crate) kind: i16,
    pub(crate) message_key: Option<String>,
    pub(crate) shard_id: String,
    pub(crate) entity_type: String,
    pub(crate) entity_id: String,
    pub(crate) request_id: i64,
    pub(crate) tag: Option<String>,
    pub(crate) payload: Option<Vec<u8>>,
    pub(crate) headers: Option<Vec<u8>>,
    pub(crate) streaming: bool,
    pub(crate) uninterruptible: bool,
    pub(crate) deliver_at_ms: Option<i64>,
    pub(crate) acked_id: Option<i64>,
    pub(crate) acked_sequence: Option<i32>,
    pub(crate) acked_frame: Option<Vec<u8>>,
}

impl MessageRow {
    pub(crate) fn decode(self) -> Result<ClaimedMessage, StorageError> {
        let id = snowflake(self.id);
        let what = || format!("message row {id}");
        let malformed = |detail: String| StorageError::Malformed {
            what: what(),
            detail,
        };
        let shard: ShardId = self
            .shard_id
            .parse()
            .map_err(|e| malformed(format!("shard {:?}: {e}", self.shard_id)))?;
        let entity_type = self
            .entity_type
            .parse()
            .map_err(|e| malformed(format!("entity type {:?}: {e}", self.entity_type)))?;
        let entity_id = self
            .entity_id
            .parse()
            .map_err(|e| malformed(format!("entity id {:?}: {e}", self.entity_id)))?;
        let address = EntityAddress::new(shard, entity_type, entity_id);
        match self.kind {
            KIND_REQUEST => {
                let tag = self
                    .tag
                    .as_deref()
                    .ok_or_else(|| malformed("a request without a tag".to_owned()))?;
                let tag = tag
                    .parse()
                    .map_err(|e| malformed(format!("tag {tag:?}: {e}")))?;
                let payload = self
                    .payload
                    .ok_or_else(|| malformed("a request without a payload".to_owned()))?;
                let headers = decode_headers(self.headers.as_deref()).map_err(malformed)?;
                let deliver_at = self
                    .deliver_at_ms
                    .map(|ms| from_unix_ms(ms, what))
                    .transpose()?;
                let last_acked_chunk = joined_reply(
                    self.acked_id,
                    self.id,
                    Some(REPLY_CHUNK),
                    self.acked_sequence,
                    self.acked_frame,
                    Some(true),
                )?;
                Ok(ClaimedMessage::Request {
                    request: Box::new(PersistedRequest {
                        id,
                        address,
                        tag,
                        payload: Bytes::from(payload),
                        headers,
                        key: self.message_key,
                        deliver_at,
                        streaming: self.streaming,
                        uninterruptible: self.uninterruptible,
                    }),
                    last_acked_chunk,
                })
            }
            KIND_INTERRUPT => Ok(ClaimedMessage::Envelope(PersistedEnvelope {
                id,
                request_id: snowflake(self.request_id),
                address,
                kind: EnvelopeKind::Interrupt,
            })),
            other => Err(malformed(format!("unknown message kind {other}"))),
        }
    }
}

/// One result per asked id, in order, from the rows of a pending-request read: the stored,
/// unprocessed request, or `None`.
pub(crate) fn pending_results(
    ids: &[i64],
    rows: Vec<MessageRow>,
) -> Vec<Result<Option<PersistedRequest>, StorageError>> {
    let mut found = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        found.insert(row.id, row.decode());
    }
    ids.iter()
        .map(|id| match found.remove(id) {
            None | Some(Ok(ClaimedMessage::Envelope(_))) => Ok(None),
            Some(Ok(ClaimedMessage::Request { request, .. })) => Ok(Some(*request)),
            Some(Err(error)) => Err(error),
        })
        .collect()
}

/// The request an interrupt names, as stored.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct InterruptedRequest {
    pub(crate) shard_id: String,
    pub(crate) entity_type: String,
    pub(crate) entity_id: String,
    pub(crate) uninterruptible: bool,
    pub(crate) processed: bool,
}

impl InterruptedRequest {
    /// Refuses `envelope` unless it may interrupt this request (see [`check_interrupt`]).
    pub(crate) fn admits(&self, envelope: &PersistedEnvelope) -> Result<(), StorageError> {
        check_interrupt(
            envelope,
            &self.shard_id,
            &self.entity_type,
            &self.entity_id,
            self.uninterruptible,
        )
    }
}

/// A message row found by key or id (for duplicates and conflicts), with the latest reply of a
/// request.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct OriginalRow {
    pub(crate) id: i64,
    pub(crate) kind: i16,
    pub(crate) message_key: Option<String>,
    pub(crate) entity_type: String,
    pub(crate) entity_id: String,
    pub(crate) tag: Option<String>,
    pub(crate) payload: Option<Vec<u8>>,
    pub(crate) reply_id: Option<i64>,
    pub(crate) reply_kind: Option<i16>,
    pub(crate) reply_sequence: Option<i32>,
    pub(crate) reply_frame: Option<Vec<u8>>,
    pub(crate) reply_acked: Option<bool>,
}

impl OriginalRow {
    fn view(&self) -> Option<RequestView<'_>> {
        (self.kind == KIND_REQUEST).then(|| RequestView {
            key: self.message_key.as_deref(),
            entity_type: &self.entity_type,
            entity_id: &self.entity_id,
            tag: self.tag.as_deref().unwrap_or_default(),
            payload: self.payload.as_deref().unwrap_or_default(),
        })
    }
}

impl RequestRow {
    fn view(&self) -> RequestView<'_> {
        RequestView {
            key: self.key.as_deref(),
            entity_type: &self.entity_type,
            entity_id: &self.entity_id,
            tag: &self.tag,
            payload: &self.payload,
        }
    }
}

/// The outcome of a batch insert for each request: saved, a duplicate of a stored original, or
/// a conflict with a stored message that is another request (or an interrupt) under the same id
/// or key.
pub(crate) fn save_results<R: std::borrow::Borrow<RequestRow>>(
    rows: &[R],
    inserted: &std::collections::HashSet<i64>,
    originals: Vec<OriginalRow>,
) -> Vec<Result<crate::messages::SaveResult, StorageError>> {
    use crate::messages::SaveResult;
    let mut by_key = std::collections::HashMap::new();
    let mut by_id = std::collections::HashMap::new();
    for original in originals {
        let original = std::sync::Arc::new(original);
        if let Some(key) = &original.message_key {
            by_key.insert(key.clone(), original.clone());
        }
        by_id.insert(original.id, original);
    }
    // Each inserted id answers `Saved` once; another caller with the same id is a duplicate (or
    // a conflict).
    let mut answered = std::collections::HashSet::new();
    rows.iter()
        .map(|row| {
            let row = row.borrow();
            if inserted.contains(&row.id) && answered.insert(row.id) {
                return Ok(SaveResult::Saved);
            }
            let (original, same_key) = match row.key.as_ref().and_then(|key| by_key.get(key)) {
                Some(original) => (original, true),
                None => (
                    by_id.get(&row.id).ok_or_else(|| {
                        StorageError::backend(
                            "save_request",
                            format!(
                                "request {} conflicted with a stored message that was deleted \
                                 meanwhile (cleared or swept); save it again",
                                snowflake(row.id)
                            ),
                        )
                    })?,
                    false,
                ),
            };
            let Some(stored) = original.view() else {
                return Err(StorageError::Conflict {
                    operation: "save_request",
                    detail: format!(
                        "its id {} is already used by an interrupt (two processes made the \
                         same id: make a new id and save again)",
                        snowflake(row.id)
                    ),
                });
            };
            duplicate_or_conflict(&row.view(), &stored, same_key)?;
            let last_reply = joined_reply(
                original.reply_id,
                original.id,
                original.reply_kind,
                original.reply_sequence,
                original.reply_frame.clone(),
                original.reply_acked,
            )?;
            Ok(SaveResult::Duplicate {
                original_id: snowflake(original.id),
                last_reply,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use shoal_protocol::{ErrorCode, Failure};

    use super::*;

    fn round_trip(reply: StoredReply) {
        let insert = ReplyInsert::new(&reply).unwrap();
        let row = ReplyRow {
            id: insert.id,
            request_id: insert.request_id,
            kind: insert.kind,
            sequence: insert.sequence,
            frame: insert.frame,
            acked: insert.acked,
        };
        assert_eq!(row.decode().unwrap(), reply);
    }

    #[test]
    fn replies_round_trip() {
        let (id, request_id) = (Snowflake::from_raw(u64::MAX - 5), Snowflake::from_raw(7));
        for kind in [
            StoredReplyKind::Final(ReplyFrame::Value(Bytes::from_static(b"v"))),
            StoredReplyKind::Final(ReplyFrame::End),
            StoredReplyKind::Final(ReplyFrame::Failure(Failure::new(ErrorCode::Defect, "boom"))),
            StoredReplyKind::Chunk {
                sequence: 3,
                values: vec![Bytes::from_static(b"a"), Bytes::new()],
                acked: true,
            },
        ] {
            round_trip(StoredReply {
                id,
                request_id,
                kind,
            });
        }
    }

    #[test]
    fn garbage_frames_are_malformed_not_panics() {
        for (kind, sequence, frame) in [
            (REPLY_FINAL, None, b"\xff\xff\xff".to_vec()),
            (REPLY_FINAL, None, Vec::new()),
            (7, None, Vec::new()),
            (REPLY_CHUNK, Some(1), Vec::new()),
        ] {
            let row = ReplyRow {
                id: 11,
                request_id: 0,
                kind,
                sequence,
                frame,
                acked: false,
            };
            match row.decode() {
                Err(StorageError::Malformed { what, .. }) => assert!(what.contains("11"), "{what}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn times_round_trip_in_milliseconds() {
        for ms in [0, 1, 1_700_000_000_123, -5_000] {
            let at = from_unix_ms(ms, String::new).unwrap();
            assert_eq!(unix_ms(at), ms);
        }
    }

    #[test]
    fn headers_round_trip() {
        let mut headers = Headers::new();
        headers.push("a", "1");
        headers.push("a", "2");
        let bytes = encode_headers(&headers);
        assert_eq!(decode_headers(bytes.as_deref()).unwrap(), headers);
        assert_eq!(encode_headers(&Headers::new()), None);
        assert!(decode_headers(Some(b"\xff")).is_err());
    }
}
