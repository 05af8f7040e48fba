//! Who is calling: extractors that authenticate a request and reject into [`AppError`], so a
//! handler states what it needs in its arguments.

use std::sync::Arc;

use crate::edge::Peer;
use axum::extract::ConnectInfo;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;

use super::error::{AppError, secrets_equal};
use crate::app::HttpState;
use crate::auth::Scope;
use crate::auth::ingest_keys::digest;
use crate::protocol::Code;

/// The caller holds an ingest key (`X-API-Key`): the `api_key` (any device) or one of the
/// scoped `ingest_keys`.
pub struct Ingester {
    /// `api_key`, or the scoped key's name (for the audit trail).
    pub name: String,
    /// The devices this key may write; `None` = any.
    pub scope: Option<Arc<Scope>>,
}

/// The caller is an administrator: `X-API-Key: <admin key>`, `Authorization: Bearer <admin
/// key>`, or `Authorization: Bearer` with a token whose `role` is `admin`.
pub struct Admin {
    /// `admin_key`, or `token:<sub>` (for the audit trail).
    pub who: String,
}

fn header<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The connection proved who it is: it no longer counts against its IP's unauthenticated
/// connections (see `edge`).
fn mark_authenticated(parts: &Parts) {
    if let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<Peer>>() {
        peer.conn.authenticate();
    }
}

impl FromRequestParts<HttpState> for Ingester {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, app: &HttpState) -> Result<Self, AppError> {
        let ingester = Ingester::check(parts, app)?;
        mark_authenticated(parts);
        Ok(ingester)
    }
}

impl Ingester {
    fn check(parts: &Parts, app: &HttpState) -> Result<Ingester, AppError> {
        // `X-API-Key`, or the same key as a bearer token (what OTLP exporters send).
        let key = header(parts, "x-api-key")
            .or_else(|| header(parts, "authorization").and_then(|v| v.strip_prefix("Bearer ")));
        let Some(key) = key else {
            return Err(AppError::unauthorized(
                "an ingest key is required (X-API-Key, or Authorization: Bearer)",
            ));
        };
        if secrets_equal(key, &app.keys.api_key) {
            return Ok(Ingester {
                name: "api_key".into(),
                scope: None,
            });
        }
        let presented = digest(key);
        let access = app.access();
        match access.ingest_keys.iter().find(|k| k.is(&presented)) {
            Some(k) => Ok(Ingester {
                name: k.name.clone(),
                scope: Some(k.scope.clone()),
            }),
            None => Err(AppError::unauthorized("invalid API key")),
        }
    }
}

/// A reader of `/metrics`: the `metrics_key` (as a bearer token or `X-API-Key`), or anyone
/// the admin API admits.
pub struct MetricsReader;

impl FromRequestParts<HttpState> for MetricsReader {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, app: &HttpState) -> Result<Self, AppError> {
        if let Some(key) = &app.config.auth.metrics_key {
            let presented = header(parts, "authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
                .or_else(|| header(parts, "x-api-key"));
            if presented.is_some_and(|p| secrets_equal(p, key)) {
                mark_authenticated(parts);
                return Ok(MetricsReader);
            }
        }
        Admin::from_request_parts(parts, app).await?;
        Ok(MetricsReader)
    }
}

impl FromRequestParts<HttpState> for Admin {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, app: &HttpState) -> Result<Self, AppError> {
        let admin = Admin::check(parts, app)?;
        mark_authenticated(parts);
        Ok(admin)
    }
}

impl Admin {
    fn check(parts: &Parts, app: &HttpState) -> Result<Admin, AppError> {
        if let Some(key) = header(parts, "x-api-key") {
            return if secrets_equal(key, &app.keys.admin_key) {
                Ok(Admin {
                    who: "admin_key".into(),
                })
            } else {
                Err(AppError::unauthorized("invalid admin key"))
            };
        }
        let bearer = header(parts, "authorization").and_then(|v| v.strip_prefix("Bearer "));
        // The admin key as a bearer token (what Prometheus' `authorization` and most HTTP
        // tools send), as well as an admin JWT.
        if bearer.is_some_and(|b| secrets_equal(b, &app.keys.admin_key)) {
            return Ok(Admin {
                who: "admin_key".into(),
            });
        }
        match bearer.map(|t| app.keys.verify(t)) {
            Some(Ok(claims)) if claims.is_admin() => Ok(Admin {
                who: format!("token:{}", claims.sub),
            }),
            Some(Ok(_)) => Err(AppError::new(
                StatusCode::FORBIDDEN,
                Code::Forbidden,
                "token lacks role admin",
            )),
            Some(Err(_)) => Err(AppError::unauthorized("invalid token")),
            None => Err(AppError::unauthorized(
                "admin key (X-API-Key) or admin bearer token required",
            )),
        }
    }
}
