//! The Socket.IO face: handshake authentication and admission, then the client events.
//!
//! Handshake (connect middleware, before the socket joins): token from `auth.token`,
//! verified ([`crate::auth`]); then a connection slot ([`crate::connections`]). Refusals reach
//! the client as `connect_error` with the seed's messages, and are logged at INFO with the
//! reason and the peer address (never the token).
//!
//! Events: `log:subscribe`, `log:unsubscribe`, `log:pause`, `log:resume`, `auth:refresh`
//! (a newer token; see [`expiry`] for `auth:expired`). Each is checked
//! against the socket's event budget, validated here, and applied by the router between two
//! batches; the answer goes out as the seed's event and, when the client passed one, as the
//! acknowledgement. A payload that cannot be decoded is refused (`invalid_payload`), never
//! read as "no filter"; an unknown event is answered with `unknown_event`.

mod answer;
mod expiry;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::extract::ConnectInfo;

use crate::delivery::outlet::SocketOutlet;
use crate::edge::Peer;
use crate::stats_feed::{StatsTicket, stats_room, stats_slice};
use serde::Serialize;
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::{Event, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::Sid;
use tokio::sync::oneshot;

use crate::app::AppState;
use crate::auth::AuthError;
use crate::connections::ConnectionInfo;
use crate::delivery::Client;
use crate::log_entry::FieldError;
use crate::protocol::{ClientError, Code, Done, Failure, Refreshed, event};
use crate::router::{ClientCommand, Control};
use crate::subscription::SubscribeRequest;
use answer::Ack;
pub use session::{Grant, Session};

/// How long a connection may take to complete its Socket.IO CONNECT (authenticated) before
/// its transport is closed.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Install the handlers on the default namespace.
pub fn register(io: &SocketIo) {
    io.ns("/", on_connect.with(authenticate));
}

/// Why a handshake was refused; the text is what `connect_error` carries.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refusal(String);

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

async fn authenticate(
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
    // Browsers send Origin; when origins are configured, the handshake obeys them like the
    // REST API does (CORS alone does not cover a WebSocket).
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
    let (user, grant) = verify(&app, &token).map_err(|e| refuse_token(&socket, e))?;
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

/// Who the token names and what it grants.
fn verify(app: &AppState, token: &str) -> Result<(String, Grant), AuthError> {
    let claims = app.keys.verify(token)?;
    let scope = claims.scope(&app.access().default_scope)?;
    Ok((
        claims.sub,
        Grant {
            expires_at: claims.exp,
            scope,
        },
    ))
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

/// Register the client with the router and install its event handlers.
///
/// This runs inside the handshake middleware, i.e. *before* the CONNECT packet goes out:
/// socketioxide spawns the connect handler after sending CONNECT, so handlers installed
/// there can miss an event the client sends right after `connect` (the seed's client
/// subscribes exactly then).
fn attach(socket: &SocketRef, app: &AppState, session: &Arc<Session>) -> Result<(), Refusal> {
    let ip = socket
        .req_parts()
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    let info = Arc::new(ConnectionInfo {
        id: socket.id.to_string(),
        user_id: session.user.clone(),
        ip,
        connected_at: SystemTime::now(),
        message_count: Default::default(),
        stats: StatsTicket::new(stats_slice(socket.id.as_str())),
        subscription: Default::default(),
    });
    // The connection that carried the handshake is authenticated now; a WebSocket carries
    // this socket's bytes from here on (a long-polling one is metered per response, and an
    // upgrade later, by `edge::track`).
    let meter = app.edge.meter(socket.id);
    if let Some(ConnectInfo(peer)) = socket.req_parts().extensions.get::<ConnectInfo<Peer>>() {
        peer.conn.authenticate();
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
        app.delivery.clone(),
        Instant::now(),
    )
    .with_stats(app.stats_feed.clone());
    let connect = Control::Client(ClientCommand::Connect(Box::new(client)));
    if app.control(connect).is_err() {
        app.edge.forget(socket.id);
        return Err(refuse(socket, "router_busy", "Server busy".into()));
    }
    socket.join(stats_room(info.stats.slice()));
    // For the stats loop's visits (see `stats_feed`).
    socket.extensions.insert(info.clone());
    app.connections.insert(info);
    socket.on(event::SUBSCRIBE, on_subscribe);
    socket.on(event::UNSUBSCRIBE, on_unsubscribe);
    socket.on(event::PAUSE, on_pause);
    socket.on(event::RESUME, on_resume);
    socket.on(event::AUTH_REFRESH, on_refresh);
    socket.on_fallback(on_unknown);
    socket.on_disconnect(on_disconnect);
    let notice = std::time::Duration::from_millis(app.config.auth.auth_expiry_notice_ms);
    tokio::spawn(expiry::watch(socket.clone(), session.clone(), notice));
    Ok(())
}

async fn on_connect(socket: SocketRef, State(app): State<AppState>) {
    let Some(session) = socket.extensions.get::<Arc<Session>>() else {
        return;
    };
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
    if let Some(saved) = &saved {
        // Attached again: it does not expire while this connection lives.
        let ttl = std::time::Duration::from_millis(app.config.history.session_ttl_ms);
        app.sessions.save(&id, saved, ttl).await;
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
    if let Some(Err(e)) = ask_router(socket, app, |reply| ClientCommand::Subscribe {
        sid,
        request,
        reply,
    })
    .await
    {
        let _ = socket.emit(event::ERROR, &e);
    }
}

/// An admin is disconnecting this client: its session ends with it (no resume).
pub async fn end_session(socket: &SocketRef, app: &AppState) {
    if let Some(session) = socket.extensions.get::<Arc<Session>>()
        && let Some(id) = session.set_resume_id(None)
    {
        app.sessions.end(&id).await;
    }
}

/// How long an answer may wait for room in the client's queue (see [`answer`]).
fn patience(app: &AppState) -> answer::Patience<'_> {
    answer::Patience {
        within: std::time::Duration::from_millis(app.config.delivery.slow_consumer_timeout_ms),
        emitter: &app.emitter,
    }
}

/// Send `error` and a failed acknowledgement.
async fn reply_error(socket: &SocketRef, app: &AppState, ack: Ack, error: &ClientError) {
    let patience = patience(app);
    answer::emit(socket, event::ERROR, error, &patience).await;
    ack.send(&Failure::of(error), &patience).await;
}

/// Send the success event (if any) and the same payload as acknowledgement.
async fn reply_ok<T: Serialize>(
    socket: &SocketRef,
    app: &AppState,
    ack: Ack,
    event: Option<&str>,
    payload: &T,
) {
    let patience = patience(app);
    if let Some(event) = event {
        answer::emit(socket, event, payload, &patience).await;
    }
    ack.send(payload, &patience).await;
}

/// Spend one unit of the socket's event budget; on refusal tell the client (the `error`
/// event at most once a second, so a flood is not answered by a flood; neither waits for
/// room in a full queue) and return `None`.
fn admit_event(socket: &SocketRef, app: &AppState, ack: Ack) -> Option<Ack> {
    let session = socket.extensions.get::<Arc<Session>>()?;
    match session.admit_event(Instant::now()) {
        session::EventAdmission::Allowed => Some(ack),
        session::EventAdmission::Abusive => {
            tracing::info!(target: "audit", sid = %socket.id, user = %session.user, peer = %peer(socket), "disconnecting a socket that keeps flooding events");
            let error = ClientError::new(Code::RateLimited, "too many events; disconnecting");
            let _ = socket.emit(event::ERROR, &error);
            let _ = socket.clone().disconnect();
            None
        }
        session::EventAdmission::Refused { notify } => {
            app.metrics
                .events_rejected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let error = ClientError::new(Code::RateLimited, "too many events; slow down");
            if notify {
                let _ = socket.emit(event::ERROR, &error);
            }
            ack.try_send(&Failure::of(&error));
            None
        }
    }
}

/// Wait (briefly) until socketioxide marks the socket connected. It sends CONNECT first and
/// sets the flag just after: an event the client sends as soon as it reads CONNECT can be
/// handled in between, and everything emitted to the socket then is refused as "closed" —
/// a `log:subscribed` (and the logs after it) silently lost.
async fn settled(socket: &SocketRef) {
    for _ in 0..1000 {
        if socket.connected() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

async fn ask_router<T>(
    socket: &SocketRef,
    app: &AppState,
    build: impl FnOnce(oneshot::Sender<T>) -> ClientCommand,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    if app.control(Control::Client(build(tx))).is_err() {
        return None;
    }
    let answer = rx.await.ok();
    if answer.is_none() {
        tracing::warn!(sid = %socket.id, "router dropped a request");
    }
    answer
}

fn busy() -> ClientError {
    ClientError::new(Code::Busy, "server busy, try again")
}

async fn on_subscribe(
    socket: SocketRef,
    TryData(data): TryData<Value>,
    ack: Ack,
    State(app): State<AppState>,
) {
    tracing::debug!(sid = %socket.id, "log:subscribe received");
    settled(&socket).await;
    let Some(ack) = admit_event(&socket, &app, ack) else {
        return;
    };
    let data = match data {
        Ok(v) => v,
        // No argument at all: the seed's "everything" subscription.
        Err(e) if e.to_string().contains("first element not found") => Value::Null,
        Err(e) => {
            let error = ClientError::new(
                Code::InvalidPayload,
                format!("the subscription could not be decoded: {e}"),
            );
            return reply_error(&socket, &app, ack, &error).await;
        }
    };
    // What a session keeps: the subscription without its one-off replay request.
    let mut kept = data.clone();
    if let Some(obj) = kept.as_object_mut() {
        obj.remove("since");
        obj.remove("tail");
    }
    let mut request = match SubscribeRequest::parse(data, app.config.history.tail_max) {
        Ok(r) => r,
        Err(FieldError { field, message }) => {
            let error = ClientError::new(Code::InvalidSubscription, format!("{field}: {message}"))
                .field(field);
            return reply_error(&socket, &app, ack, &error).await;
        }
    };
    let Some(session) = socket.extensions.get::<Arc<Session>>() else {
        return;
    };
    let resumable = request.resumable();
    if resumable {
        request.session = Some(session.resume_id().unwrap_or_else(crate::sessions::new_id));
    }
    let session_id = request.session.clone();
    let ttl = std::time::Duration::from_millis(app.config.history.session_ttl_ms);
    // The session is saved before the router answers (a replay may take a while, and the
    // client may reconnect elsewhere as soon as it has `log:subscribed`); a refused
    // subscription puts back what the session held.
    let previous = match &session_id {
        Some(id) => {
            let before = app.sessions.load(id, &session.user).await;
            let saved = crate::sessions::Saved {
                user: session.user.clone(),
                subscription: kept,
            };
            app.sessions.save(id, &saved, ttl).await;
            before
        }
        None => None,
    };
    let sid = socket.id;
    let answer = ask_router(&socket, &app, |reply| ClientCommand::Subscribe {
        sid,
        request,
        reply,
    })
    .await;
    if !matches!(answer, Some(Ok(_)))
        && let Some(id) = &session_id
    {
        match previous {
            Some(saved) => app.sessions.save(id, &saved, ttl).await,
            None => app.sessions.end(id).await,
        }
    }
    match answer {
        // The router sent `log:subscribed` itself, ahead of any log.
        Some(Ok(subscribed)) => {
            match session_id {
                Some(id) => {
                    session.set_resume_id(Some(id.clone()));
                    // The connection went while this was under way: the session lives on
                    // for its ttl, not for ever.
                    if session.is_closed() {
                        app.sessions.detach(&id, ttl).await;
                    }
                }
                None => {
                    if let Some(old) = session.set_resume_id(None) {
                        app.sessions.end(&old).await;
                    }
                }
            }
            reply_ok(&socket, &app, ack, None, &subscribed).await
        }
        Some(Err(e)) => {
            if e.code == Code::Forbidden {
                let user = socket
                    .extensions
                    .get::<Arc<Session>>()
                    .map(|s| s.user.clone())
                    .unwrap_or_default();
                tracing::info!(target: "audit", %user, peer = %peer(&socket), reason = %e.message, "subscription refused");
            }
            reply_error(&socket, &app, ack, &e).await
        }
        None => reply_error(&socket, &app, ack, &busy()).await,
    }
}

/// The shape shared by the argument-less events: spend the event budget, apply a command in
/// the router, answer with `event` (if any) and the acknowledgement.
async fn simple_event(
    socket: SocketRef,
    ack: Ack,
    app: AppState,
    build: impl FnOnce(Sid, oneshot::Sender<bool>) -> ClientCommand,
    event: Option<&str>,
    payload: Done,
) {
    let Some(ack) = admit_event(&socket, &app, ack) else {
        return;
    };
    let sid = socket.id;
    match ask_router(&socket, &app, |reply| build(sid, reply)).await {
        Some(_) => reply_ok(&socket, &app, ack, event, &payload).await,
        None => reply_error(&socket, &app, ack, &busy()).await,
    }
}

async fn on_unsubscribe(socket: SocketRef, ack: Ack, State(app): State<AppState>) {
    settled(&socket).await;
    // An explicit unsubscribe ends the session: nothing to resume.
    end_session(&socket, &app).await;
    let payload = Done {
        success: true,
        paused: None,
    };
    let build = |sid, reply| ClientCommand::Unsubscribe { sid, reply };
    simple_event(socket, ack, app, build, Some(event::UNSUBSCRIBED), payload).await;
}

async fn on_pause(socket: SocketRef, ack: Ack, State(app): State<AppState>) {
    settled(&socket).await;
    let payload = Done {
        success: true,
        paused: Some(true),
    };
    let build = |sid, reply| ClientCommand::Pause { sid, reply };
    simple_event(socket, ack, app, build, None, payload).await;
}

async fn on_resume(socket: SocketRef, ack: Ack, State(app): State<AppState>) {
    settled(&socket).await;
    let payload = Done {
        success: true,
        paused: Some(false),
    };
    let build = |sid, reply| ClientCommand::Resume { sid, reply };
    simple_event(socket, ack, app, build, None, payload).await;
}

/// `auth:refresh` with `{ token }` (or the token itself): a newer token for the same user
/// keeps the connection past the old one's `exp`; its scope applies at once.
async fn on_refresh(
    socket: SocketRef,
    TryData(data): TryData<Value>,
    ack: Ack,
    State(app): State<AppState>,
) {
    settled(&socket).await;
    let Some(ack) = admit_event(&socket, &app, ack) else {
        return;
    };
    let Some(session) = socket.extensions.get::<Arc<Session>>() else {
        return reply_error(&socket, &app, ack, &busy()).await;
    };
    // One refresh at a time per connection, so the grant and the router's scope move
    // together.
    let _one_at_a_time = session.refreshing.lock().await;
    let token = match &data {
        Ok(Value::String(t)) => t.clone(),
        Ok(v) => v
            .get("token")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        Err(_) => String::new(),
    };
    let (user, grant) = match verify(&app, &token) {
        Ok(v) => v,
        Err(e) => {
            tracing::info!(target: "audit", user = %session.user, peer = %peer(&socket), reason = e.reason(), "token refresh refused");
            let error = ClientError::new(
                Code::Unauthorized,
                format!("the new token was refused ({})", e.reason()),
            )
            .field("token");
            return reply_error(&socket, &app, ack, &error).await;
        }
    };
    if user != session.user {
        tracing::info!(target: "audit", user = %session.user, other = %user, peer = %peer(&socket), "token refresh for another user refused");
        let error =
            ClientError::new(Code::Forbidden, "the new token is for another user").field("token");
        return reply_error(&socket, &app, ack, &error).await;
    }
    if grant.expires_at < session.grant().expires_at {
        let error = ClientError::new(
            Code::Unauthorized,
            "the new token expires before the current one",
        )
        .field("token");
        return reply_error(&socket, &app, ack, &error).await;
    }
    // The router first (it holds what the client is sent), then the grant (its expiry).
    let sid = socket.id;
    let scope = grant.scope.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    app.control_reliably(Control::Client(ClientCommand::Rescope {
        sid,
        scope,
        reply: tx,
    }))
    .await;
    let Ok(ended) = rx.await else {
        return reply_error(&socket, &app, ack, &busy()).await;
    };
    if let Some(error) = &ended {
        tracing::info!(target: "audit", user = %session.user, peer = %peer(&socket), code = %error.code, reason = %error.message, "subscription ended on token refresh");
    }
    session.set_grant(grant.clone());
    let payload = Refreshed {
        success: true,
        expires_at: grant.expires_at,
        devices: grant.scope.patterns().to_vec(),
    };
    ack.send(&payload, &patience(&app)).await;
}

/// An event this server does not know (a typo such as `log:subscibe`): say so rather than
/// leave the client waiting for an answer that never comes.
async fn on_unknown(socket: SocketRef, Event(name): Event, ack: Ack, State(app): State<AppState>) {
    settled(&socket).await;
    let Some(ack) = admit_event(&socket, &app, ack) else {
        return;
    };
    let shown: String = name.chars().take(64).collect();
    let error = ClientError::new(
        Code::UnknownEvent,
        format!(
            "unknown event {shown:?}; this server handles {}",
            event::FROM_CLIENT.join(", ")
        ),
    );
    reply_error(&socket, &app, ack, &error).await;
}

async fn on_disconnect(socket: SocketRef, State(app): State<AppState>) {
    tracing::info!(sid = %socket.id, "client disconnected");
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
