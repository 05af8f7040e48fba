//! A socket's life after the handshake: connected (it may resume a session), and gone.

use std::sync::Arc;

use socketioxide::extract::{SocketRef, State};

use super::events::ask_router;
use super::session::Session;
use crate::app::AppState;
use crate::protocol::{ClientError, Code, event};
use crate::router::{ClientCommand, Control};
use crate::subscription::SubscribeRequest;

/// socketioxide calls this once the socket is marked connected.
pub async fn on_connect(socket: SocketRef, State(app): State<AppState>) {
    let Some(session) = socket.extensions.get::<Arc<Session>>() else {
        return;
    };
    session.mark_connected();
    tracing::info!(sid = %socket.id, user = %session.user, "client connected");
    let resume = session
        .resume_request
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some((id, offset)) = resume {
        resume_session(&socket, &app, &session, id, offset).await;
    }
}

/// Bring back the subscription of session `id` (this user's, not expired), replaying from
/// `offset`; the router sends `log:subscribed` with `recovered`. An unknown session gets an
/// `error` (`session_expired`) so the client subscribes anew.
async fn resume_session(
    socket: &SocketRef,
    app: &AppState,
    session: &Session,
    id: String,
    offset: Option<String>,
) {
    let saved = app.sessions.load(&id, &session.user).await;
    let ttl = std::time::Duration::from_millis(app.config.history.session_ttl_ms);
    if let Some(saved) = &saved {
        // Attached again: it does not expire while this connection lives. (It replaces
        // itself, so it always finds room.)
        let _ = app.sessions.save(&id, saved, ttl).await;
    }
    let request = saved.and_then(|saved| {
        SubscribeRequest::parse(saved.subscription, app.config.history.tail_max).ok()
    });
    let Some(mut request) = request else {
        let error = ClientError::new(
            Code::SessionExpired,
            "the session is unknown or expired; subscribe again",
        );
        let _ = socket.emit(event::ERROR, &error);
        return;
    };
    request.resume = true;
    request.since = offset;
    request.session = Some(id.clone());
    session.set_resume_id(Some(id));
    let sid = socket.id;
    let asked = ask_router(&app.router.control, |reply| ClientCommand::Subscribe {
        sid,
        request,
        reply,
    })
    .await;
    if let Ok(Err(e)) = asked {
        let _ = socket.emit(event::ERROR, &e);
    }
}

pub async fn on_disconnect(
    socket: SocketRef,
    reason: socketioxide::socket::DisconnectReason,
    State(app): State<AppState>,
) {
    tracing::info!(sid = %socket.id, %reason, "client disconnected");
    if let Some(session) = socket.extensions.get::<Arc<Session>>() {
        session.close();
        if let Some(id) = session.resume_id() {
            let ttl = std::time::Duration::from_millis(app.config.history.session_ttl_ms);
            app.sessions.detach(&id, ttl).await;
        }
    }
    app.connections.remove(&socket.id.to_string());
    app.edge.forget(socket.id);
    app.control_reliably(Control::Client(ClientCommand::Disconnect(socket.id)))
        .await;
}
