//! `POST /v1/entities/{type}/{id}/{tag}`: one entity call.

use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use shoal_protocol::{ErrorCode, Headers};
use shoal_sharding::CallOptions;
use subtle::ConstantTimeEq;
use tokio::time::Instant;

use super::error::ApiError;
use super::{
    GatewayState, IDEMPOTENCY_KEY_HEADER, MAX_TIMEOUT_MS, REQUEST_ID_HEADER, TIMEOUT_HEADER,
};

/// The metrics label for requests that name no routed type.
const UNROUTED: &str = "_unrouted";
/// The error code of a body that did not arrive within `gateway_body_timeout`.
const REQUEST_TIMEOUT_CODE: &str = "request_timeout";

/// Counts a request in flight for as long as it lives.
struct InFlight;

impl InFlight {
    fn start() -> Self {
        metrics::gauge!("shoal_gateway_requests_in_flight").increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("shoal_gateway_requests_in_flight").decrement(1.0);
    }
}

pub(super) async fn call(
    State(state): State<GatewayState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let _in_flight = InFlight::start();
    let started = Instant::now();
    // The head has been read: the body's deadline runs from now.
    let body_deadline = started + state.0.body_timeout;
    let request_id = request_id(&headers);
    let (label, result) = state
        .call(path, &headers, request_id.as_ref(), body, body_deadline)
        .await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code,
    };
    metrics::counter!("shoal_gateway_requests_total", "type" => label.clone(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!("shoal_gateway_request_duration_seconds", "type" => label, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
    let mut response = match result {
        Ok(reply) => {
            let mut response = (StatusCode::OK, reply).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(error) => {
            if error.status.is_server_error()
                && error.status != StatusCode::SERVICE_UNAVAILABLE
                && error.status != StatusCode::GATEWAY_TIMEOUT
            {
                tracing::warn!(code = error.code, message = %error.message, "entity call failed");
            } else {
                tracing::debug!(code = error.code, message = %error.message, "entity call refused");
            }
            let status = error.status;
            let mut response = error.into_response();
            if status == StatusCode::UNAUTHORIZED {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            if status == StatusCode::REQUEST_TIMEOUT {
                // The rest of the body may still come: this connection cannot carry another
                // request.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    };
    if let Some(id) = request_id {
        response.headers_mut().insert(REQUEST_ID_HEADER, id);
    }
    response
}

impl GatewayState {
    /// Runs the call; returns the metrics label of the type and the reply or error.
    async fn call(
        &self,
        path: Result<Path<(String, String, String)>, PathRejection>,
        headers: &HeaderMap,
        request_id: Option<&HeaderValue>,
        body: Body,
        body_deadline: Instant,
    ) -> (String, Result<Bytes, ApiError>) {
        let shared = &self.0;
        if let Err(e) = self.authorize(headers) {
            return (UNROUTED.to_owned(), Err(e));
        }
        let Path((entity_type, entity_id, tag)) = match path {
            Ok(path) => path,
            Err(rejection) => {
                return (
                    UNROUTED.to_owned(),
                    Err(ApiError::bad_request(rejection.body_text())),
                );
            }
        };
        let Some(route) = shared.routes.get(&entity_type) else {
            let mut known: Vec<&str> = shared.routes.keys().map(String::as_str).collect();
            known.sort_unstable();
            return (
                UNROUTED.to_owned(),
                Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    ErrorCode::UnknownEntityType.as_str(),
                    format!(
                        "entity type {entity_type:?} is not served by this cluster (types: {})",
                        known.join(", ")
                    ),
                )),
            );
        };
        let label = route.label.clone();
        if shared.sharding.is_shutting_down() {
            return (label, Err(ApiError::shutting_down()));
        }
        let result = async {
            let timeout = call_timeout(headers)?;
            let payload =
                tokio::time::timeout_at(body_deadline, read_body(body, headers, shared.max_body))
                    .await
                    .map_err(|_| body_timed_out(shared.body_timeout))??;
            let mut entity_headers = Headers::new();
            if let Some(id) = request_id.and_then(|v| v.to_str().ok()) {
                entity_headers.push(REQUEST_ID_HEADER, id);
            }
            let mut options = CallOptions::default()
                .with_timeout(timeout)
                .with_headers(entity_headers);
            if let Some(key) = idempotency_key(headers)? {
                // The key makes the call persisted: retries with the same key run the handler
                // once and get the first reply.
                options = options.with_persisted(true).with_primary_key(key);
            }
            route
                .client
                .call(&entity_id, &tag, payload, options)
                .await
                .map_err(|e| ApiError::from_call(&e))
        }
        .await;
        (label, result)
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(expected) = &self.0.expected_authorization else {
            return Ok(());
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if given.len() == expected.len() && bool::from(given.ct_eq(expected)) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthenticated.as_str(),
                "missing or wrong gateway token (Authorization: Bearer <token>)",
            ))
        }
    }
}

/// The `x-request-id` header, when it is 1 to 256 bytes (echoed back and passed to the entity).
pub(super) fn request_id(headers: &HeaderMap) -> Option<HeaderValue> {
    headers
        .get(REQUEST_ID_HEADER)
        .filter(|v| !v.is_empty() && v.len() <= 256)
        .cloned()
}

/// The `x-shoal-timeout-ms` header: a whole number of milliseconds from 1 to [`MAX_TIMEOUT_MS`].
pub(super) fn call_timeout(headers: &HeaderMap) -> Result<Option<Duration>, ApiError> {
    let Some(value) = headers.get(TIMEOUT_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| (1..=MAX_TIMEOUT_MS).contains(ms))
        .map(|ms| Some(Duration::from_millis(ms)))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{TIMEOUT_HEADER} must be a whole number of milliseconds from 1 to {MAX_TIMEOUT_MS}"
            ))
        })
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::MessageTooLarge.as_str(),
        format!("the request body is larger than {max} bytes (gateway_max_body)"),
    )
}

fn body_timed_out(timeout: Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        REQUEST_TIMEOUT_CODE,
        format!("the request body did not arrive within {timeout:?} (gateway_body_timeout)"),
    )
}

/// Reads the body within `max` bytes and checks that it is JSON (an empty body becomes `{}`).
pub(super) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    max: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large(max));
    }
    let bytes = match Limited::new(body, max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large(max)),
        Err(e) => {
            return Err(ApiError::bad_request(format!(
                "could not read the body: {e}"
            )));
        }
    };
    check_json(bytes)
}

/// A body that is JSON, as read; an empty (or blank) body becomes `{}`.
fn check_json(bytes: Bytes) -> Result<Bytes, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Bytes::from_static(b"{}"));
    }
    let not_json = |e: &dyn std::fmt::Display| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::MalformedMessage.as_str(),
            format!("the body is not JSON: {e}"),
        )
    };
    // JSON text is UTF-8; serde_json skips the strings it ignores without checking them, so the
    // text is checked first.
    let text = std::str::from_utf8(&bytes).map_err(|e| not_json(&e))?;
    serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| not_json(&e))?;
    Ok(bytes)
}

/// The `Idempotency-Key` header: at most 255 visible ASCII characters.
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY_HEADER) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= 255 => Ok(Some(key.to_owned())),
        _ => Err(ApiError::bad_request(format!(
            "header {IDEMPOTENCY_KEY_HEADER} must be 1 to 255 visible ASCII characters"
        ))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use super::*;

    #[test]
    fn bodies_must_be_json_text() {
        assert_eq!(
            check_json(Bytes::from_static(b" \n")).ok(),
            Some(Bytes::from_static(b"{}"))
        );
        assert!(check_json(Bytes::from_static(b"{\"by\": [1, \"\xc3\xbc\"]}")).is_ok());
        // Found by the `gateway` fuzz target: invalid UTF-8 inside a string passed as JSON.
        let error = check_json(Bytes::from_static(b"{\"by5555555\xff\xff\xff/5555\":1}"))
            .expect_err("not UTF-8, so not JSON");
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert_eq!(error.code, ErrorCode::MalformedMessage.as_str());
        assert!(check_json(Bytes::from_static(b"{\"a\":1")).is_err());
    }
}
