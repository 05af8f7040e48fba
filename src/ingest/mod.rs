//! Where logs come in: `POST /api/logs` ([`http`]), OTLP/HTTP ([`otlp`]) and the seed's
//! Redis channel ([`seed_channel`]). Every source decodes and validates its entries into
//! [`crate::log_entry::LogRecord`]s (with the validators in [`crate::log_entry`]) and then
//! goes through the one [`accept::accept`]: permit, publish (whole, at most once per key),
//! counters.

pub mod accept;
pub mod decode;
pub mod http;
pub mod otlp;
pub mod seed_channel;

use axum::Router;
use axum::routing::post;

use crate::app::HttpState;

/// The ingest routes.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/api/logs", post(http::post_logs))
        .route("/api/devices/{id}/status", post(http::post_device_status))
        .route("/v1/logs", post(otlp::post_logs))
}

/// A request's `Content-Type` as given, and its media type alone, lower-cased
/// (`application/json; charset=utf-8` → `application/json`).
pub(crate) fn media_type(headers: &axum::http::HeaderMap) -> (&str, String) {
    let given = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = given
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    (given, essence)
}
