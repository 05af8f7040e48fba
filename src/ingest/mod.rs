//! Where logs come in. Every source validates entries into [`crate::log_entry::LogRecord`]s
//! (with the validators in [`crate::log_entry`], shared with the Redis bus) and publishes them
//! whole to the [`crate::bus::Bus`].

pub mod http;
pub mod otlp;

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
