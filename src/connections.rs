//! The table of connected clients that the admin API reads, and the admission rules
//! (global and per-user connection limits) enforced at handshake.
//!
//! A slot is taken in the handshake middleware and released by [`ConnectionSlot`]'s `Drop`,
//! so a handshake that fails half-way can never leak a slot.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::value::RawValue;

use crate::protocol::ConnectionView;

/// What the admin API shows about one connection.
#[derive(Debug)]
pub struct ConnectionInfo {
    pub id: String,
    pub user_id: String,
    pub ip: String,
    pub connected_at: SystemTime,
    /// Logs delivered to this client (updated by the router).
    pub message_count: AtomicU64,
    /// Logs meant for this client and dropped, every reason (updated by the router).
    pub dropped: AtomicU64,
    /// Bytes waiting in its socket's queue, as the router last accounted them.
    pub queued_bytes: AtomicU64,
    /// 0: not known yet, 1: long-polling, 2: WebSocket (as the router last saw it).
    pub transport: std::sync::atomic::AtomicU8,
    /// Its place in the `system:stats` rounds (see `system_stats`).
    pub stats: crate::system_stats::StatsTicket,
    /// The client's current subscription as accepted, for display. Written by the router
    /// thread when a subscription changes (rarely), read by the admin API. Kept as its JSON
    /// text: a parsed tree costs every connection about a kilobyte more.
    pub subscription: Mutex<Option<Box<RawValue>>>,
}

impl ConnectionInfo {
    /// Record the subscription the admin API shows (`None` once it ended).
    pub fn set_subscription(&self, subscription: Option<Box<RawValue>>) {
        *self.subscription.lock().unwrap_or_else(|p| p.into_inner()) = subscription;
    }

    /// What the router saw of its socket's queue and transport.
    pub fn show_queue(&self, queued: u64, websocket: Option<bool>) {
        use std::sync::atomic::Ordering::Relaxed;
        self.queued_bytes.store(queued, Relaxed);
        if let Some(ws) = websocket {
            self.transport.store(if ws { 2 } else { 1 }, Relaxed);
        }
    }

    pub fn view(&self, instance: &str) -> ConnectionView {
        use std::sync::atomic::Ordering::Relaxed;
        let at: time::OffsetDateTime = self.connected_at.into();
        ConnectionView {
            id: self.id.clone(),
            user_id: self.user_id.clone(),
            ip: self.ip.clone(),
            connected_at: at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            subscription: self.subscription.lock().ok().and_then(|s| {
                s.as_ref()
                    .and_then(|raw| serde_json::from_str(raw.get()).ok())
            }),
            message_count: self.message_count.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            queued_bytes: self.queued_bytes.load(Relaxed),
            transport: match self.transport.load(Relaxed) {
                1 => Some("polling".to_owned()),
                2 => Some("websocket".to_owned()),
                _ => None,
            },
            instance: instance.to_owned(),
        }
    }
}

#[derive(Default)]
struct Inner {
    /// Slots held, including handshakes not yet connected.
    slots: usize,
    per_user: HashMap<String, usize>,
    connected: HashMap<String, Arc<ConnectionInfo>>,
}

/// Shared, cheap to clone.
#[derive(Clone)]
pub struct Connections {
    inner: Arc<Mutex<Inner>>,
    max_total: usize,
    max_per_user: usize,
}

/// Why a handshake was refused a slot. The `Display` text is what the client sees.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdmissionError {
    #[error("Connection limit reached")]
    Total,
    #[error("Connection limit reached for this user")]
    PerUser,
}

/// A held connection slot; dropping it frees the slot.
pub struct ConnectionSlot {
    connections: Connections,
    user_id: String,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let Ok(mut inner) = self.connections.inner.lock() else {
            return;
        };
        inner.slots = inner.slots.saturating_sub(1);
        if let Some(n) = inner.per_user.get_mut(&self.user_id) {
            *n -= 1;
            if *n == 0 {
                inner.per_user.remove(&self.user_id);
            }
        }
    }
}

impl Connections {
    pub fn new(max_total: usize, max_per_user: usize) -> Self {
        Connections {
            inner: Arc::default(),
            max_total,
            max_per_user,
        }
    }

    pub fn max_total(&self) -> usize {
        self.max_total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserve a slot for `user_id`, or say which limit is reached.
    pub fn admit(&self, user_id: &str) -> Result<ConnectionSlot, AdmissionError> {
        let mut inner = self.lock();
        if inner.slots >= self.max_total {
            return Err(AdmissionError::Total);
        }
        let per_user = inner.per_user.get(user_id).copied().unwrap_or(0);
        if per_user >= self.max_per_user {
            return Err(AdmissionError::PerUser);
        }
        inner.slots += 1;
        *inner.per_user.entry(user_id.to_owned()).or_default() += 1;
        Ok(ConnectionSlot {
            connections: self.clone(),
            user_id: user_id.to_owned(),
        })
    }

    pub fn insert(&self, info: Arc<ConnectionInfo>) {
        self.lock().connected.insert(info.id.clone(), info);
    }

    pub fn remove(&self, id: &str) {
        self.lock().connected.remove(id);
    }

    pub fn len(&self) -> usize {
        self.lock().connected.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn snapshot(&self) -> Vec<Arc<ConnectionInfo>> {
        self.lock().connected.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_released_on_drop() {
        let c = Connections::new(2, 1);
        let a = c.admit("alice").unwrap();
        assert_eq!(c.admit("alice").err(), Some(AdmissionError::PerUser));
        let b = c.admit("bob").unwrap();
        assert_eq!(c.admit("carol").err(), Some(AdmissionError::Total));
        drop(a);
        let _c2 = c.admit("alice").unwrap();
        drop(b);
    }
}
