//! Health, readiness, metrics and fallback handlers.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use metrics_exporter_prometheus::PrometheusHandle;

use super::GatewayState;
use super::error::ApiError;

fn json(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(super) async fn healthz() -> Response {
    json(StatusCode::OK, r#"{"status":"ok"}"#.to_owned())
}

pub(super) async fn readyz(State(state): State<GatewayState>) -> Response {
    let report = state.0.readiness.check().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::to_string(&report).unwrap_or_else(|_| "{}".to_owned());
    json(status, body)
}

pub(super) async fn metrics(State(state): State<GatewayState>) -> Response {
    match &state.0.metrics {
        Some(handle) => render(handle),
        None => not_found().await,
    }
}

pub(super) async fn render_metrics(State(handle): State<PrometheusHandle>) -> Response {
    render(&handle)
}

fn render(handle: &PrometheusHandle) -> Response {
    let mut response = (StatusCode::OK, handle.render()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

pub(super) async fn not_found() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; entity calls are POST /v1/entities/{type}/{id}/{tag}",
    )
    .into_response()
}

pub(super) async fn method_not_allowed() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "entity calls use POST; /healthz, /readyz and /metrics use GET",
    )
    .into_response()
}
