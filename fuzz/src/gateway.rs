//! The HTTP gateway: what turns a client's bytes into an entity call. The input is an HTTP/1.1
//! request. Its head is parsed with `httparse` (hyper's parser), its path matched and
//! percent-decoded as axum does for `POST /v1/entities/{type}/{id}/{tag}`, and the headers and
//! body go through `shoal_runner::gateway::fuzzing::read_call`: the gateway's own checks, in its
//! order (timeout header, body limit and JSON, idempotency key, entity id and tag).

use std::num::NonZeroU32;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use shoal_protocol::EntityType;
use shoal_runner::gateway::fuzzing::read_call;
use shoal_runner::gateway::{IDEMPOTENCY_KEY_HEADER, MAX_TIMEOUT_MS, TIMEOUT_HEADER};

/// The gateway's body limit in the harness (small, so that inputs reach it).
const MAX_BODY: usize = 1024;
/// Shards per group.
const SHARDS: NonZeroU32 = NonZeroU32::new(300).expect("not zero");
/// The route's prefix.
const PREFIX: &str = "/v1/entities/";

/// A request as hyper and axum hand it to the gateway's handler.
struct Parsed<'a> {
    entity_type: String,
    entity_id: String,
    tag: String,
    headers: HeaderMap,
    body: &'a [u8],
}

/// A path parameter as axum decodes it (percent-decoded, UTF-8).
fn decode(segment: &str) -> Option<String> {
    percent_encoding::percent_decode(segment.as_bytes())
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

fn parse(data: &[u8]) -> Option<Parsed<'_>> {
    let mut raw = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut raw);
    let httparse::Status::Complete(head_len) = request.parse(data).ok()? else {
        return None;
    };
    if request.method? != "POST" {
        return None;
    }
    // The router matches the path without the query; each parameter is one non-empty segment.
    let path = request.path?.split('?').next()?;
    let rest = path.strip_prefix(PREFIX)?;
    let mut segments = rest.split('/');
    let (entity_type, entity_id, tag) = (segments.next()?, segments.next()?, segments.next()?);
    if segments.next().is_some() || [entity_type, entity_id, tag].contains(&"") {
        return None;
    }
    let mut headers = HeaderMap::new();
    for h in request.headers.iter() {
        headers.append(
            HeaderName::from_bytes(h.name.as_bytes()).ok()?,
            HeaderValue::from_bytes(h.value).ok()?,
        );
    }
    Some(Parsed {
        entity_type: decode(entity_type)?,
        entity_id: decode(entity_id)?,
        tag: decode(tag)?,
        headers,
        body: &data[head_len..],
    })
}

/// Reads one call request; checks what an accepted call and a refusal must look like.
pub fn check(data: &[u8]) {
    let Some(request) = parse(data) else {
        return;
    };
    // The route's type is looked up in the registered types before the checks.
    let Ok(entity_type) = EntityType::new(&request.entity_type) else {
        return;
    };
    let result = read_call(
        &entity_type,
        &request.entity_id,
        &request.tag,
        &request.headers,
        Bytes::copy_from_slice(request.body),
        MAX_BODY,
        SHARDS,
    );
    let call = match result {
        Ok(call) => call,
        Err(error) => {
            assert!(
                matches!(
                    error.status,
                    StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE
                ),
                "unexpected refusal {error:?}"
            );
            assert!(!error.message.is_empty());
            return;
        }
    };
    let headers = &request.headers;
    // The deadline: present exactly when the header is, within bounds.
    match (call.timeout, headers.get(TIMEOUT_HEADER)) {
        (None, None) => {}
        (Some(timeout), Some(_)) => {
            let ms = timeout.as_millis();
            assert!((1..=u128::from(MAX_TIMEOUT_MS)).contains(&ms), "{ms} ms");
        }
        (timeout, header) => panic!("timeout {timeout:?} from header {header:?}"),
    }
    // The body: JSON, within the limit, as sent (a blank one becomes `{}`).
    assert!(
        request.body.len() <= MAX_BODY,
        "a body over the limit was read"
    );
    if request.body.iter().all(u8::is_ascii_whitespace) {
        assert_eq!(&call.payload[..], b"{}");
    } else {
        assert_eq!(&call.payload[..], request.body);
        // JSON as serde_json reads it into a value; a number too large for a float is still
        // JSON (RFC 8259 sets no limit), so that refusal alone is accepted.
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(&call.payload) {
            assert!(
                e.to_string().starts_with("number out of range"),
                "the payload passed on is not JSON: {e}"
            );
        }
    }
    if let Some(declared) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        assert!(
            declared <= MAX_BODY as u64,
            "a declared {declared} bytes was read"
        );
    }
    // The idempotency key: 1 to 255 characters of header text.
    match &call.idempotency_key {
        Some(key) => {
            assert!((1..=255).contains(&key.len()), "key of {} bytes", key.len());
            assert!(
                key.bytes()
                    .all(|b| b == b'\t' || (b' '..=b'~').contains(&b)),
                "key {key:?}"
            );
        }
        None => assert!(headers.get(IDEMPOTENCY_KEY_HEADER).is_none()),
    }
    if let Some(id) = &call.request_id {
        assert!((1..=256).contains(&id.len()));
    }
    // The entity: the path's id and tag as given, on a shard of the cluster.
    assert_eq!(call.address.entity_id.as_str(), request.entity_id);
    assert_eq!(call.tag.as_str(), request.tag);
    assert_eq!(call.address.entity_type, entity_type);
    assert!((1..=SHARDS.get()).contains(&call.address.shard.id()));
}
