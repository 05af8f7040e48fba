//! Engine.IO sessions opened without a token, bounded per address and in all.
//!
//! A bare `GET /socket.io/?EIO=4&transport=polling` (or a WebSocket upgrade without `sid`)
//! makes the transport create a session, whatever the client proves. Counting connections
//! does not bound that: one keep-alive connection can open session after session. So each
//! new session is counted here against its address (an IPv4 address or an IPv6 /64) before
//! the transport sees the request: at most `max_unauthenticated_per_ip` open at once, at most
//! `unauthenticated_sessions_per_second` new ones per second (a burst of the former), and
//! `max_unauthenticated_sessions` for the whole instance. A session leaves the count when
//! its Socket.IO handshake passes ([`SessionLedger::authenticated`]) or when the transport
//! ends it for not completing one in time (the ledger lets it go at the same moment).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::rate_limit::TokenBucket;

/// Why a new session was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRefusal {
    /// This address holds `max_unauthenticated_per_ip` sessions that have not authenticated.
    Open,
    /// This address opens them faster than `unauthenticated_sessions_per_second`.
    Rate,
    /// The instance holds `max_unauthenticated_sessions`.
    Instance,
}

impl SessionRefusal {
    pub fn reason(self) -> &'static str {
        match self {
            SessionRefusal::Open => "max_unauthenticated_per_ip",
            SessionRefusal::Rate => "unauthenticated_sessions_per_second",
            SessionRefusal::Instance => "max_unauthenticated_sessions",
        }
    }
}

/// The bounds (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct SessionBounds {
    pub per_address: usize,
    pub per_second: u32,
    pub total: usize,
    /// How long a session may stay unauthenticated before the transport ends it.
    pub lifetime: Duration,
}

struct Address {
    /// When each of its unauthenticated sessions ends at the latest, oldest first.
    open: VecDeque<Instant>,
    bucket: TokenBucket,
    last_opened: Instant,
}

#[derive(Default)]
struct Ledger {
    addresses: HashMap<IpAddr, Address>,
    /// Every session's deadline, oldest first (the lifetime is the same for all).
    deadlines: VecDeque<(Instant, IpAddr)>,
    open: usize,
}

pub struct SessionLedger {
    bounds: SessionBounds,
    ledger: Mutex<Ledger>,
    refused: AtomicU64,
}

/// Past this many addresses, those with nothing open and a full bucket are forgotten.
const FORGET_PAST: usize = 1024;

impl SessionLedger {
    pub fn new(bounds: SessionBounds) -> SessionLedger {
        SessionLedger {
            bounds,
            ledger: Mutex::default(),
            refused: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// New sessions refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Unauthenticated sessions open now (an upper bound: some may have ended early).
    pub fn open(&self) -> usize {
        let mut ledger = self.lock();
        ledger.expire(Instant::now());
        ledger.open
    }

    /// Count a new session from `address` (already reduced to its block), or refuse it.
    pub fn open_session(&self, address: IpAddr, now: Instant) -> Result<(), SessionRefusal> {
        let b = self.bounds;
        let mut ledger = self.lock();
        ledger.expire(now);
        if ledger.addresses.len() > FORGET_PAST {
            let idle_for = Duration::from_secs_f64(b.per_address as f64 / f64::from(b.per_second));
            ledger
                .addresses
                .retain(|_, a| !a.open.is_empty() || now.duration_since(a.last_opened) < idle_for);
        }
        let refusal = if ledger.open >= b.total {
            Some(SessionRefusal::Instance)
        } else {
            let burst = u32::try_from(b.per_address).unwrap_or(u32::MAX);
            let entry = ledger.addresses.entry(address).or_insert_with(|| Address {
                open: VecDeque::new(),
                bucket: TokenBucket::new(b.per_second, burst, now),
                last_opened: now,
            });
            if entry.open.len() >= b.per_address {
                Some(SessionRefusal::Open)
            } else if !entry.bucket.try_take(now) {
                Some(SessionRefusal::Rate)
            } else {
                let deadline = now + b.lifetime;
                entry.open.push_back(deadline);
                entry.last_opened = now;
                ledger.deadlines.push_back((deadline, address));
                ledger.open += 1;
                None
            }
        };
        match refusal {
            Some(r) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(r)
            }
            None => Ok(()),
        }
    }

    /// A session of `address` passed its handshake: it no longer counts.
    pub fn authenticated(&self, address: IpAddr) {
        let mut ledger = self.lock();
        if let Some(a) = ledger.addresses.get_mut(&address)
            && a.open.pop_front().is_some()
        {
            ledger.open -= 1;
        }
    }
}

impl Ledger {
    /// Let go of the sessions whose deadline has passed (the transport ended them, unless
    /// they authenticated and left the count already).
    fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, address)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if let Some(a) = self.addresses.get_mut(&address)
                && a.open.front().is_some_and(|d| *d <= deadline)
            {
                a.open.pop_front();
                self.open -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds() -> SessionBounds {
        SessionBounds {
            per_address: 3,
            per_second: 100,
            total: 5,
            lifetime: Duration::from_secs(10),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_holds_a_bounded_number_until_they_authenticate_or_expire() {
        let l = SessionLedger::new(bounds());
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        for _ in 0..3 {
            l.open_session(a, t0).unwrap();
        }
        assert_eq!(l.open_session(a, t0), Err(SessionRefusal::Open));
        l.authenticated(a);
        let t1 = t0 + Duration::from_millis(50);
        assert!(
            l.open_session(a, t1).is_ok(),
            "one authenticated: room for one"
        );
        assert_eq!(l.open_session(a, t1), Err(SessionRefusal::Open));
        // The transport ends them after their lifetime: room again.
        let later = t0 + Duration::from_secs(11);
        assert!(l.open_session(a, later).is_ok());
        assert_eq!(l.refused(), 2);
    }

    #[test]
    fn the_rate_and_the_instance_are_bounded_too() {
        let l = SessionLedger::new(SessionBounds {
            per_address: 4,
            per_second: 2,
            total: 6,
            lifetime: Duration::from_millis(100),
        });
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        // The burst is the per-address bound; then the rate.
        for i in 0..4 {
            l.open_session(a, t0 + Duration::from_millis(i)).unwrap();
        }
        let after = t0 + Duration::from_millis(600);
        assert!(l.open_session(a, after).is_ok(), "refilled a little");
        assert_eq!(l.open_session(a, after), Err(SessionRefusal::Rate));
        for n in 0..5 {
            let other = ip(&format!("10.0.1.{n}"));
            let got = l.open_session(other, after);
            assert_eq!(got.is_ok(), n < 5, "{n}: {got:?}");
        }
        assert_eq!(
            l.open_session(ip("10.0.2.1"), after),
            Err(SessionRefusal::Instance)
        );
    }
}
