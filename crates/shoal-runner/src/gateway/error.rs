//! Gateway errors: an HTTP status, a stable snake_case code and a message, sent as
//! `{"code": "...", "message": "..."}`.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use shoal_sharding::{CallError, CallErrorKind};

/// Seconds a client should wait before retrying a 429 or 503.
pub const RETRY_AFTER_SECS: u32 = 1;

/// An error answer of the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable snake_case code (the entity runtime's error codes plus the gateway's own).
    pub code: &'static str,
    /// What happened, for people.
    pub message: String,
    /// Sent as `Retry-After` (seconds) when set.
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// An error without `Retry-After`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error, asking the client to retry after [`RETRY_AFTER_SECS`].
    pub fn retry_later(mut self) -> Self {
        self.retry_after = Some(RETRY_AFTER_SECS);
        self
    }

    /// 400 with code `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 503 `shutting_down`, retry later.
    pub fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "this runner is shutting down; retry on another runner",
        )
        .retry_later()
    }

    /// The answer for a failed entity call.
    pub fn from_call(error: &CallError) -> Self {
        let code = error.code().as_str();
        let message = error.to_string();
        let status = match error.kind() {
            CallErrorKind::InvalidEntityId { .. }
            | CallErrorKind::UnknownTag { .. }
            | CallErrorKind::MalformedMessage => StatusCode::BAD_REQUEST,
            CallErrorKind::UnknownEntityType => StatusCode::NOT_FOUND,
            CallErrorKind::MessageTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            CallErrorKind::AlreadyProcessing { .. } => StatusCode::CONFLICT,
            CallErrorKind::MailboxFull => {
                return Self::new(StatusCode::TOO_MANY_REQUESTS, code, message).retry_later();
            }
            CallErrorKind::EntityNotAssignedToRunner { .. }
            | CallErrorKind::RunnerUnavailable { .. }
            | CallErrorKind::ShuttingDown
            | CallErrorKind::Interrupted
            | CallErrorKind::Persistence
            | CallErrorKind::NoRequestId => {
                return Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message).retry_later();
            }
            // Storage may or may not have stored the request: not "503, safe to retry".
            CallErrorKind::Timeout { .. } | CallErrorKind::OutcomeUnknown => {
                StatusCode::GATEWAY_TIMEOUT
            }
            CallErrorKind::Unauthenticated => StatusCode::BAD_GATEWAY,
            CallErrorKind::Handler | CallErrorKind::Defect => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_GATEWAY,
        };
        Self::new(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code, "message": self.message }).to_string();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
