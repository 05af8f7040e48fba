//! The Socket.IO face: the handshake ([`handshake`]: authentication and admission), a
//! socket's life after it ([`lifecycle`]: connect, resume, disconnect), and the client events
//! ([`events`]: one way in, one file per event: `log:subscribe`, `log:unsubscribe`,
//! `log:pause`, `log:resume`, `auth:refresh`, and an answer to unknown events).
//!
//! Beside them: [`session`] (per-socket state: user, grant, event budget), [`answer`]
//! (answers wait for room in a full queue) and [`expiry`] (`auth:expired`, and the cut at
//! `exp`).

mod answer;
mod events;
mod expiry;
mod handshake;
mod lifecycle;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;
use socketioxide::handler::ConnectHandler;

use crate::app::AppState;
pub use session::{Grant, Session};

/// How long a connection may take to complete its Socket.IO CONNECT (authenticated) before
/// its transport is closed.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Install the handlers on the default namespace.
pub fn register(io: &SocketIo) {
    io.ns("/", lifecycle::on_connect.with(handshake::authenticate));
}

/// The peer's address, as the HTTP server saw it.
fn peer(socket: &SocketRef) -> String {
    socket
        .req_parts()
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0.to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// An admin is disconnecting this client, or it unsubscribed: its session ends (no resume).
pub async fn end_session(socket: &SocketRef, app: &AppState) {
    if let Some(session) = socket.extensions.get::<Arc<Session>>()
        && let Some(id) = session.set_resume_id(None)
    {
        app.sessions.end(&id).await;
    }
}
