//! Packets for sockets that cannot take them yet, held in order until they can.
//!
//! Two reasons a socket refuses a packet that must not be lost:
//! - **Not marked connected yet.** A client is registered with the router during its
//!   handshake, before socketioxide sends CONNECT, so that nothing it asks right after
//!   CONNECT finds it missing. But socketioxide marks a socket connected only after sending
//!   CONNECT, and refuses every emit before that as if the socket were closed. An event the
//!   router sent a client in that window (a `device:status` for every client in scope, say)
//!   was lost without a trace (an `e2e_redis` test lost its `device:status` that way). A
//!   socket that is not connected within [`HOLD_AT_MOST`] is really closed (or its
//!   handshake failed): what it held is let go, as a closed socket's packets always were.
//! - **Its queue is full, and the packet is an answer, not logs** (see
//!   [`Packet::waits_for_room`]): logs refused by a full queue are dropped and reported, but
//!   a `log:subscribed` refused at the end of a replay left the client waiting for ever.
//!   The emitter tries it again every [`RECHECK_EVERY`], for as long as the client may stay
//!   behind (`slow_consumer_timeout_ms`; past that it is cut).
//!
//! Every later packet for a socket that holds some waits behind them, so order is kept; at
//! most [`MAX_HELD`] per socket (beyond that they are refused as if the queue were full).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;

use super::outlet::Packet;

/// How long a socket's packets wait for it to be marked connected.
pub const HOLD_AT_MOST: Duration = Duration::from_secs(1);

/// How often held sockets are looked at again.
pub const RECHECK_EVERY: Duration = Duration::from_millis(2);

/// Packets held for one socket at most.
pub const MAX_HELD: usize = 4096;

/// What the holding needs of a socket (a trait so that it can be tested without one).
pub trait Target {
    fn sid(&self) -> Sid;
    fn connected(&self) -> bool;
}

impl Target for SocketRef {
    fn sid(&self) -> Sid {
        self.id
    }
    fn connected(&self) -> bool {
        // The socket's own flag (`SocketRef` derefs to it).
        std::ops::Deref::deref(self).connected()
    }
}

struct Held<S> {
    socket: S,
    packets: Vec<Packet>,
    since: Instant,
}

/// Sockets that refused packets they may take later, with those packets in order.
pub struct Waiting<S> {
    held: HashMap<Sid, Held<S>>,
}

/// What [`Waiting::release`] found.
pub struct Released<S> {
    /// Sockets now connected, each with its packets in the order they were handed on, and
    /// since when it has held them.
    pub ready: Vec<(S, Vec<Packet>, Instant)>,
    /// Packets of sockets given up on (not connected within [`HOLD_AT_MOST`]).
    pub given_up: usize,
}

impl<S: Target> Waiting<S> {
    pub fn new() -> Waiting<S> {
        Waiting {
            held: HashMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Whether packets for `sid` are held (a later packet for it must wait behind them).
    pub fn holds(&self, sid: Sid) -> bool {
        !self.held.is_empty() && self.held.contains_key(&sid)
    }

    /// Hold `packet` for `socket`, after what is held for it already (held since `since`,
    /// if nothing is); give it back if the socket holds [`MAX_HELD`] already.
    pub fn hold(&mut self, socket: S, packet: Packet, since: Instant) -> Result<(), Packet> {
        let held = self.held.entry(socket.sid()).or_insert_with(|| Held {
            socket,
            packets: Vec::new(),
            since,
        });
        if held.packets.len() >= MAX_HELD {
            return Err(packet);
        }
        held.packets.push(packet);
        Ok(())
    }

    /// Take the sockets that are connected now, and let go of those held too long.
    pub fn release(&mut self, now: Instant) -> Released<S> {
        let mut released = Released {
            ready: Vec::new(),
            given_up: 0,
        };
        if self.held.is_empty() {
            return released;
        }
        let done: Vec<Sid> = self
            .held
            .iter()
            .filter(|(_, h)| {
                h.socket.connected() || now.saturating_duration_since(h.since) >= HOLD_AT_MOST
            })
            .map(|(sid, _)| *sid)
            .collect();
        for sid in done {
            let Some(h) = self.held.remove(&sid) else {
                continue;
            };
            if h.socket.connected() {
                released.ready.push((h.socket, h.packets, h.since));
            } else {
                released.given_up += h.packets.len();
            }
        }
        released
    }
}

impl<S: Target> Default for Waiting<S> {
    fn default() -> Self {
        Waiting::new()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::delivery::outlet::Data;
    use serde_json::value::RawValue;

    #[derive(Clone)]
    struct Fake {
        sid: Sid,
        connected: Arc<AtomicBool>,
    }

    impl Target for Fake {
        fn sid(&self) -> Sid {
            self.sid
        }
        fn connected(&self) -> bool {
            self.connected.load(Ordering::Relaxed)
        }
    }

    fn fake() -> Fake {
        Fake {
            sid: Sid::new(),
            connected: Arc::new(AtomicBool::new(false)),
        }
    }

    fn packet(n: u32) -> Packet {
        let raw = RawValue::from_string(n.to_string()).unwrap();
        Packet::event("device:status", Data::Owned(raw))
    }

    #[test]
    fn packets_wait_for_the_socket_to_connect_and_go_in_order() {
        let t0 = Instant::now();
        let mut c = Waiting::new();
        let s = fake();
        let other = fake();
        assert!(!c.holds(s.sid));
        assert!(c.hold(s.clone(), packet(1), t0).is_ok());
        assert!(c.hold(s.clone(), packet(2), t0).is_ok());
        assert!(c.holds(s.sid), "later packets queue behind the first");
        assert!(!c.holds(other.sid));
        let r = c.release(t0 + Duration::from_millis(10));
        assert!(r.ready.is_empty(), "not connected yet");
        assert_eq!(r.given_up, 0);
        s.connected.store(true, Ordering::Relaxed);
        let r = c.release(t0 + Duration::from_millis(20));
        assert_eq!(r.ready.len(), 1);
        let order: Vec<&str> = r.ready[0].1.iter().map(|p| p.data().get()).collect();
        assert_eq!(order, ["1", "2"]);
        assert!(c.is_empty());
    }

    #[test]
    fn a_socket_that_never_connects_is_let_go() {
        let t0 = Instant::now();
        let mut c = Waiting::new();
        let s = fake();
        assert!(c.hold(s.clone(), packet(1), t0).is_ok());
        assert!(
            c.hold(s.clone(), packet(2), t0 + Duration::from_millis(900))
                .is_ok()
        );
        let r = c.release(t0 + HOLD_AT_MOST - Duration::from_millis(1));
        assert_eq!((r.ready.len(), r.given_up), (0, 0));
        let r = c.release(t0 + HOLD_AT_MOST);
        assert_eq!((r.ready.len(), r.given_up), (0, 2));
        assert!(c.is_empty());
    }

    #[test]
    fn a_socket_holds_a_bounded_number_of_packets() {
        let t0 = Instant::now();
        let mut c = Waiting::new();
        let s = fake();
        for n in 0..MAX_HELD as u32 {
            assert!(c.hold(s.clone(), packet(n), t0).is_ok());
        }
        let refused = c.hold(s.clone(), packet(0), t0).unwrap_err();
        assert_eq!(refused.data().get(), "0", "given back, not lost here");
        s.connected.store(true, Ordering::Relaxed);
        let r = c.release(t0);
        assert_eq!(r.ready[0].1.len(), MAX_HELD);
        assert_eq!(r.ready[0].2, t0, "held since the first");
    }
}
