//! `POST /api/logs` and `POST /api/devices/:id/status`, authenticated by `X-API-Key`.
//!
//! A request is all or nothing: every entry is validated before any is published, a bad one
//! answers 400 naming its field (`[3].level`), and a full router queue answers 503 with
//! nothing accepted, counted in `ingest_rejected`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::api::error::{AppError, secrets_equal};
use crate::app::HttpState;
use crate::bus::PublishError;
use crate::log_entry::{FieldError, LogRecord, MAX_DEVICE_ID_LEN};

/// Most entries in one request.
pub const MAX_ENTRIES_PER_REQUEST: usize = 10_000;
/// Longest device status text.
pub const MAX_STATUS_LEN: usize = 64;

fn require_api_key(app: &HttpState, headers: &HeaderMap) -> Result<(), AppError> {
    match headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        Some(k) if secrets_equal(k, &app.keys.api_key) => Ok(()),
        Some(_) => Err(AppError::unauthorized("invalid API key")),
        None => Err(AppError::unauthorized("X-API-Key header required")),
    }
}

fn parse_body(body: &[u8]) -> Result<Value, AppError> {
    serde_json::from_slice(body).map_err(|e| {
        AppError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("body is not JSON: {e}"),
        )
    })
}

/// Validate a body holding one entry or an array of entries.
pub fn parse_entries(value: Value) -> Result<Vec<Arc<LogRecord>>, FieldError> {
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(FieldError::new("(body)", "the array holds no log entries"));
            }
            if items.len() > MAX_ENTRIES_PER_REQUEST {
                return Err(FieldError::new(
                    "(body)",
                    format!(
                        "{} entries; at most {MAX_ENTRIES_PER_REQUEST} per request",
                        items.len()
                    ),
                ));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    LogRecord::from_value(item)
                        .map(Arc::new)
                        .map_err(|e| e.within(&format!("[{i}]")))
                })
                .collect()
        }
        obj @ Value::Object(_) => Ok(vec![Arc::new(LogRecord::from_value(obj)?)]),
        _ => Err(FieldError::new(
            "(body)",
            "must be a log object or an array of them",
        )),
    }
}

fn publish_error(app: &HttpState, e: PublishError, entries: usize) -> AppError {
    app.metrics
        .ingest_rejected
        .fetch_add(entries as u64, Ordering::Relaxed);
    let code = match e {
        PublishError::Overloaded => "overloaded",
        PublishError::Closed => "shutting_down",
        PublishError::Unavailable(_) => "bus_unavailable",
    };
    AppError::new(StatusCode::SERVICE_UNAVAILABLE, code, e.to_string())
}

pub async fn post_logs(
    State(app): State<HttpState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    require_api_key(&app, &headers)?;
    let body = body?;
    let records = parse_entries(parse_body(&body)?).map_err(AppError::bad_field)?;
    let n = records.len();
    let permit = app.ingest_permit();
    match permit {
        Some(_) => app.bus.publish_logs(records).await,
        None => Err(PublishError::Closed),
    }
    .map_err(|e| publish_error(&app, e, n))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "success": true, "accepted": n })),
    ))
}

/// Whether a device id and status are within bounds (shared with the Redis channel).
pub fn valid_status(device_id: &str, status: &str) -> bool {
    (1..=MAX_DEVICE_ID_LEN).contains(&device_id.len())
        && (1..=MAX_STATUS_LEN).contains(&status.len())
}

pub async fn post_device_status(
    State(app): State<HttpState>,
    headers: HeaderMap,
    Path(device_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    require_api_key(&app, &headers)?;
    let body = body?;
    if !valid_status(&device_id, "x") {
        return Err(AppError::bad_field(FieldError::new(
            "deviceId",
            format!("must be 1 to {MAX_DEVICE_ID_LEN} bytes"),
        )));
    }
    let status = match parse_body(&body)?.get("status") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_STATUS_LEN => s.clone(),
        None | Some(Value::Null) => {
            return Err(AppError::bad_field(FieldError::new(
                "status",
                "is required",
            )));
        }
        Some(_) => {
            return Err(AppError::bad_field(FieldError::new(
                "status",
                format!("must be a string of 1 to {MAX_STATUS_LEN} bytes"),
            )));
        }
    };
    let permit = app.ingest_permit();
    match permit {
        Some(_) => {
            app.bus
                .publish_status(device_id.clone(), status.clone())
                .await
        }
        None => Err(PublishError::Closed),
    }
    .map_err(|e| publish_error(&app, e, 0))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "success": true, "deviceId": device_id, "status": status })),
    ))
}
