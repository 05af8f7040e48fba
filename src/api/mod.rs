//! The HTTP surface: ingest, device status, admin, health, plugins — one axum router on the
//! same port as Socket.IO.

pub mod admin;
pub mod error;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::app::HttpState;
use crate::ingest;

/// CORS for the REST API *and* Socket.IO's HTTP long-polling: applied outside both.
/// No origins configured = any origin.
pub fn cors(config: &crate::config::Config) -> CorsLayer {
    if config.cors_origins.is_empty() {
        CorsLayer::permissive()
    } else {
        let origins = config
            .cors_origins
            .iter()
            .filter_map(|o| o.parse().ok())
            .collect::<Vec<axum::http::HeaderValue>>();
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods(tower_http::cors::Any)
            .allow_headers(tower_http::cors::Any)
    }
}

pub fn router(app: HttpState) -> Router {
    Router::new()
        .route("/api/logs", post(ingest::http::post_logs))
        .route(
            "/api/devices/{id}/status",
            post(ingest::http::post_device_status),
        )
        .route("/api/ws/health", get(admin::health))
        .route("/api/ws/connections", get(admin::connections))
        .route("/api/ws/connections/{id}", delete(admin::disconnect))
        .route("/api/ws/stats", get(admin::stats))
        .route("/api/ws/broadcast", post(admin::broadcast))
        .route("/api/plugins", get(admin::plugins))
        .layer(DefaultBodyLimit::max(app.config.max_body_bytes))
        .with_state(app)
}
