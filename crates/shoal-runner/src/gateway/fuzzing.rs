//! **Not part of the public API** (hidden from the docs, may change in any release): what the
//! gateway reads from a call request before routing it, for the fuzz targets in `fuzz/`.

use std::num::NonZeroU32;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use shoal_protocol::{EntityAddress, EntityId, EntityType, ShardGroup, ShardId, Tag};
use shoal_sharding::{CallError, CallErrorKind};

use super::call;
use super::error::ApiError;

/// A call request as the gateway reads it, checked, for the entity type `type`.
#[derive(Debug)]
pub struct ParsedCall {
    /// The call's deadline (`x-shoal-timeout-ms`).
    pub timeout: Option<Duration>,
    /// The JSON message (`{}` for an empty body).
    pub payload: Bytes,
    /// The `Idempotency-Key` (makes the call persisted).
    pub idempotency_key: Option<String>,
    /// The `x-request-id` echoed back and passed to the entity.
    pub request_id: Option<HeaderValue>,
    /// The entity, with the shard its id hashes to (in the default group).
    pub address: EntityAddress,
    /// The message tag.
    pub tag: Tag,
}

/// Reads a `POST /v1/entities/{type}/{id}/{tag}` request whose path parts (already
/// percent-decoded) are `entity_id` and `tag`, with the checks of the gateway in its order:
/// the timeout header, the body (at most `max_body` bytes, JSON), the idempotency key, then the
/// entity id and the tag as the entity client checks them. `shards` is the cluster's number of
/// shards per group.
pub fn read_call(
    entity_type: &EntityType,
    entity_id: &str,
    tag: &str,
    headers: &HeaderMap,
    body: Bytes,
    max_body: usize,
    shards: NonZeroU32,
) -> Result<ParsedCall, ApiError> {
    let request_id = call::request_id(headers);
    let timeout = call::call_timeout(headers)?;
    // A body already in memory is read at the first poll.
    let read = call::read_body(Body::from(body), headers, max_body);
    let payload = match pin!(read).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => result?,
        Poll::Pending => {
            return Err(ApiError::bad_request(
                "the body was not ready (a fuzzing harness error)",
            ));
        }
    };
    let idempotency_key = call::idempotency_key(headers)?;
    let id = EntityId::new(entity_id)
        .map_err(|reason| ApiError::from_call(&CallError::invalid_entity_id(entity_id, reason)))?;
    let shard: ShardId = shoal_sharding::shard_for(&ShardGroup::default_group(), &id, shards);
    let address = EntityAddress::new(shard, entity_type.clone(), id);
    let tag = Tag::new(tag).map_err(|_| {
        ApiError::from_call(&CallError::new(
            CallErrorKind::UnknownTag {
                tag: tag.to_owned(),
            },
            address.clone(),
            "",
        ))
    })?;
    Ok(ParsedCall {
        timeout,
        payload,
        idempotency_key,
        request_id,
        address,
        tag,
    })
}
