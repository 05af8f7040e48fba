//! Who is calling: extractors that authenticate a request and reject into [`AppError`], so a
//! handler states what it needs in its arguments.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;

use super::error::{AppError, secrets_equal};
use crate::app::HttpState;
use crate::protocol::Code;

/// The caller holds the ingest key (`X-API-Key`).
pub struct IngestKey;

/// The caller is an administrator: `X-API-Key: <admin key>`, or `Authorization: Bearer`
/// with a token whose `role` is `admin`.
pub struct Admin;

fn header<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

impl FromRequestParts<HttpState> for IngestKey {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, app: &HttpState) -> Result<Self, AppError> {
        match header(parts, "x-api-key") {
            Some(k) if secrets_equal(k, &app.keys.api_key) => Ok(IngestKey),
            Some(_) => Err(AppError::unauthorized("invalid API key")),
            None => Err(AppError::unauthorized("X-API-Key header required")),
        }
    }
}

impl FromRequestParts<HttpState> for Admin {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, app: &HttpState) -> Result<Self, AppError> {
        if let Some(key) = header(parts, "x-api-key") {
            return if secrets_equal(key, &app.keys.admin_key) {
                Ok(Admin)
            } else {
                Err(AppError::unauthorized("invalid admin key"))
            };
        }
        let bearer = header(parts, "authorization").and_then(|v| v.strip_prefix("Bearer "));
        match bearer.map(|t| app.keys.verify(t)) {
            Some(Ok(claims)) if claims.is_admin() => Ok(Admin),
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
