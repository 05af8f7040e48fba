//! The admin REST API under `/api/ws` (the seed's routes), and the public health check.
//!
//! Admin calls need `X-API-Key: <admin key>` or `Authorization: Bearer <JWT with role admin>`.

use std::str::FromStr;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::socket::Sid;

use super::error::{AppError, secrets_equal};
use crate::app::HttpState;
use crate::cluster;

pub fn require_admin(app: &HttpState, headers: &HeaderMap) -> Result<(), AppError> {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return if secrets_equal(key, &app.keys.admin_key) {
            Ok(())
        } else {
            Err(AppError::unauthorized("invalid admin key"))
        };
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match bearer.map(|t| app.keys.verify(t)) {
        Some(Ok(claims)) if claims.is_admin() => Ok(()),
        Some(Ok(_)) => Err(AppError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "token lacks role admin",
        )),
        Some(Err(_)) => Err(AppError::unauthorized("invalid token")),
        None => Err(AppError::unauthorized(
            "admin key (X-API-Key) or admin bearer token required",
        )),
    }
}

pub async fn health(State(app): State<HttpState>) -> Json<Value> {
    let connections = app.connections.len();
    let max = app.connections.max_total();
    let (bus, bus_ok) = match app.bus.redis() {
        None => (json!({ "kind": "embedded" }), true),
        Some(r) => {
            let relaxed = std::sync::atomic::Ordering::Relaxed;
            let connected = r.connected();
            (
                json!({
                    "kind": "redis",
                    "state": if connected { "connected" } else { "degraded" },
                    "lastError": r.status.last_error(),
                    "reconnects": r.status.reconnects.load(relaxed),
                    "malformedMessages": r.status.malformed.load(relaxed),
                    "overflowDropped": r.status.overflow_dropped.load(relaxed),
                }),
                connected,
            )
        }
    };
    Json(json!({
        "success": true,
        "data": {
            "connections": connections,
            "maxConnections": max,
            "healthy": app.is_accepting() && bus_ok && (connections as f64) < max as f64 * 0.9,
            "instance": app.instance,
            "bus": bus,
        }
    }))
}

/// `?scope=local` restricts a cluster view to this instance.
#[derive(Deserialize, Default)]
pub struct Scope {
    scope: Option<String>,
}

impl Scope {
    fn cluster<'a>(
        &self,
        app: &'a HttpState,
    ) -> Option<&'a std::sync::Arc<crate::bus::redis::RedisBus>> {
        if self.scope.as_deref() == Some("local") {
            None
        } else {
            app.bus.redis()
        }
    }
}

fn unavailable(e: crate::bus::PublishError) -> AppError {
    AppError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "bus_unavailable",
        e.to_string(),
    )
}

pub async fn connections(
    State(app): State<HttpState>,
    headers: HeaderMap,
    Query(scope): Query<Scope>,
) -> Result<Json<Value>, AppError> {
    require_admin(&app, &headers)?;
    let list = match scope.cluster(&app) {
        Some(bus) => cluster::describe_all(bus).await.map_err(unavailable)?.0,
        None => cluster::local_connections(&app, &app.instance),
    };
    Ok(Json(json!({ "success": true, "data": list })))
}

pub async fn stats(
    State(app): State<HttpState>,
    headers: HeaderMap,
    Query(scope): Query<Scope>,
) -> Result<Json<Value>, AppError> {
    require_admin(&app, &headers)?;
    let data = match scope.cluster(&app) {
        Some(bus) => cluster::merge_stats(cluster::describe_all(bus).await.map_err(unavailable)?.1),
        None => cluster::local_stats(&app, &app.instance),
    };
    Ok(Json(json!({ "success": true, "data": data })))
}

#[derive(Deserialize)]
pub struct BroadcastBody {
    event: Option<Value>,
    #[serde(default)]
    data: Value,
}

/// Event names a broadcast may not use: Socket.IO's reserved names, and the `log:` stream
/// whose counts clients rely on.
fn broadcast_event_allowed(event: &str) -> bool {
    const RESERVED: [&str; 6] = [
        "connect",
        "connect_error",
        "disconnect",
        "disconnecting",
        "newListener",
        "removeListener",
    ];
    !event.is_empty()
        && event.len() <= 100
        && !RESERVED.contains(&event)
        && !event.starts_with("log:")
}

pub async fn broadcast(
    State(app): State<HttpState>,
    headers: HeaderMap,
    body: Result<Json<BroadcastBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, AppError> {
    require_admin(&app, &headers)?;
    let Json(body) =
        body.map_err(|e| AppError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text()))?;
    let event = match body.event {
        Some(Value::String(e)) if broadcast_event_allowed(&e) => e,
        _ => {
            return Err(AppError {
                status: StatusCode::BAD_REQUEST,
                code: "invalid_field",
                message: "event: must be a non-empty name of at most 100 characters, not reserved and not starting with `log:`".into(),
                field: Some("event".into()),
            });
        }
    };
    if let Some(bus) = app.bus.redis() {
        let op = json!({ "op": "broadcast", "event": event, "data": body.data });
        bus.publish(&bus.channels.admin, op.to_string())
            .await
            .map_err(unavailable)?;
        return Ok(Json(
            json!({ "success": true, "data": { "event": event, "scope": "cluster" } }),
        ));
    }
    let recipients = app.connections.len();
    app.io.emit(event.as_str(), &body.data).await.map_err(|e| {
        AppError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "broadcast_failed",
            e.to_string(),
        )
    })?;
    Ok(Json(json!({
        "success": true,
        "data": { "event": event, "recipients": recipients, "scope": "local" }
    })))
}

pub async fn disconnect(
    State(app): State<HttpState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    require_admin(&app, &headers)?;
    let sid = Sid::from_str(&id).map_err(|_| {
        AppError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("{id:?} is not a connection id"),
        )
    })?;
    let not_found = || {
        AppError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no connection {id}"),
        )
    };
    if let Some(socket) = app.io.get_socket(sid) {
        socket.disconnect().map_err(|e| {
            AppError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "disconnect_failed",
                e.to_string(),
            )
        })?;
        return Ok(Json(
            json!({ "success": true, "data": { "id": id, "instance": app.instance } }),
        ));
    }
    let bus = app.bus.redis().ok_or_else(not_found)?;
    let instance = cluster::disconnect_anywhere(bus, &id)
        .await
        .map_err(unavailable)?
        .ok_or_else(not_found)?;
    Ok(Json(
        json!({ "success": true, "data": { "id": id, "instance": instance } }),
    ))
}

pub async fn plugins(
    State(app): State<HttpState>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    require_admin(&app, &headers)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    app.control(crate::router::Control::Counts(tx))
        .map_err(|_| AppError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", "router busy"))?;
    let counts = rx
        .await
        .map_err(|_| AppError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", "router stopped"))?;
    let catalog = app.plugins.lock().unwrap_or_else(|p| p.into_inner());
    Ok(Json(
        json!({ "success": true, "data": crate::plugins::describe(&catalog, &counts) }),
    ))
}
