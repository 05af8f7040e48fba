//! The handshake (connect middleware, before the socket joins): token from `auth.token`,
//! verified ([`crate::auth`]); then a connection slot ([`crate::connections`]); then the
//! client is registered with the router and its event handlers installed. Refusals reach
//! the client as `connect_error` with the seed's messages, and are logged at INFO with the
//! reason and the peer address (never the token).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::extract::ConnectInfo;
use serde_json::Value;
use socketioxide::extract::{SocketRef, State, TryData};

use super::session::{Grant, Session};
use super::{events, expiry, lifecycle, peer};
use crate::app::AppState;
use crate::auth::AuthError;
use crate::connections::ConnectionInfo;
use crate::delivery::Client;
use crate::delivery::outlet::SocketOutlet;
use crate::edge::Peer;
use crate::router::{ClientCommand, Control};
use crate::system_stats::{StatsTicket, stats_room, stats_slice};

/// Why a handshake was refused; the text is what `connect_error` carries.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(String);

/// Log a refused handshake: why, and from where.
fn refuse(socket: &SocketRef, reason: &str, message: String) -> Refusal {
    tracing::info!(peer = %peer(socket), reason, "handshake refused");
    Refusal(message)
}

/// A refused token: the reason and, for a malformed one, what was wrong (never the token).
fn refuse_token(socket: &SocketRef, e: AuthError) -> Refusal {
    if let AuthError::Malformed(detail) = &e {
        tracing::info!(peer = %peer(socket), reason = e.reason(), %detail, "handshake refused");
        return Refusal(e.to_string());
    }
    refuse(socket, e.reason(), e.to_string())
}

pub async fn authenticate(
    socket: SocketRef,
    TryData(auth): TryData<Value>,
    State(app): State<AppState>,
) -> Result<(), Refusal> {
    if !app.is_accepting() {
        return Err(refuse(
            &socket,
            "shutting_down",
            "Server shutting down".into(),
        ));
    }
    // Browsers send Origin. In development mode with no origins configured, only the
    // server's own page may connect: a page of another local origin must not use the
    // development token.
    if app.dev_tokens
        && app.config.edge.cors_origins.is_empty()
        && !crate::edge::origin::same_origin(&socket.req_parts().headers)
    {
        return Err(refuse(&socket, "origin", "Origin not allowed".into()));
    }
    // When origins are configured, the handshake obeys them like the REST API does (CORS
    // alone does not cover a WebSocket).
    if !app.config.edge.cors_origins.is_empty()
        && let Some(origin) = socket
            .req_parts()
            .headers
            .get(axum::http::header::ORIGIN)
            .and_then(|o| o.to_str().ok())
        && !app
            .config
            .edge
            .cors_origins
            .iter()
            .any(|allowed| allowed == origin)
    {
        return Err(refuse(&socket, "origin", "Origin not allowed".into()));
    }
    let token = auth
        .as_ref()
        .ok()
        .and_then(|a| a.get("token").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    let (user, grant) = Grant::verify(&app, &token).map_err(|e| refuse_token(&socket, e))?;
    // A session to resume once connected: `auth: { token, session, offset }`.
    let resume = auth.as_ref().ok().and_then(|a| {
        let id = a
            .get("session")?
            .as_str()
            .filter(|s| !s.is_empty() && s.len() <= 64)?;
        let offset = a
            .get("offset")
            .and_then(Value::as_str)
            .filter(|o| crate::history::is_offset(o))
            .map(str::to_owned);
        Some((id.to_owned(), offset))
    });
    let slot = app
        .connections
        .admit(&user)
        .map_err(|e| refuse(&socket, "connection_limit", e.to_string()))?;
    let session = Arc::new(Session::new(
        user,
        grant,
        slot,
        app.config.edge.events_per_second,
    ));
    *session
        .resume_request
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = resume;
    socket.extensions.insert(session.clone());
    attach(&socket, &app, &session)
}

/// Register the client with the router and install its event handlers.
///
/// This runs inside the handshake middleware, i.e. *before* the CONNECT packet goes out:
/// socketioxide spawns the connect handler after sending CONNECT, so handlers installed
/// there can miss an event the client sends right after `connect` (the seed's client
/// subscribes exactly then).
fn attach(socket: &SocketRef, app: &AppState, session: &Arc<Session>) -> Result<(), Refusal> {
    // The client's address (behind a trusted proxy, the one it forwards).
    let client = socket
        .req_parts()
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0.ip());
    let ip = client.map_or_else(|| "unknown".into(), |ip| ip.to_string());
    let info = Arc::new(ConnectionInfo {
        id: socket.id.to_string(),
        user_id: session.user.clone(),
        ip,
        connected_at: SystemTime::now(),
        message_count: Default::default(),
        dropped: Default::default(),
        queued_bytes: Default::default(),
        transport: Default::default(),
        stats: StatsTicket::new(stats_slice(socket.id.as_str())),
        subscription: Default::default(),
    });
    // The connection that carried the handshake is authenticated now; a WebSocket carries
    // this socket's bytes from here on (a long-polling one is metered per response, and an
    // upgrade later, by `edge::track`).
    let meter = app.edge.meter(socket.id);
    // The transport as it connected (the router keeps it up to date after an upgrade).
    info.show_queue(
        0,
        Some(socket.transport_type() == socketioxide::TransportType::Websocket),
    );
    if let Some(ConnectInfo(peer)) = socket.req_parts().extensions.get::<ConnectInfo<Peer>>() {
        peer.conn.authenticate();
        app.edge
            .session_authenticated(client.unwrap_or_else(|| peer.addr.ip()));
        if socket.transport_type() == socketioxide::TransportType::Websocket {
            peer.conn.carry(meter.clone());
        }
    }
    let client = Client::new(
        Box::new(SocketOutlet {
            socket: socket.clone(),
            meter,
            emitter: app.emitter.clone(),
        }),
        socket.id,
        session.grant().scope,
        info.clone(),
        app.metrics.clone(),
        app.delivery(),
        Instant::now(),
    )
    .with_stats(app.stats_feed.clone())
    .with_replay_budget(app.config.history.replay_max_logs, Instant::now())
    .with_gzip_batches(app.gzip_batches.clone());
    let connect = Control::Client(ClientCommand::Connect(Box::new(client)));
    if app.control(connect).is_err() {
        app.edge.forget(socket.id);
        return Err(refuse(socket, "router_busy", "Server busy".into()));
    }
    socket.join(stats_room(info.stats.slice()));
    // For the stats loop's visits (see `system_stats`).
    socket.extensions.insert(info.clone());
    app.connections.insert(info);
    events::register(socket);
    socket.on_disconnect(lifecycle::on_disconnect);
    let notice = std::time::Duration::from_millis(app.config.auth.auth_expiry_notice_ms);
    tokio::spawn(expiry::watch(socket.clone(), session.clone(), notice));
    Ok(())
}
