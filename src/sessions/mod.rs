//! Sessions of resumable subscriptions: a client that reconnects within `session_ttl_ms` with
//! `auth: { token, session, offset }` gets its subscription back and what it missed replayed,
//! without sending `log:subscribe` again.
//!
//! A session belongs to the user (`sub`) that created it and holds the subscription as the
//! client gave it. It is *attached* while its connection lives and *idle* for
//! `session_ttl_ms` after; an explicit `log:unsubscribe` or an admin's disconnect ends it at
//! once. With Redis the sessions live in Redis ([`redis`]), so any instance can resume any
//! client; otherwise in this process ([`memory`]).
//!
//! Bounds, since a client can create sessions faster than they expire: per user
//! (`max_sessions_per_user` sessions, `max_user_subscription_bytes` of their subscriptions),
//! and per instance or, with Redis, per cluster (`max_sessions`, `max_sessions_bytes`). A new
//! session that would pass one ends the idle sessions nearest their expiry (the user's first);
//! if only attached sessions are left, the new one is refused (`too_many_sessions`).

pub mod journal;
pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bus::redis::RedisBus;
use crate::config::Config;
use memory::MemorySessions;
use redis::RedisSessions;

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

#[derive(Clone)]
pub enum Sessions {
    Memory(Arc<MemorySessions>),
    Redis(Arc<RedisSessions>),
}

/// A new session id: 128 random bits, URL-safe.
pub fn new_id() -> String {
    crate::auth::random_secret()[..22].to_owned()
}

impl Sessions {
    pub fn memory(limits: SessionLimits) -> Sessions {
        Sessions::Memory(Arc::new(MemorySessions::new(limits)))
    }

    /// In this process, and in `journal` (beside the history on disk) with the sessions it
    /// held at start.
    pub fn durable(
        limits: SessionLimits,
        journal: journal::Journal,
        sessions: Vec<(String, Saved)>,
        ttl: Duration,
    ) -> Sessions {
        Sessions::Memory(Arc::new(MemorySessions::durable(
            limits,
            journal,
            sessions,
            ttl,
            Instant::now(),
        )))
    }

    pub fn redis(bus: Arc<RedisBus>, limits: SessionLimits) -> Sessions {
        Sessions::Redis(Arc::new(RedisSessions::new(bus, limits)))
    }

    /// Create or replace session `id`, attached to a live connection (it does not expire
    /// while attached; with Redis it is refreshed by [`Sessions::keep_alive`]). `ttl` is how
    /// long it outlives an instance that dies holding it.
    pub async fn save(&self, id: &str, saved: &Saved, ttl: Duration) -> Result<(), SessionRefused> {
        match self {
            Sessions::Memory(m) => m.save(id, saved, Instant::now()),
            Sessions::Redis(r) => r.save(id, saved, ttl).await,
        }
    }

    /// The connection went away: the session lives `ttl` more.
    pub async fn detach(&self, id: &str, ttl: Duration) {
        match self {
            Sessions::Memory(m) => m.detach(id, ttl, Instant::now()),
            Sessions::Redis(r) => r.detach(id, ttl).await,
        }
    }

    /// Session `id` if it exists, has not expired and belongs to `user`.
    pub async fn load(&self, id: &str, user: &str) -> Option<Saved> {
        let saved = match self {
            Sessions::Memory(m) => m.load(id, Instant::now()),
            Sessions::Redis(r) => r.load(id).await,
        }?;
        (saved.user == user).then_some(saved)
    }

    /// End session `id` now (unsubscribe, or an admin's disconnect).
    pub async fn end(&self, id: &str) {
        match self {
            Sessions::Memory(m) => m.end(id),
            Sessions::Redis(r) => r.end(id).await,
        }
    }

    /// Redis: push back the expiry of the sessions of live connections. Both: drop expired
    /// sessions.
    pub async fn keep_alive(&self, ids: &[String], ttl: Duration) {
        match self {
            Sessions::Memory(m) => m.prune(Instant::now()),
            Sessions::Redis(r) => r.keep_alive(ids, ttl).await,
        }
    }

    /// How many sessions are kept (this instance's, or the cluster's with Redis).
    pub async fn totals(&self) -> Option<SessionTotals> {
        match self {
            Sessions::Memory(m) => Some(m.totals()),
            Sessions::Redis(r) => r.totals().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_belong_to_their_user_and_expire_once_detached() {
        let s = Sessions::memory(SessionLimits {
            per_user: 10,
            user_bytes: 1 << 20,
            total: 100,
            total_bytes: 1 << 20,
        });
        let saved = Saved {
            user: "ann".into(),
            subscription: serde_json::json!({"deviceIds": ["d"]}),
        };
        let ttl = Duration::from_millis(50);
        s.save("id1", &saved, ttl).await.unwrap();
        assert_eq!(s.load("id1", "ann").await, Some(saved.clone()));
        assert_eq!(s.load("id1", "bob").await, None, "not another user's");
        s.detach("id1", ttl).await;
        assert!(s.load("id1", "ann").await.is_some(), "within the ttl");
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(s.load("id1", "ann").await, None, "expired");
        s.save("id2", &saved, ttl).await.unwrap();
        s.end("id2").await;
        assert_eq!(s.load("id2", "ann").await, None);
    }
}
