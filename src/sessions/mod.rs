//! Sessions of resumable subscriptions: a client that reconnects within `session_ttl_ms` with
//! `auth: { token, session, offset }` gets its subscription back and what it missed replayed,
//! without sending `log:subscribe` again.
//!
//! A session belongs to the user (`sub`) that created it and holds the subscription as the
//! client gave it. It is *attached* while its connection lives and *idle* for
//! `session_ttl_ms` after; an explicit `log:unsubscribe` or an admin's disconnect ends it at
//! once. With Redis the sessions live in Redis (`bus::redis::sessions`), so any instance can
//! resume any client; otherwise in this process (`bus::embedded::sessions`). Each backend
//! implements [`SessionStore`]; the rest of the server holds a [`Sessions`].
//!
//! Bounds, since a client can create sessions faster than they expire: per user
//! (`max_sessions_per_user` sessions, `max_user_subscription_bytes` of their subscriptions),
//! and per instance or, with Redis, per cluster (`max_sessions`, `max_sessions_bytes`). A new
//! session that would pass one ends the idle sessions nearest their expiry (the user's first);
//! if only attached sessions are left, the new one is refused (`too_many_sessions`).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Config;

/// What a session remembers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Saved {
    pub user: String,
    /// The `log:subscribe` payload, validated, without `since` / `tail`.
    pub subscription: Value,
}

impl Saved {
    /// What session `id` weighs against the bounds: its id, user and subscription.
    pub fn weight(&self, id: &str) -> usize {
        id.len() + self.user.len() + self.subscription.to_string().len()
    }
}

/// The bounds on sessions (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// `max_sessions_per_user`.
    pub per_user: usize,
    /// `max_user_subscription_bytes`.
    pub user_bytes: usize,
    /// `max_sessions`.
    pub total: usize,
    /// `max_sessions_bytes`.
    pub total_bytes: usize,
}

impl SessionLimits {
    pub fn from_config(config: &Config) -> SessionLimits {
        SessionLimits {
            per_user: config.history.max_sessions_per_user,
            user_bytes: config.routing.max_user_subscription_bytes,
            total: config.history.max_sessions,
            total_bytes: config.history.max_sessions_bytes,
        }
    }
}

/// Why a new session was refused: only attached sessions are left to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionRefused {
    #[error(
        "your sessions are all in use (max_sessions_per_user, max_user_subscription_bytes); end one with log:unsubscribe or subscribe without resume"
    )]
    User,
    #[error("this server holds as many sessions as it may (max_sessions, max_sessions_bytes)")]
    Instance,
}

/// How many sessions are kept, and what they weigh.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SessionTotals {
    pub sessions: u64,
    pub bytes: u64,
}

/// Where a backend keeps sessions. Each call may wait on the backend (Redis); an in-process
/// store answers at once.
pub trait SessionStore: Send + Sync {
    /// Create or replace session `id`, attached to a live connection; `ttl` is how long it
    /// outlives an instance that dies holding it.
    fn save<'a>(
        &'a self,
        id: &'a str,
        saved: &'a Saved,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), SessionRefused>>;
    /// The connection went away: the session lives `ttl` more.
    fn detach<'a>(&'a self, id: &'a str, ttl: Duration) -> BoxFuture<'a, ()>;
    /// Session `id` if it exists and has not expired (whoever it belongs to).
    fn load<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Option<Saved>>;
    /// End session `id` now.
    fn end<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ()>;
    /// Push back the expiry of the sessions of live connections (a store that sees its
    /// connections need not), and drop expired sessions.
    fn keep_alive<'a>(&'a self, ids: &'a [String], ttl: Duration) -> BoxFuture<'a, ()>;
    /// How many sessions are kept (this instance's, or the cluster's), if known.
    fn totals(&self) -> BoxFuture<'_, Option<SessionTotals>>;
}

/// The sessions, in whichever store the backend keeps them.
#[derive(Clone)]
pub struct Sessions(Arc<dyn SessionStore>);

/// A new session id: 128 random bits, URL-safe.
pub fn new_id() -> String {
    crate::auth::random_secret()[..22].to_owned()
}

impl Sessions {
    pub fn new(store: Arc<dyn SessionStore>) -> Sessions {
        Sessions(store)
    }

    /// Create or replace session `id`, attached to a live connection (it does not expire
    /// while attached; with Redis it is refreshed by [`Sessions::keep_alive`]). `ttl` is how
    /// long it outlives an instance that dies holding it.
    pub async fn save(&self, id: &str, saved: &Saved, ttl: Duration) -> Result<(), SessionRefused> {
        self.0.save(id, saved, ttl).await
    }

    /// The connection went away: the session lives `ttl` more.
    pub async fn detach(&self, id: &str, ttl: Duration) {
        self.0.detach(id, ttl).await;
    }

    /// Session `id` if it exists, has not expired and belongs to `user`.
    pub async fn load(&self, id: &str, user: &str) -> Option<Saved> {
        let saved = self.0.load(id).await?;
        (saved.user == user).then_some(saved)
    }

    /// End session `id` now (unsubscribe, or an admin's disconnect).
    pub async fn end(&self, id: &str) {
        self.0.end(id).await;
    }

    /// Redis: push back the expiry of the sessions of live connections. Both: drop expired
    /// sessions.
    pub async fn keep_alive(&self, ids: &[String], ttl: Duration) {
        self.0.keep_alive(ids, ttl).await;
    }

    /// How many sessions are kept (this instance's, or the cluster's with Redis).
    pub async fn totals(&self) -> Option<SessionTotals> {
        self.0.totals().await
    }
}
