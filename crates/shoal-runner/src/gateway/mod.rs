//! The HTTP gateway: calls entities with JSON over HTTP, from any runner, and serves the health,
//! readiness and metrics endpoints.
//!
//! | Route | Answer |
//! |---|---|
//! | `POST /v1/entities/{type}/{id}/{tag}` | the entity's JSON reply (200), or an error |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when ready, else 503, with a JSON report ([`crate::health`]) |
//! | `GET /metrics` | Prometheus text, when metrics are served on the gateway |
//!
//! The request body is the JSON-encoded message (an empty body is sent as `{}`); any runner
//! accepts any call and routes it to the runner that holds the entity's shard. Errors are JSON
//! objects `{"code": "...", "message": "..."}` with these statuses:
//!
//! | Status | Codes | When |
//! |---|---|---|
//! | 400 | `bad_request`, `malformed_message`, `unknown_tag` | body not JSON or not the message, unknown tag, invalid id or header |
//! | 401 | `unauthenticated` | a gateway token is configured and the `Authorization: Bearer` header is missing or wrong |
//! | 404 | `unknown_entity_type`, `not_found` | the type is not one this cluster runs; no such route |
//! | 408 | `request_timeout` | the body did not arrive within `gateway_body_timeout` of the head; the connection is closed |
//! | 413 | `message_too_large` | body over `gateway_max_body` (or the transport's limit) |
//! | 429 | `mailbox_full` | the entity's mailbox or the runner's entity cap is full (`Retry-After`) |
//! | 500 | `handler_error`, `defect` | the handler failed |
//! | 502 | `unauthenticated`, `unknown` | the owning runner refused this runner (token mismatch) |
//! | 503 | `entity_not_assigned`, `runner_unavailable`, `shutting_down`, `interrupted`, `persistence` | no owner yet, owner unreachable, shutting down, storage refused the message before storing it (`Retry-After`) |
//! | 504 | `deadline_exceeded`, `outcome_unknown` | no reply within the deadline (`x-shoal-timeout-ms`, default `default_call_timeout`); storage did not answer whether it stored a persisted message |
//!
//! `runner_unavailable`, `interrupted`, `deadline_exceeded` and `outcome_unknown` mean the outcome
//! is unknown: the message may have been handled (or stored, and will be). `503 persistence` means
//! it was not stored. Retry persisted messages with the same `Idempotency-Key`.
//!
//! **Limits.** Served by [`serve`], the gateway closes a connection whose request head does not
//! arrive within [`ConnectionLimits::header_timeout`] (also the idle keep-alive timeout), answers
//! 408 when a call's body does not arrive within [`GatewayOptions::body_timeout`], and holds at
//! most [`ConnectionLimits::max_connections`] connections, past which it stops accepting until one
//! closes (settings `gateway_header_timeout`, `gateway_body_timeout`, `gateway_max_connections`;
//! docs/operations.md, "Gateway limits").
//!
//! **Unknown types.** A runner cannot ask another runner which types it hosts without a round trip
//! per call, so the gateway routes the types registered in its own process ([`EntityRoutes`]) and
//! answers 404 `unknown_entity_type` for the rest. Every runner of a cluster runs the same binary
//! and configuration, so that is the cluster's list.

mod call;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod ops;
mod server;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use shoal_sharding::{DynamicClient, Sharding};

pub use error::{ApiError, RETRY_AFTER_SECS};
pub use server::{
    AUTO_MAX_CONNECTIONS_CEILING, ConnectionLimits, HttpServer, MAX_LIMIT_TIMEOUT,
    auto_max_connections, max_connections_for_open_files, serve,
};

use crate::entities::EntityRoutes;
use crate::health::Readiness;

/// The request header giving a call's deadline in milliseconds.
pub const TIMEOUT_HEADER: &str = "x-shoal-timeout-ms";
/// The request header echoed back, and passed to the entity, to correlate a call.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// A key that makes a call persisted and deduplicated: a retry with the same key (for the same
/// entity and tag) runs the handler once and answers the first reply.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// The largest accepted `x-shoal-timeout-ms` (one hour).
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Largest request body, in bytes (default 1 MiB).
    pub max_body: usize,
    /// Bearer token required on `/v1` routes (default: none).
    pub token: Option<String>,
    /// Serve `/metrics` from this handle (default: not served).
    pub metrics: Option<PrometheusHandle>,
    /// A call's whole request body must arrive within this, counted from when its head was read;
    /// otherwise the call is answered 408 `request_timeout` and the connection closed (default
    /// 30 s; at most [`MAX_LIMIT_TIMEOUT`]).
    pub body_timeout: Duration,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            max_body: 1 << 20,
            token: None,
            metrics: None,
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// A routed entity type.
#[derive(Debug)]
struct Route {
    client: DynamicClient,
    /// The type's name, as a metrics label.
    label: String,
}

/// What the handlers share.
#[derive(Debug)]
struct Shared {
    sharding: Sharding,
    routes: HashMap<String, Route>,
    /// `Bearer <token>` as bytes, compared in constant time.
    expected_authorization: Option<Vec<u8>>,
    max_body: usize,
    body_timeout: Duration,
    readiness: Arc<Readiness>,
    metrics: Option<PrometheusHandle>,
}

#[derive(Debug, Clone)]
struct GatewayState(Arc<Shared>);

/// The gateway's routes for `sharding`, calling the entity types of `routes`.
pub fn router(
    sharding: &Sharding,
    routes: &EntityRoutes,
    readiness: Arc<Readiness>,
    options: GatewayOptions,
) -> Router {
    let routes = routes
        .iter()
        .map(|(entity_type, group)| {
            (
                entity_type.to_string(),
                Route {
                    client: sharding.dynamic_client(entity_type.clone(), group.clone()),
                    label: entity_type.to_string(),
                },
            )
        })
        .collect();
    let serve_metrics = options.metrics.is_some();
    let state = GatewayState(Arc::new(Shared {
        sharding: sharding.clone(),
        routes,
        expected_authorization: options
            .token
            .map(|token| format!("Bearer {token}").into_bytes()),
        max_body: options.max_body,
        body_timeout: options.body_timeout.min(MAX_LIMIT_TIMEOUT),
        readiness,
        metrics: options.metrics,
    }));
    let mut router = Router::new()
        .route(
            "/v1/entities/{entity_type}/{entity_id}/{tag}",
            post(call::call),
        )
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz));
    if serve_metrics {
        router = router.route("/metrics", get(ops::metrics));
    }
    router
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .with_state(state)
}

/// A router serving only `GET /metrics` (for a separate metrics listener).
pub fn metrics_router(handle: PrometheusHandle) -> Router {
    Router::new()
        .route("/metrics", get(ops::render_metrics))
        .fallback(ops::not_found)
        .with_state(handle)
}
