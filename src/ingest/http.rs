//! `POST /api/logs` and `POST /api/devices/:id/status`, authenticated by `X-API-Key`.
//!
//! A request is all or nothing: every entry is validated before any is published, a bad one
//! answers 400 naming its field (`[3].level`), and a full router queue answers 503 with
//! nothing accepted, counted in `ingest_rejected`. An `Idempotency-Key` is published at most
//! once (see `publish_key`): a repeat answers 202 with `duplicate: true`.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::accept::{Accepted, Source, accept};
use crate::api::auth::Ingester;
use crate::api::error::AppError;
use crate::app::HttpState;
use crate::bus::PublishKey;
use crate::log_entry::{FieldError, device_status, parse_entries, random_id};
use crate::protocol::Code;
use crate::publish_key::{IDEMPOTENCY_TTL, MAX_KEY_LEN};

/// A scoped key wrote a device outside its patterns: the whole request is refused (403),
/// naming the entry, and the refusal goes to the audit trail.
fn outside_scope(who: &Ingester, peer: SocketAddr, field: String, device: &str) -> AppError {
    tracing::info!(target: "audit", key = %who.name, %peer, %field, device, "ingest refused: device outside the key's scope");
    let e = FieldError::new(
        field,
        format!(
            "{device:?} is outside the devices the key `{}` may write",
            who.name
        ),
    );
    AppError {
        status: StatusCode::FORBIDDEN,
        error: crate::protocol::ClientError::new(Code::Forbidden, e.to_string()).field(e.field),
    }
}

/// Bodies are JSON, said so: `Content-Type: application/json` (or `…+json`).
fn require_json(headers: &HeaderMap) -> Result<(), AppError> {
    let (content_type, essence) = super::media_type(headers);
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(AppError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::BadBody,
            format!(
                "the body must be JSON with Content-Type: application/json (got {content_type:?})"
            ),
        ))
    }
}

fn parse_body(
    app: &HttpState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, AppError> {
    require_json(headers)?;
    let body = super::decode::request_body(app, headers, body)?;
    serde_json::from_slice(&body).map_err(|e| {
        AppError::new(
            StatusCode::BAD_REQUEST,
            Code::InvalidJson,
            format!("body is not JSON: {e}"),
        )
    })
}

/// The request's `Idempotency-Key`, if any: up to 128 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, AppError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(k)
            if !k.is_empty()
                && k.len() <= MAX_KEY_LEN
                && k.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(k.to_owned()))
        }
        _ => Err(AppError::new(
            StatusCode::BAD_REQUEST,
            Code::InvalidField,
            format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
        )),
    }
}

pub async fn post_logs(
    who: Ingester,
    State(app): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let idempotency_key = idempotency_key(&headers)?;
    let body = parse_body(&app, &headers, body)?;
    let is_array = body.is_array();
    let records = parse_entries(body, random_id).map_err(AppError::bad_field)?;
    if let Some(scope) = &who.scope
        && let Some((i, r)) = records
            .iter()
            .enumerate()
            .find(|(_, r)| !scope.matches(&r.device_id))
    {
        let field = if is_array {
            format!("[{i}].deviceId")
        } else {
            "deviceId".into()
        };
        return Err(outside_scope(&who, peer, field, &r.device_id));
    }
    let key = idempotency_key.map(|key| PublishKey {
        owner: who.name.clone(),
        key,
        ttl: IDEMPOTENCY_TTL,
    });
    let answer = match accept(&app, Source::Http, records, key.as_ref()).await {
        Ok(Accepted::Published(n)) => json!({ "success": true, "accepted": n }),
        Ok(Accepted::Duplicate(n)) => json!({ "success": true, "accepted": n, "duplicate": true }),
        Err(e) => return Err(AppError::unavailable(e)),
    };
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

pub async fn post_device_status(
    who: Ingester,
    State(app): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(device_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    if let Some(scope) = &who.scope
        && !scope.matches(&device_id)
    {
        return Err(outside_scope(&who, peer, "deviceId".into(), &device_id));
    }
    let status = parse_body(&app, &headers, body)?
        .get_mut("status")
        .map(Value::take)
        .unwrap_or(Value::Null);
    let status = device_status(device_id, status).map_err(AppError::bad_field)?;
    let published = async {
        let _permit = app.ingest_permit()?;
        app.bus.publish_status(status.clone()).await
    };
    published.await.map_err(AppError::unavailable)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "success": true, "deviceId": status.device_id, "status": status.status })),
    ))
}
