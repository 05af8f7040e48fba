//! Sessions of resumable subscriptions: a client that reconnects within `session_ttl_ms` with
//! `auth: { token, session, offset }` gets its subscription back and what it missed replayed,
//! without sending `log:subscribe` again.
//!
//! A session belongs to the user (`sub`) that created it and holds the subscription as the
//! client gave it. It lives while its connection does and `session_ttl_ms` after; an explicit
//! `log:unsubscribe` or an admin's disconnect ends it at once. With Redis the sessions live in
//! Redis, so any instance can resume any client; otherwise in this process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bus::redis::RedisBus;

/// Most sessions kept in memory (the oldest detached ones go first past it).
const MAX_MEMORY_SESSIONS: usize = 100_000;

/// What a session remembers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Saved {
    pub user: String,
    /// The `log:subscribe` payload, validated, without `since` / `tail`.
    pub subscription: Value,
}

/// id → (session, expiry once detached).
type MemoryStore = Arc<Mutex<HashMap<String, (Saved, Option<Instant>)>>>;

#[derive(Clone)]
pub enum Sessions {
    Memory(MemoryStore),
    Redis(Arc<RedisBus>),
}

/// A new session id: 128 random bits, URL-safe.
pub fn new_id() -> String {
    crate::auth::random_secret()[..22].to_owned()
}

impl Sessions {
    pub fn memory() -> Sessions {
        Sessions::Memory(Arc::default())
    }

    fn key(bus: &RedisBus, id: &str) -> String {
        format!("{}:session:{id}", bus.stream_key())
    }

    /// Create or replace session `id`, attached to a live connection (it does not expire
    /// while attached; with Redis it is refreshed by [`Sessions::keep_alive`]).
    pub async fn save(&self, id: &str, saved: &Saved, ttl: Duration) {
        match self {
            Sessions::Memory(map) => {
                let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
                if map.len() >= MAX_MEMORY_SESSIONS && !map.contains_key(id) {
                    let now = Instant::now();
                    map.retain(|_, (_, expires)| expires.is_none_or(|e| e > now));
                }
                if map.len() < MAX_MEMORY_SESSIONS || map.contains_key(id) {
                    map.insert(id.to_owned(), (saved.clone(), None));
                }
            }
            Sessions::Redis(bus) => {
                let text = serde_json::to_string(saved).unwrap_or_default();
                let mut conn = bus.connection();
                let set =
                    conn.pset_ex::<_, _, ()>(Self::key(bus, id), text, ttl.as_millis() as u64);
                if let Err(e) = tokio::time::timeout(Duration::from_secs(2), set).await {
                    tracing::warn!(error = %e, "could not save a session in redis");
                }
            }
        }
    }

    /// The connection went away: the session lives `ttl` more.
    pub async fn detach(&self, id: &str, ttl: Duration) {
        match self {
            Sessions::Memory(map) => {
                if let Some((_, expires)) =
                    map.lock().unwrap_or_else(|p| p.into_inner()).get_mut(id)
                {
                    *expires = Some(Instant::now() + ttl);
                }
            }
            Sessions::Redis(bus) => {
                let mut conn = bus.connection();
                let expire = conn.pexpire::<_, ()>(Self::key(bus, id), ttl.as_millis() as i64);
                let _ = tokio::time::timeout(Duration::from_secs(2), expire).await;
            }
        }
    }

    /// Session `id` if it exists, has not expired and belongs to `user`.
    pub async fn load(&self, id: &str, user: &str) -> Option<Saved> {
        let saved = match self {
            Sessions::Memory(map) => {
                let map = map.lock().unwrap_or_else(|p| p.into_inner());
                let (saved, expires) = map.get(id)?;
                if expires.is_some_and(|e| e <= Instant::now()) {
                    return None;
                }
                saved.clone()
            }
            Sessions::Redis(bus) => {
                let mut conn = bus.connection();
                let get = conn.get::<_, Option<String>>(Self::key(bus, id));
                let text = tokio::time::timeout(Duration::from_secs(2), get)
                    .await
                    .ok()?
                    .ok()??;
                serde_json::from_str(&text).ok()?
            }
        };
        (saved.user == user).then_some(saved)
    }

    /// End session `id` now (unsubscribe, or an admin's disconnect).
    pub async fn end(&self, id: &str) {
        match self {
            Sessions::Memory(map) => {
                map.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
            }
            Sessions::Redis(bus) => {
                let mut conn = bus.connection();
                let del = conn.del::<_, ()>(Self::key(bus, id));
                let _ = tokio::time::timeout(Duration::from_secs(2), del).await;
            }
        }
    }

    /// Redis: push back the expiry of the sessions of live connections (so a session outlives
    /// its instance's death by `ttl`, whenever that happens). Memory: drop expired sessions.
    pub async fn keep_alive(&self, ids: &[String], ttl: Duration) {
        match self {
            Sessions::Memory(map) => {
                let now = Instant::now();
                map.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|_, (_, expires)| expires.is_none_or(|e| e > now));
            }
            Sessions::Redis(bus) => {
                if ids.is_empty() {
                    return;
                }
                let mut pipe = redis::pipe();
                for id in ids {
                    pipe.pexpire(Self::key(bus, id), ttl.as_millis() as i64)
                        .ignore();
                }
                let mut conn = bus.connection();
                let run = pipe.query_async::<()>(&mut conn);
                let _ = tokio::time::timeout(Duration::from_secs(5), run).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_sessions_belong_to_their_user_and_expire_once_detached() {
        let s = Sessions::memory();
        let saved = Saved {
            user: "ann".into(),
            subscription: serde_json::json!({"deviceIds": ["d"]}),
        };
        s.save("id1", &saved, Duration::from_millis(50)).await;
        assert_eq!(s.load("id1", "ann").await, Some(saved.clone()));
        assert_eq!(s.load("id1", "bob").await, None, "not another user's");
        s.detach("id1", Duration::from_millis(50)).await;
        assert!(s.load("id1", "ann").await.is_some(), "within the ttl");
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(s.load("id1", "ann").await, None, "expired");
        s.save("id2", &saved, Duration::from_secs(1)).await;
        s.end("id2").await;
        assert_eq!(s.load("id2", "ann").await, None);
    }
}
