//! The admin and health REST API (the seed's `/api/ws/*` routes and `/api/plugins`), the
//! request extractors every REST handler authenticates with, and the one REST error type.
//! Ingest routes live with their source in the `ingest` module; the server mounts both.

pub mod admin;
pub mod auth;
pub mod error;
pub mod prometheus;
pub mod web;

use axum::Router;
use axum::routing::{delete, get, post};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::app::HttpState;

/// CORS for the REST API *and* Socket.IO's HTTP long-polling: applied outside both.
/// No origins configured = any origin. The development token is never shared across
/// origins: only the page the server itself serves may read it (see `web::dev_token`).
pub fn cors(config: &crate::config::Config) -> CorsLayer {
    let allowed: Vec<axum::http::HeaderValue> = config
        .edge
        .cors_origins
        .iter()
        .filter_map(|o| o.parse().ok())
        .collect();
    let any = allowed.is_empty();
    let origin = AllowOrigin::predicate(move |origin, request| {
        request.uri.path() != web::DEV_TOKEN_PATH && (any || allowed.contains(origin))
    });
    let cors = CorsLayer::new()
        .allow_origin(origin)
        .allow_methods(tower_http::cors::Any)
        .allow_headers(tower_http::cors::Any);
    if any {
        cors.expose_headers(tower_http::cors::Any)
    } else {
        cors
    }
}

/// Answers, the page's assets and long-polling bodies compressed (gzip or brotli) for a
/// client that accepts it, past [`COMPRESS_ABOVE`] bytes (smaller ones gain nothing).
pub fn compression() -> tower_http::compression::CompressionLayer<
    tower_http::compression::predicate::And<
        tower_http::compression::predicate::DefaultPredicate,
        tower_http::compression::predicate::SizeAbove,
    >,
> {
    use tower_http::compression::predicate::{DefaultPredicate, Predicate, SizeAbove};
    tower_http::compression::CompressionLayer::new()
        .compress_when(DefaultPredicate::new().and(SizeAbove::new(COMPRESS_ABOVE)))
}

/// Bodies smaller than this are sent as they are.
pub const COMPRESS_ABOVE: u16 = 1024;

/// Health, admin and plugin routes.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/", get(web::index))
        .route("/app.js", get(web::script))
        .route("/style.css", get(web::style))
        .route(web::DEV_TOKEN_PATH, get(web::dev_token))
        .route("/api/filters", get(web::filters))
        .route("/metrics", get(admin::metrics))
        .route("/api/ws/health", get(admin::health))
        .route("/api/ws/connections", get(admin::connections))
        .route("/api/ws/connections/{id}", delete(admin::disconnect))
        .route("/api/ws/stats", get(admin::stats))
        .route("/api/ws/broadcast", post(admin::broadcast))
        .route("/api/plugins", get(admin::plugins))
        .route("/api/plugins/{name}/enable", post(admin::enable_plugin))
        .route("/api/plugins/{name}/disable", post(admin::disable_plugin))
}
