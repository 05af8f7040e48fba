//! The admin REST API under `/api/ws` (the seed's routes), `GET /api/plugins`, and the public
//! health check.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::socket::Sid;

use super::auth::{Admin, MetricsReader};
use super::error::AppError;
use crate::app::HttpState;
use crate::bus::ClusterLink;
use crate::cluster;
use crate::protocol::{ClusterOp, Code, event};
use crate::router::{AdminQuery, Control, PluginCommand};
use axum::response::IntoResponse;

pub async fn health(State(app): State<HttpState>) -> Json<Value> {
    let connections = app.connections.len();
    let max = app.connections.max_total();
    let (bus, bus_ok) = app.bus.health();
    // A disabled plugin is an operator's problem until it is enabled again or removed.
    let problems: Vec<String> = app
        .plugins
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .loaded
        .iter()
        .filter_map(|p| {
            p.disabled()
                .map(|why| format!("plugin `{}` is disabled: {why}", p.name))
        })
        .collect();
    Json(json!({
        "success": true,
        "data": {
            "connections": connections,
            "maxConnections": max,
            "healthy": app.is_accepting() && bus_ok && problems.is_empty()
                && (connections as f64) < max as f64 * 0.9,
            "problems": problems,
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
    fn cluster(&self, app: &HttpState) -> Option<Arc<dyn ClusterLink>> {
        if self.scope.as_deref() == Some("local") {
            None
        } else {
            app.bus.cluster()
        }
    }
}

pub async fn connections(
    _: Admin,
    State(app): State<HttpState>,
    Query(scope): Query<Scope>,
) -> Result<Json<Value>, AppError> {
    let list = match scope.cluster(&app) {
        Some(bus) => {
            cluster::describe_all(bus.as_ref())
                .await
                .map_err(AppError::unavailable)?
                .0
        }
        None => cluster::local_connections(&app),
    };
    Ok(Json(json!({ "success": true, "data": list })))
}

pub async fn stats(
    _: Admin,
    State(app): State<HttpState>,
    Query(scope): Query<Scope>,
) -> Result<Json<Value>, AppError> {
    let data = match scope.cluster(&app) {
        Some(bus) => {
            let parts = cluster::describe_all(bus.as_ref())
                .await
                .map_err(AppError::unavailable)?
                .1;
            serde_json::to_value(crate::protocol::ClusterStats::merge(parts))
        }
        None => serde_json::to_value(cluster::local_stats(&app)),
    }
    .unwrap_or_default();
    let mut data = data;
    // Sessions are the instance's (embedded) or already the cluster's (Redis).
    if let (Some(obj), Some(totals)) = (data.as_object_mut(), app.sessions.totals().await) {
        obj.insert("sessions".into(), json!(totals));
    }
    Ok(Json(json!({ "success": true, "data": data })))
}

#[derive(Deserialize)]
pub struct BroadcastBody {
    event: Option<Value>,
    #[serde(default)]
    data: Value,
}

/// Event names a broadcast may not use: Socket.IO's reserved names, every event the server
/// itself emits (clients trust those), and the `log:` stream whose counts they rely on.
fn broadcast_event_allowed(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !event::RESERVED.contains(&name)
        && !event::FROM_SERVER.contains(&name)
        && !name.starts_with("log:")
}

pub async fn broadcast(
    admin: Admin,
    State(app): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<BroadcastBody>, JsonRejection>,
) -> Result<Json<Value>, AppError> {
    let Json(body) =
        body.map_err(|e| AppError::new(StatusCode::BAD_REQUEST, Code::BadBody, e.body_text()))?;
    let event = match body.event {
        Some(Value::String(e)) if broadcast_event_allowed(&e) => e,
        _ => {
            return Err(AppError {
                status: StatusCode::BAD_REQUEST,
                error: crate::protocol::ClientError::new(
                    Code::InvalidField,
                    "event: must be a non-empty name of at most 100 characters, neither reserved nor one the server emits, not starting with `log:`",
                )
                .field("event"),
            });
        }
    };
    tracing::info!(target: "audit", who = %admin.who, %peer, %event, "broadcast");
    if let Some(bus) = app.bus.cluster() {
        let op = ClusterOp::Broadcast {
            event: event.clone(),
            data: body.data,
        };
        bus.publish_op(&op).await.map_err(AppError::unavailable)?;
        return Ok(Json(
            json!({ "success": true, "data": { "event": event, "scope": "cluster" } }),
        ));
    }
    let recipients = app.connections.len();
    app.io.emit(event.as_str(), &body.data).await.map_err(|e| {
        AppError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            Code::BroadcastFailed,
            e.to_string(),
        )
    })?;
    Ok(Json(json!({
        "success": true,
        "data": { "event": event, "recipients": recipients, "scope": "local" }
    })))
}

pub async fn disconnect(
    admin: Admin,
    State(app): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    tracing::info!(target: "audit", who = %admin.who, %peer, connection = %id, "disconnect");
    let sid = Sid::from_str(&id).map_err(|_| {
        AppError::new(
            StatusCode::BAD_REQUEST,
            Code::InvalidId,
            format!("{id:?} is not a connection id"),
        )
    })?;
    let not_found = || {
        AppError::new(
            StatusCode::NOT_FOUND,
            Code::NotFound,
            format!("no connection {id}"),
        )
    };
    if let Some(socket) = app.io.get_socket(sid) {
        crate::socket::end_session(&socket, &app).await;
        socket.disconnect().map_err(|e| {
            AppError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                Code::DisconnectFailed,
                e.to_string(),
            )
        })?;
        return Ok(Json(
            json!({ "success": true, "data": { "id": id, "instance": app.instance } }),
        ));
    }
    let bus = app.bus.cluster().ok_or_else(not_found)?;
    let instance = cluster::disconnect_anywhere(bus.as_ref(), &id)
        .await
        .map_err(AppError::unavailable)?
        .ok_or_else(not_found)?;
    Ok(Json(
        json!({ "success": true, "data": { "id": id, "instance": instance } }),
    ))
}

/// `POST /api/plugins/:name/disable`: stop a plugin (an operator's decision) until it is
/// enabled again: its subscribers get `filter_disabled` and lose their subscription. The
/// built-in filter `default` is refused (every subscription without a filter uses it).
pub async fn disable_plugin(
    admin: Admin,
    State(app): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
) -> Result<Json<Value>, AppError> {
    if name == crate::subscription::DEFAULT_FILTER {
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            Code::Forbidden,
            "the built-in filter `default` cannot be disabled",
        ));
    }
    let was_serving = plugin_switch(&app, &name, |reply| PluginCommand::Disable {
        name: name.clone(),
        reply,
    })
    .await?;
    tracing::info!(target: "audit", who = %admin.who, %peer, plugin = %name, was_serving, "plugin disabled");
    Ok(Json(
        json!({ "success": true, "data": { "name": name, "wasServing": was_serving } }),
    ))
}

/// Ask the router to switch plugin `name` (`make` builds the command around its reply):
/// its answer, 404 for an unknown plugin, 503 when the router cannot be asked.
async fn plugin_switch(
    app: &HttpState,
    name: &str,
    make: impl FnOnce(tokio::sync::oneshot::Sender<Option<bool>>) -> PluginCommand,
) -> Result<bool, AppError> {
    let busy = |what: &str| AppError::new(StatusCode::SERVICE_UNAVAILABLE, Code::Busy, what);
    let (tx, rx) = tokio::sync::oneshot::channel();
    app.control(Control::Plugin(make(tx)))
        .map_err(|_| busy("router busy"))?;
    rx.await
        .map_err(|_| busy("router stopped"))?
        .ok_or_else(|| {
            AppError::new(
                StatusCode::NOT_FOUND,
                Code::NotFound,
                format!("no plugin {name:?}"),
            )
        })
}

/// `POST /api/plugins/:name/enable`: a disabled plugin serves again (fresh instance, failure
/// count from zero).
pub async fn enable_plugin(
    admin: Admin,
    State(app): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
) -> Result<Json<Value>, AppError> {
    let was_disabled = plugin_switch(&app, &name, |reply| PluginCommand::Enable {
        name: name.clone(),
        reply,
    })
    .await?;
    tracing::info!(target: "audit", who = %admin.who, %peer, plugin = %name, was_disabled, "plugin enabled");
    Ok(Json(
        json!({ "success": true, "data": { "name": name, "wasDisabled": was_disabled } }),
    ))
}

pub async fn plugins(_: Admin, State(app): State<HttpState>) -> Result<Json<Value>, AppError> {
    let busy = |what: &str| AppError::new(StatusCode::SERVICE_UNAVAILABLE, Code::Busy, what);
    let (tx, rx) = tokio::sync::oneshot::channel();
    app.control(Control::Admin(AdminQuery::Counts(tx)))
        .map_err(|_| busy("router busy"))?;
    let counts = rx.await.map_err(|_| busy("router stopped"))?;
    let catalog = app.plugins.lock().unwrap_or_else(|p| p.into_inner());
    Ok(Json(
        json!({ "success": true, "data": crate::plugins::describe(&catalog, &counts) }),
    ))
}

/// `GET /metrics`: Prometheus exposition (see `prometheus`).
pub async fn metrics(_: MetricsReader, State(app): State<HttpState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            super::prometheus::CONTENT_TYPE,
        )],
        super::prometheus::render(&app.app),
    )
}
