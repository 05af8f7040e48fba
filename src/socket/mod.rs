//! The Socket.IO face: handshake authentication and admission, then the client events.
//!
//! Handshake (connect middleware, before the socket joins): token from `auth.token`,
//! verified ([`crate::auth`]); then a connection slot ([`crate::connections`]). Refusals reach
//! the client as `connect_error` with the seed's messages.
//!
//! Events: `log:subscribe`, `log:unsubscribe`, `log:pause`, `log:resume`. Each is checked
//! against the socket's event budget, validated here, and applied by the router between two
//! batches; the answer goes out as the seed's event and, when the client passed one, as the
//! acknowledgement.

mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::extract::ConnectInfo;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::Sid;
use tokio::sync::oneshot;

use crate::app::AppState;
use crate::connections::ConnectionInfo;
use crate::delivery::Client;
use crate::log_entry::FieldError;
use crate::router::{Control, SubscribeError};
use crate::subscription::SubscribeRequest;
pub use session::Session;

/// Install the handlers on the default namespace.
pub fn register(io: &SocketIo) {
    io.ns("/", on_connect.with(authenticate));
}

/// Why a handshake was refused; the text is what `connect_error` carries.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refusal(String);

async fn authenticate(
    socket: SocketRef,
    TryData(auth): TryData<Value>,
    State(app): State<AppState>,
) -> Result<(), Refusal> {
    if !app.is_accepting() {
        return Err(Refusal("Server shutting down".into()));
    }
    let token = auth
        .ok()
        .and_then(|a| a.get("token").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    let claims = app.keys.verify(&token).map_err(|e| {
        tracing::debug!(sid = %socket.id, reason = ?e, "handshake refused");
        Refusal(e.to_string())
    })?;
    let slot = app
        .connections
        .admit(&claims.sub)
        .map_err(|e| Refusal(e.to_string()))?;
    let session = Arc::new(Session::new(claims, slot, app.config.events_per_second));
    socket.extensions.insert(session.clone());
    attach(&socket, &app, &session)
}

fn client_ip(socket: &SocketRef) -> String {
    let parts = socket.req_parts();
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Register the client with the router and install its event handlers.
///
/// This runs inside the handshake middleware, i.e. *before* the CONNECT packet goes out:
/// socketioxide spawns the connect handler after sending CONNECT, so handlers installed
/// there can miss an event the client sends right after `connect` (the seed's client
/// subscribes exactly then).
fn attach(socket: &SocketRef, app: &AppState, session: &Session) -> Result<(), Refusal> {
    let info = Arc::new(ConnectionInfo {
        id: socket.id.to_string(),
        user_id: session.claims.sub.clone(),
        ip: client_ip(socket),
        connected_at: SystemTime::now(),
        message_count: Default::default(),
        subscription: Default::default(),
    });
    let client = Client::new(
        socket.clone(),
        info.clone(),
        app.metrics.clone(),
        app.limits,
        Instant::now(),
    );
    if app.control(Control::Connect(Box::new(client))).is_err() {
        tracing::warn!(sid = %socket.id, "router busy; refusing connection");
        return Err(Refusal("Server busy".into()));
    }
    app.connections.insert(info);
    socket.on("log:subscribe", on_subscribe);
    socket.on("log:unsubscribe", on_unsubscribe);
    socket.on("log:pause", on_pause);
    socket.on("log:resume", on_resume);
    socket.on_disconnect(on_disconnect);
    Ok(())
}

async fn on_connect(socket: SocketRef) {
    let user = socket
        .extensions
        .get::<Arc<Session>>()
        .map(|s| s.claims.sub.clone())
        .unwrap_or_default();
    tracing::info!(sid = %socket.id, %user, "client connected");
}

fn error_payload(code: &str, message: &str, field: Option<&str>) -> Value {
    let mut v = json!({ "code": code, "message": message });
    if let Some(f) = field {
        v["field"] = Value::String(f.to_owned());
    }
    v
}

/// Send `error` and a failed acknowledgement.
fn reply_error(socket: &SocketRef, ack: AckSender, code: &str, message: &str, field: Option<&str>) {
    let err = error_payload(code, message, field);
    let _ = socket.emit("error", &err);
    let _ = ack.send(&json!({ "success": false, "error": err }));
}

/// Send the success event and the same payload as acknowledgement.
fn reply_ok(socket: &SocketRef, ack: AckSender, event: Option<&str>, payload: Value) {
    if let Some(event) = event {
        let _ = socket.emit(event, &payload);
    }
    let _ = ack.send(&payload);
}

/// Spend one unit of the socket's event budget; on refusal tell the client (at most once a
/// second) and return `false`.
fn admit_event(socket: &SocketRef, app: &AppState, ack: AckSender) -> Option<AckSender> {
    let session = socket.extensions.get::<Arc<Session>>()?;
    match session.admit_event(Instant::now()) {
        session::EventAdmission::Allowed => Some(ack),
        session::EventAdmission::Refused { notify } => {
            app.metrics
                .events_rejected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if notify {
                reply_error(
                    socket,
                    ack,
                    "rate_limited",
                    "too many events; slow down",
                    None,
                );
            } else {
                let _ = ack.send(&json!({ "success": false, "error": error_payload("rate_limited", "too many events; slow down", None) }));
            }
            None
        }
    }
}

async fn ask_router<T>(
    socket: &SocketRef,
    app: &AppState,
    build: impl FnOnce(oneshot::Sender<T>) -> Control,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    if app.control(build(tx)).is_err() {
        return None;
    }
    let answer = rx.await.ok();
    if answer.is_none() {
        tracing::warn!(sid = %socket.id, "router dropped a request");
    }
    answer
}

async fn on_subscribe(
    socket: SocketRef,
    TryData(data): TryData<Value>,
    ack: AckSender,
    State(app): State<AppState>,
) {
    let Some(ack) = admit_event(&socket, &app, ack) else {
        return;
    };
    let request = match SubscribeRequest::parse(data.unwrap_or(Value::Null)) {
        Ok(r) => r,
        Err(FieldError { field, message }) => {
            let text = format!("{field}: {message}");
            return reply_error(&socket, ack, "invalid_subscription", &text, Some(&field));
        }
    };
    let sid = socket.id;
    match ask_router(&socket, &app, |reply| Control::Subscribe {
        sid,
        request,
        reply,
    })
    .await
    {
        Some(Ok(subscribed)) => {
            let mut payload = serde_json::to_value(&subscribed).unwrap_or_default();
            payload["success"] = Value::Bool(true);
            reply_ok(&socket, ack, Some("log:subscribed"), payload);
        }
        Some(Err(e)) => {
            let field = match e {
                SubscribeError::Rejected { .. } => Some("params"),
                SubscribeError::UnknownTransform { .. }
                | SubscribeError::TransformRejected { .. } => Some("transform"),
                SubscribeError::UnknownFilter { .. } | SubscribeError::Unavailable { .. } => {
                    Some("filter")
                }
                SubscribeError::NotConnected => None,
            };
            reply_error(&socket, ack, e.code(), &e.to_string(), field)
        }
        None => reply_error(&socket, ack, "busy", "server busy, try again", None),
    }
}

/// The shape shared by the argument-less events: spend the event budget, apply a control
/// message in the router, answer with `event` (if any) and the acknowledgement.
async fn simple_event(
    socket: SocketRef,
    ack: AckSender,
    app: AppState,
    build: impl FnOnce(Sid, oneshot::Sender<bool>) -> Control,
    event: Option<&str>,
    payload: Value,
) {
    let Some(ack) = admit_event(&socket, &app, ack) else {
        return;
    };
    let sid = socket.id;
    match ask_router(&socket, &app, |reply| build(sid, reply)).await {
        Some(_) => reply_ok(&socket, ack, event, payload),
        None => reply_error(&socket, ack, "busy", "server busy, try again", None),
    }
}

async fn on_unsubscribe(socket: SocketRef, ack: AckSender, State(app): State<AppState>) {
    let payload = json!({ "success": true });
    let build = |sid, reply| Control::Unsubscribe { sid, reply };
    simple_event(socket, ack, app, build, Some("log:unsubscribed"), payload).await;
}

async fn on_pause(socket: SocketRef, ack: AckSender, State(app): State<AppState>) {
    let payload = json!({ "success": true, "paused": true });
    let build = |sid, reply| Control::Pause { sid, reply };
    simple_event(socket, ack, app, build, None, payload).await;
}

async fn on_resume(socket: SocketRef, ack: AckSender, State(app): State<AppState>) {
    let payload = json!({ "success": true, "paused": false });
    let build = |sid, reply| Control::Resume { sid, reply };
    simple_event(socket, ack, app, build, None, payload).await;
}

async fn on_disconnect(socket: SocketRef, State(app): State<AppState>) {
    tracing::info!(sid = %socket.id, "client disconnected");
    app.connections.remove(&socket.id.to_string());
    app.control_reliably(Control::Disconnect(socket.id));
}
