//! Per-socket state that lives in the socket's extensions: who the client is, what its token
//! grants and until when (replaced by `auth:refresh`), its resumable session, the connection
//! slot it holds (released when the last reference to the session goes: the socket, and its
//! expiry watcher, which ends with the connection or an abandoned handshake), its event
//! budget, and whether socketioxide has marked it connected.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use crate::app::AppState;
use crate::auth::{AuthError, Scope};
use crate::connections::ConnectionSlot;
use crate::rate_limit::TokenBucket;

/// What the current token grants.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The token's `exp`, Unix seconds.
    pub expires_at: u64,
    pub scope: Arc<Scope>,
}

impl Grant {
    /// Who `token` names and what it grants (signature, expiry and claims checked).
    pub fn verify(app: &AppState, token: &str) -> Result<(String, Grant), AuthError> {
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
}

pub struct Session {
    /// The token's `sub`; a refreshed token must carry the same.
    pub user: String,
    grant: Mutex<Grant>,
    /// Wakes the expiry watcher when the grant changes or the socket goes.
    pub changed: Notify,
    /// Held while an `auth:refresh` is applied.
    pub refreshing: tokio::sync::Mutex<()>,
    closed: std::sync::atomic::AtomicBool,
    /// The session of this connection's resumable subscription, if any.
    resume: Mutex<Option<String>>,
    /// A session to resume once connected: (id, offset), from the handshake's `auth`.
    pub resume_request: Mutex<Option<(String, Option<String>)>>,
    _slot: ConnectionSlot,
    events: Mutex<EventBudget>,
    /// Set once socketioxide has marked the socket connected (see [`Session::connected`]).
    connected: watch::Sender<bool>,
}

struct EventBudget {
    bucket: TokenBucket,
    last_notice: Option<Instant>,
    /// Refusals in the current flood window, and when it began.
    refusals: u32,
    window_start: Instant,
}

/// A socket refused this many events within [`FLOOD_WINDOW`] is disconnected.
pub const FLOOD_REFUSALS: u32 = 200;
pub const FLOOD_WINDOW: Duration = Duration::from_secs(10);

pub enum EventAdmission {
    Allowed,
    /// Refused; `notify` is true at most once a second so a flood is not answered by a flood.
    Refused {
        notify: bool,
    },
    /// Refused, and the socket keeps flooding: disconnect it.
    Abusive,
}

impl Session {
    pub fn new(
        user: String,
        grant: Grant,
        slot: ConnectionSlot,
        events_per_second: u32,
    ) -> Session {
        Session {
            user,
            grant: Mutex::new(grant),
            changed: Notify::new(),
            refreshing: tokio::sync::Mutex::new(()),
            closed: Default::default(),
            resume: Mutex::new(None),
            resume_request: Mutex::new(None),
            _slot: slot,
            events: Mutex::new(EventBudget {
                bucket: TokenBucket::new(
                    events_per_second,
                    events_per_second.saturating_mul(2),
                    Instant::now(),
                ),
                last_notice: None,
                refusals: 0,
                window_start: Instant::now(),
            }),
            connected: watch::Sender::new(false),
        }
    }

    /// socketioxide has marked the socket connected (its connect handler runs only after).
    pub fn mark_connected(&self) {
        self.connected.send_replace(true);
    }

    /// Wait until [`Session::mark_connected`]: socketioxide sends CONNECT and marks the
    /// socket connected just after, refusing emits in between as if it were closed, and an
    /// event the client sends as soon as it reads CONNECT can be handled in between.
    pub async fn connected(&self) {
        let mut marked = self.connected.subscribe();
        let _ = marked.wait_for(|connected| *connected).await;
    }

    pub fn grant(&self) -> Grant {
        self.grant.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A refreshed token is in force.
    pub fn set_grant(&self, grant: Grant) {
        *self.grant.lock().unwrap_or_else(|p| p.into_inner()) = grant;
        self.changed.notify_one();
    }

    /// The socket is gone: the expiry watcher stops.
    pub fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.changed.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// This connection's session id, if its subscription is resumable.
    pub fn resume_id(&self) -> Option<String> {
        self.resume
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Set (or clear) this connection's session id; returns the previous one.
    pub fn set_resume_id(&self, id: Option<String>) -> Option<String> {
        std::mem::replace(
            &mut *self.resume.lock().unwrap_or_else(|p| p.into_inner()),
            id,
        )
    }

    pub fn admit_event(&self, now: Instant) -> EventAdmission {
        let mut budget = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if budget.bucket.try_take(now) {
            return EventAdmission::Allowed;
        }
        if now.saturating_duration_since(budget.window_start) > FLOOD_WINDOW {
            budget.window_start = now;
            budget.refusals = 0;
        }
        budget.refusals += 1;
        if budget.refusals > FLOOD_REFUSALS {
            return EventAdmission::Abusive;
        }
        let notify = budget
            .last_notice
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if notify {
            budget.last_notice = Some(now);
        }
        EventAdmission::Refused { notify }
    }
}
