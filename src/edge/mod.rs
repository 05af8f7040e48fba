//! The network edge: every accepted TCP connection, before any HTTP or Socket.IO parsing.
//!
//! Two things are only possible here:
//!
//! - **Limits before authentication.** Connections from one IP address that have not
//!   authenticated (a Socket.IO handshake that passed, or a request with a valid key) are
//!   counted; past `max_unauthenticated_per_ip` a new one is closed as soon as it is accepted,
//!   before a byte of it is read.
//! - **Knowing how much a socket has queued, in bytes.** socketioxide queues packets per
//!   socket but does not say how many bytes wait in its queue. What it *has written* is
//!   visible here: each connection counts the bytes written to the network into the
//!   [`Meter`] of the socket it carries (a WebSocket, from its upgrade on), and long-polling
//!   response bodies are counted by [`track`]. The delivery side counts the bytes it hands
//!   to the socket; the difference is what is queued (see `delivery::Client`). Counting the
//!   payload only (no framing) on the delivery side keeps that figure a lower bound that
//!   never drifts upwards.
//!
//! A [`Meter`] can also *close* its connection: a socket whose queue is full cannot even be
//! sent a disconnect packet, so a slow consumer is cut at the transport.
//!
//! The files: this one (the shared state, connections and their counts), [`listener`] (the
//! TCP listener and the metered stream), [`track`] (per request: Socket.IO requests of an
//! established socket, long-polling bodies), [`sessions`] (Engine.IO sessions opened
//! without a token, bounded per address and in all) and [`tls`] (HTTPS and WSS).

pub mod client_addr;
pub mod listener;
pub mod origin;
pub mod sessions;
pub mod tls;
pub mod track;

pub use listener::{EdgeIo, EdgeListener, MeteredStream};
pub use track::track;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use socketioxide::socket::Sid;

use crate::config::EdgeConfig;
use sessions::{SessionBounds, SessionLedger};

/// Bytes written to the network for one socket, and a switch that cuts its connection.
#[derive(Debug, Default)]
pub struct Meter {
    written: AtomicU64,
    closed: AtomicBool,
    /// The tasks reading and writing the connection, woken to notice a close.
    reader: AtomicWaker,
    writer: AtomicWaker,
}

impl Meter {
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    fn add(&self, n: usize) {
        self.written.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Close the connection carrying this socket (its next read or write fails).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.reader.wake();
        self.writer.wake();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

/// The state shared by the listener and every connection.
pub struct Edge {
    state: Mutex<EdgeState>,
    max_unauthenticated_per_ip: usize,
    /// What a Socket.IO connection may read before it authenticates.
    socket_read_budget: u64,
    /// How long a connection may stay without authenticating (HTTP has no timer of its own
    /// here: without this, a connection that sends nothing would be kept forever).
    unauthenticated_timeout: Duration,
    refused: AtomicU64,
    /// Engine.IO sessions opened without a token.
    pub sessions: SessionLedger,
    /// Reverse proxies whose forwarding headers name the client (`trusted_proxies`).
    pub trusted: client_addr::TrustedProxies,
}

#[derive(Default)]
struct EdgeState {
    unauthenticated: HashMap<IpAddr, usize>,
    meters: HashMap<Sid, Arc<Meter>>,
    last_warning: Option<Instant>,
}

/// One accepted connection.
pub struct Conn {
    ip: IpAddr,
    authenticated: AtomicBool,
    /// Bytes read while unauthenticated, and how many are allowed (a Socket.IO connection
    /// needs a few KB to authenticate; HTTP requests are bounded by `max_body_bytes`).
    read: AtomicU64,
    read_budget: AtomicU64,
    /// The socket this connection carries once it is a WebSocket.
    meter: OnceLock<Arc<Meter>>,
    edge: Arc<Edge>,
}

impl Conn {
    /// The peer proved who it is: it no longer counts against its IP's unauthenticated
    /// connections.
    pub fn authenticate(&self) {
        if !self.authenticated.swap(true, Ordering::Relaxed) {
            self.edge.release_unauthenticated(self.ip);
        }
    }

    /// Until it authenticates, this connection may read `budget` bytes in all.
    fn limit_unauthenticated_reads(&self, budget: u64) {
        self.read_budget.fetch_min(budget, Ordering::Relaxed);
    }

    /// Count `n` bytes read; `false` once an unauthenticated connection is over its budget.
    fn read_allowed(&self, n: usize) -> bool {
        if self.authenticated.load(Ordering::Relaxed) {
            return true;
        }
        let total = self.read.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        total <= self.read_budget.load(Ordering::Relaxed)
    }

    /// This connection carries `meter`'s socket from now on (a WebSocket).
    pub fn carry(&self, meter: Arc<Meter>) {
        let _ = self.meter.set(meter);
    }
}

/// What axum hands each request about its connection (`ConnectInfo<Peer>`); [`track`] also
/// provides the plain `ConnectInfo<SocketAddr>`.
#[derive(Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub conn: Arc<Conn>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

impl Edge {
    /// The edge of `config`; an Engine.IO session that has not authenticated within
    /// `session_lifetime` is ended by the transport.
    pub fn new(config: &EdgeConfig, session_lifetime: Duration) -> Arc<Edge> {
        Arc::new(Edge {
            state: Mutex::default(),
            max_unauthenticated_per_ip: config.max_unauthenticated_per_ip,
            socket_read_budget: config.max_unauthenticated_bytes as u64,
            unauthenticated_timeout: Duration::from_millis(config.unauthenticated_timeout_ms),
            refused: AtomicU64::new(0),
            trusted: client_addr::TrustedProxies::parse(&config.trusted_proxies)
                .unwrap_or_default(),
            sessions: SessionLedger::new(SessionBounds {
                per_address: config.max_unauthenticated_per_ip,
                per_second: config.unauthenticated_sessions_per_second,
                total: config.max_unauthenticated_sessions,
                lifetime: session_lifetime,
            }),
        })
    }

    /// A Socket.IO handshake from `ip` passed: its Engine.IO session no longer counts as
    /// unauthenticated.
    pub fn session_authenticated(&self, ip: IpAddr) {
        self.sessions.authenticated(address_block(ip));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EdgeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connections closed at accept because their IP had too many unauthenticated ones.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The meter of socket `sid` (created on first use; [`Edge::forget`] at disconnect).
    pub fn meter(&self, sid: Sid) -> Arc<Meter> {
        self.lock().meters.entry(sid).or_default().clone()
    }

    fn existing_meter(&self, sid: Sid) -> Option<Arc<Meter>> {
        self.lock().meters.get(&sid).cloned()
    }

    pub fn forget(&self, sid: Sid) {
        self.lock().meters.remove(&sid);
    }

    /// Count a new connection from `ip`; `false` when it is one too many.
    fn admit(&self, ip: IpAddr) -> bool {
        // A trusted proxy carries many clients: each is counted by its own address, per
        // request (see `track`).
        if self.trusted.contains(ip) {
            return true;
        }
        let ip = address_block(ip);
        let mut state = self.lock();
        let count = state.unauthenticated.entry(ip).or_default();
        if *count >= self.max_unauthenticated_per_ip {
            drop(state);
            self.refused.fetch_add(1, Ordering::Relaxed);
            self.warn_at_most_every_10s(|| {
                tracing::warn!(%ip, limit = self.max_unauthenticated_per_ip, "too many unauthenticated connections from one address; new ones are closed (max_unauthenticated_per_ip)");
            });
            return false;
        }
        *count += 1;
        true
    }

    /// Run `warn` unless a warning of the edge was logged in the last 10 s (a flood is not
    /// answered by a flood of log lines).
    fn warn_at_most_every_10s(&self, warn: impl FnOnce()) {
        let now = Instant::now();
        let mut state = self.lock();
        if state
            .last_warning
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
        {
            state.last_warning = Some(now);
            drop(state);
            warn();
        }
    }

    fn release_unauthenticated(&self, ip: IpAddr) {
        let ip = address_block(ip);
        let mut state = self.lock();
        if let Some(count) = state.unauthenticated.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                state.unauthenticated.remove(&ip);
            }
        }
    }
}

/// What one client is counted as: its IPv4 address, or its IPv6 /64 (one host usually holds a
/// whole /64); an IPv4-mapped IPv6 address counts as the IPv4 one.
fn address_block(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthenticated_connections_are_counted_per_ip_and_released() {
        let config = EdgeConfig {
            max_unauthenticated_per_ip: 2,
            ..EdgeConfig::default()
        };
        let edge = Edge::new(&config, Duration::from_secs(10));
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(address_block(v6a), address_block(v6b), "one /64");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_block(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(edge.admit(ip));
        assert!(edge.admit(ip));
        assert!(!edge.admit(ip), "a third is refused");
        assert!(edge.admit(other), "another address is not affected");
        edge.release_unauthenticated(ip);
        assert!(
            edge.admit(ip),
            "room again once one authenticated or closed"
        );
        assert_eq!(edge.refused(), 1);
    }
}
