//! The live-tail page at `/`: plain HTML, CSS and JavaScript from `web/`, embedded in the
//! binary at build time (no CDN, nothing fetched at run time, no build step), and the two
//! small endpoints it needs besides Socket.IO.
//!
//! The page talks to the server like any client: a token (pasted, kept in the tab's
//! `sessionStorage`) in the Socket.IO handshake. In development mode a page opened on the
//! loopback interface can ask for the development token instead (`GET /api/dev/token`):
//! only when the server made its own secret, only from a loopback peer and for a loopback
//! `Host` (so a page of another site cannot get one through DNS rebinding).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::AppError;
use crate::app::HttpState;
use crate::protocol::Code;

const INDEX: &str = include_str!("../../web/index.html");
const SCRIPT: &str = include_str!("../../web/app.js");
const STYLE: &str = include_str!("../../web/style.css");

/// Only our own scripts and styles, and connections back to this server.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

pub async fn index() -> Response {
    asset(INDEX, "text/html; charset=utf-8")
}

pub async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

pub async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}

/// Whether `host` (a `Host` header) names the loopback interface.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// Where the page gets the development token.
pub const DEV_TOKEN_PATH: &str = "/api/dev/token";

/// `GET /api/dev/token`: a development token, for the server's own page on loopback in
/// development mode; never across origins (no CORS header on this route, and a request from
/// another origin's page is refused).
pub async fn dev_token(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ConnectInfo(tcp): ConnectInfo<crate::edge::Peer>,
    State(app): State<HttpState>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    // Through a proxy the peer is loopback for everyone: a forwarded request gets nothing,
    // unless the proxy is trusted (then `peer` is the client it names).
    let proxied = !app.edge.trusted.contains(tcp.addr.ip())
        && ["forwarded", "x-forwarded-for", "x-real-ip", "via"]
            .iter()
            .any(|h| headers.contains_key(*h));
    if !crate::edge::origin::same_origin(&headers) {
        tracing::info!(target: "audit", %peer, origin = ?headers.get(header::ORIGIN), "development token refused to a page of another origin");
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            Code::Forbidden,
            "the development token is only for the page this server serves",
        ));
    }
    if !app.dev_tokens || proxied || !peer.ip().to_canonical().is_loopback() || !loopback_host(host)
    {
        return Err(AppError::new(
            StatusCode::NOT_FOUND,
            Code::NotFound,
            "no development token here (development mode, on loopback only)",
        ));
    }
    let token = app
        .keys
        .mint("dev", Duration::from_secs(12 * 3600), &Default::default())
        .map_err(|e| {
            AppError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                Code::NotFound,
                e.to_string(),
            )
        })?;
    Ok(Json(json!({ "success": true, "data": { "token": token } })))
}

/// `GET /api/filters`: the loaded filters and transforms, for any client token (the page's
/// filter picker).
pub async fn filters(
    State(app): State<HttpState>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    app.keys
        .verify(token)
        .map_err(|e| AppError::unauthorized(&format!("a client token is required: {e}")))?;
    let catalog = app.plugins.lock().unwrap_or_else(|p| p.into_inner());
    let mut filters = vec!["default".to_owned()];
    let mut transforms = Vec::new();
    for p in &catalog.loaded {
        let list = if p.kind() == "transform" {
            &mut transforms
        } else {
            &mut filters
        };
        if !list.contains(&p.name) {
            list.push(p.name.clone());
        }
    }
    Ok(Json(
        json!({ "success": true, "data": { "filters": filters, "transforms": transforms } }),
    ))
}

#[cfg(test)]
mod tests {
    use super::loopback_host;

    #[test]
    fn only_loopback_hosts_count() {
        for h in [
            "localhost:3000",
            "127.0.0.1:3000",
            "[::1]:3000",
            "localhost",
            "127.0.0.5",
        ] {
            assert!(loopback_host(h), "{h}");
        }
        for h in [
            "evil.example:3000",
            "10.0.0.1:3000",
            "localhost.evil.example",
            "",
        ] {
            assert!(!loopback_host(h), "{h}");
        }
    }
}
