//! Packets for sockets that cannot take them yet, parked in order until they can.
//!
//! Two reasons a socket refuses a packet that must not be lost:
//! - **Not marked connected yet.** A client is registered with the router during its
//!   handshake, before socketioxide sends CONNECT, so that nothing it asks right after
//!   CONNECT finds it missing; but socketioxide marks a socket connected only after sending
//!   CONNECT, and refuses every emit before that as if the socket were closed. A socket that
//!   is not connected within [`PARK_AT_MOST`] of parking its first packet is really closed
//!   (or its handshake failed), and so is one that refuses as closed for that long: what it
//!   parked is let go, as a closed socket's packets always are.
//! - **Its queue is full, and the packet is an answer, not logs** (see
//!   [`Packet::waits_for_room`]): logs refused by a full queue are dropped and reported,
//!   but an answer (`log:subscribed`, an acknowledgement's companion event) is what a client
//!   waits for. It waits for room for as long as the client may stay behind
//!   (`slow_consumer_timeout_ms`; past that it is cut), then it is refused like a log.
//!
//! Order: every later packet for a socket that has some parked waits behind them; replays
//! and handler answers, which put their packets in the socket's queue directly, wait while
//! it has anything parked ([`ParkedMarks`]). Except logs behind an answer that waits for
//! room ([`Waiting::blocked`]): the queue is full, so they are refused and counted at once,
//! as they would be with nothing parked.
//!
//! Cost: at most [`MAX_PARKED`] packets per socket (beyond that they are refused as if the
//! queue were full). Every [`RECHECK_EVERY`] only the first packet of each parking socket
//! is tried, and once more for each new packet that comes for it, so a socket that stays
//! full costs one try per tick and per packet sent to it, never one per packet parked.
//! Passes over everything a socket parked happen once per parking: when logs parked before
//! connect are refused because an answer ahead of them finds no room, and when a socket is
//! let go.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;

use super::packet::{Packet, Unsent, emit};

/// How long a socket's packets wait for it to be marked connected (or to stop refusing as
/// closed), from when it parked its first packet.
pub const PARK_AT_MOST: Duration = Duration::from_secs(1);

/// How often parking sockets are looked at again.
pub const RECHECK_EVERY: Duration = Duration::from_millis(2);

/// Packets parked for one socket at most.
pub const MAX_PARKED: usize = 4096;

/// What parking needs of a socket (a trait so that it can be tested without one).
pub trait Target {
    fn sid(&self) -> Sid;
    fn connected(&self) -> bool;
    fn emit(&self, packet: &Packet) -> Result<(), Unsent>;
}

impl Target for SocketRef {
    fn sid(&self) -> Sid {
        self.id
    }
    fn connected(&self) -> bool {
        // The socket's own flag (`SocketRef` derefs to it).
        std::ops::Deref::deref(self).connected()
    }
    fn emit(&self, packet: &Packet) -> Result<(), Unsent> {
        emit(self, packet)
    }
}

/// Which sockets have packets parked, for those who write to sockets directly (replays,
/// handler answers): they wait while their socket has anything parked, so they do not
/// overtake it.
#[derive(Default)]
pub struct ParkedMarks {
    count: AtomicUsize,
    sids: Mutex<HashSet<Sid>>,
}

impl ParkedMarks {
    pub fn has_parked(&self, sid: Sid) -> bool {
        self.count.load(Ordering::Acquire) > 0 && self.lock().contains(&sid)
    }

    fn set(&self, sid: Sid, parked: bool) {
        let mut sids = self.lock();
        if parked {
            sids.insert(sid);
        } else {
            sids.remove(&sid);
        }
        self.count.store(sids.len(), Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Sid>> {
        self.sids.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Parked<S> {
    socket: S,
    packets: VecDeque<Packet>,
    /// How many of `packets` do not wait for room (logs, drop reports): parked only while the
    /// socket does not take packets, and refused once an answer ahead of them waits for room.
    logs: usize,
    /// When the socket parked its first packet.
    since: Instant,
}

/// Sockets that refused packets they may take later, with those packets in order.
pub struct Waiting<S> {
    parked: HashMap<Sid, Parked<S>>,
    marks: std::sync::Arc<ParkedMarks>,
}

/// What became of parked packets ([`Waiting::release`], [`Waiting::blocked`]).
#[derive(Default)]
pub struct Released {
    /// Logs in the packets the sockets took.
    pub delivered: u64,
    /// Packets refused for good: logs that found the queue full behind or after an answer,
    /// or an answer that waited its time out. (The router counts them like any refusal.)
    pub refused: Vec<(Sid, Packet)>,
    /// Packets of sockets given up on (not taking packets within [`PARK_AT_MOST`]).
    pub given_up: usize,
}

impl<S: Target> Waiting<S> {
    pub fn new(marks: std::sync::Arc<ParkedMarks>) -> Waiting<S> {
        Waiting {
            parked: HashMap::new(),
            marks,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.parked.is_empty()
    }

    /// Whether packets for `sid` are parked (a later packet for it must wait behind them).
    pub fn has_parked(&self, sid: Sid) -> bool {
        !self.parked.is_empty() && self.parked.contains_key(&sid)
    }

    /// Park `packet` for `socket`, after what is parked for it already; give it back if the
    /// socket has [`MAX_PARKED`] parked already.
    pub fn park(&mut self, socket: S, packet: Packet, now: Instant) -> Result<(), Packet> {
        let sid = socket.sid();
        let parked = self.parked.entry(sid).or_insert_with(|| {
            self.marks.set(sid, true);
            Parked {
                socket,
                packets: VecDeque::new(),
                logs: 0,
                since: now,
            }
        });
        if parked.packets.len() >= MAX_PARKED {
            return Err(packet);
        }
        if !packet.waits_for_room() {
            parked.logs += 1;
        }
        parked.packets.push_back(packet);
        Ok(())
    }

    /// Put what sockets can take now in their queues, in order; an answer waits for room
    /// until `answers_wait` after its socket parked its first packet. Let go of sockets not taking
    /// packets within [`PARK_AT_MOST`].
    pub fn release(&mut self, now: Instant, answers_wait: Duration) -> Released {
        let mut out = Released::default();
        if self.parked.is_empty() {
            return out;
        }
        let mut done = Vec::new();
        for (sid, h) in &mut self.parked {
            if let Drained::Empty = h.drain(*sid, now, answers_wait, &mut out) {
                done.push(*sid);
            }
        }
        for sid in done {
            self.forget(sid);
        }
        out
    }

    /// Before a new packet for `sid` is emitted: try what `sid` has parked first. `None`
    /// when nothing is parked any more (emit the packet); otherwise why the socket cannot take it
    /// now.
    pub fn blocked(
        &mut self,
        sid: Sid,
        now: Instant,
        answers_wait: Duration,
        out: &mut Released,
    ) -> Option<Blocked> {
        let h = self.parked.get_mut(&sid)?;
        match h.drain(sid, now, answers_wait, out) {
            Drained::Empty => {
                self.forget(sid);
                None
            }
            Drained::AwaitsRoom => Some(Blocked::AwaitsRoom),
            Drained::NotTaking => Some(Blocked::NotTaking),
        }
    }

    fn forget(&mut self, sid: Sid) {
        self.parked.remove(&sid);
        self.marks.set(sid, false);
    }
}

/// Why a socket that has packets parked cannot take a new one now ([`Waiting::blocked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// An answer at the front of what it parked waits for room in its full queue. Logs are
    /// refused at once, like any logs a full queue refuses (counted now rather than parked
    /// uncounted behind the answer); answers wait behind it.
    AwaitsRoom,
    /// Not connected yet, or closing: everything waits (let go after [`PARK_AT_MOST`]).
    NotTaking,
}

/// Where [`Parked::drain`] stopped.
enum Drained {
    /// Nothing is left parked: all sent or refused, or the socket given up on.
    Empty,
    /// An answer at the front waits for room (nothing but answers is parked any more).
    AwaitsRoom,
    /// The socket is not connected yet, or closing.
    NotTaking,
}

impl<S: Target> Parked<S> {
    /// Emit what the socket takes, in order, up to an answer that waits for room (then the
    /// logs behind it are refused); refuse what the full queue refuses otherwise; give the
    /// socket up if it has not taken packets within [`PARK_AT_MOST`].
    fn drain(
        &mut self,
        sid: Sid,
        now: Instant,
        answers_wait: Duration,
        out: &mut Released,
    ) -> Drained {
        let waited = now.saturating_duration_since(self.since);
        if !self.socket.connected() {
            return self.not_taking(waited, out);
        }
        while let Some(front) = self.packets.front() {
            let sent = match self.socket.emit(front) {
                Ok(()) => true,
                Err(Unsent::Full) if front.waits_for_room() && waited < answers_wait => {
                    self.refuse_logs_behind(sid, out);
                    return Drained::AwaitsRoom;
                }
                Err(Unsent::Full) => {
                    if front.waits_for_room() {
                        tracing::debug!(%sid, event = front.event, "gave up an event: the client's queue stayed full");
                    }
                    false
                }
                // Closing (socketioxide may still call it connected for a moment).
                Err(Unsent::Closed) => return self.not_taking(waited, out),
            };
            let Some(p) = self.pop_front() else { break };
            if sent {
                out.delivered += u64::from(p.logs);
            } else {
                out.refused.push((sid, p));
            }
        }
        Drained::Empty
    }

    fn pop_front(&mut self) -> Option<Packet> {
        let p = self.packets.pop_front()?;
        if !p.waits_for_room() {
            debug_assert!(self.logs > 0, "parked logs miscounted");
            self.logs -= 1;
        }
        Some(p)
    }

    /// The front answer waits for room in a full queue: logs parked behind it (parked
    /// before the socket was connected) are refused now, as new ones are.
    fn refuse_logs_behind(&mut self, sid: Sid, out: &mut Released) {
        if self.logs == 0 {
            return;
        }
        let (answers, logs): (VecDeque<Packet>, VecDeque<Packet>) =
            std::mem::take(&mut self.packets)
                .into_iter()
                .partition(Packet::waits_for_room);
        self.packets = answers;
        self.logs = 0;
        out.refused.extend(logs.into_iter().map(|p| (sid, p)));
    }

    /// The socket is not connected (yet, or any more): wait, or give up once it has parked
    /// for [`PARK_AT_MOST`].
    fn not_taking(&mut self, waited: Duration, out: &mut Released) -> Drained {
        if waited < PARK_AT_MOST {
            return Drained::NotTaking;
        }
        out.given_up += self.packets.len();
        self.packets.clear();
        self.logs = 0;
        Drained::Empty
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::delivery::packet::Data;
    use serde_json::value::RawValue;

    const WAIT: Duration = Duration::from_secs(10);

    /// A socket with `room` places in its queue; what it takes is recorded.
    #[derive(Clone)]
    struct Fake {
        sid: Sid,
        connected: Arc<AtomicBool>,
        /// Refuses as closed while still called connected.
        closing: Arc<AtomicBool>,
        room: Arc<AtomicUsize>,
        taken: Arc<Mutex<Vec<String>>>,
    }

    impl Target for Fake {
        fn sid(&self) -> Sid {
            self.sid
        }
        fn connected(&self) -> bool {
            self.connected.load(Ordering::Relaxed)
        }
        fn emit(&self, packet: &Packet) -> Result<(), Unsent> {
            if !self.connected() || self.closing.load(Ordering::Relaxed) {
                return Err(Unsent::Closed);
            }
            if self.room.load(Ordering::Relaxed) == 0 {
                return Err(Unsent::Full);
            }
            self.room.fetch_sub(1, Ordering::Relaxed);
            self.taken
                .lock()
                .unwrap()
                .push(packet.json().unwrap().get().to_owned());
            Ok(())
        }
    }

    impl Fake {
        fn taken(&self) -> Vec<String> {
            std::mem::take(&mut *self.taken.lock().unwrap())
        }
    }

    fn fake(connected: bool, room: usize) -> Fake {
        Fake {
            sid: Sid::new(),
            connected: Arc::new(AtomicBool::new(connected)),
            closing: Arc::default(),
            room: Arc::new(AtomicUsize::new(room)),
            taken: Arc::default(),
        }
    }

    /// An event that carries no logs (an answer).
    fn answer(n: u32) -> Packet {
        let raw = RawValue::from_string(n.to_string()).unwrap();
        Packet::event("device:status", Data::Owned(raw))
    }

    /// A packet with one log.
    fn log(n: u32) -> Packet {
        let mut p = answer(n);
        p.logs = 1;
        p
    }

    /// Hold `packets` for `s` at `at`, each of them taken.
    fn park_all<const N: usize>(
        w: &mut Waiting<Fake>,
        s: &Fake,
        packets: [Packet; N],
        at: Instant,
    ) {
        for p in packets {
            assert!(w.park(s.clone(), p, at).is_ok());
        }
    }

    fn waiting() -> (Waiting<Fake>, Arc<ParkedMarks>) {
        let marks = Arc::new(ParkedMarks::default());
        (Waiting::new(marks.clone()), marks)
    }

    #[test]
    fn packets_wait_for_the_socket_to_connect_and_go_in_order() {
        let t0 = Instant::now();
        let (mut w, marks) = waiting();
        let s = fake(false, 100);
        let other = fake(true, 100);
        assert!(!w.has_parked(s.sid));
        park_all(&mut w, &s, [answer(1), log(2)], t0);
        assert!(w.has_parked(s.sid), "later packets queue behind the first");
        assert!(marks.has_parked(s.sid), "and direct writers see it");
        assert!(!w.has_parked(other.sid) && !marks.has_parked(other.sid));
        let r = w.release(t0 + Duration::from_millis(10), WAIT);
        assert!(s.taken().is_empty(), "not connected yet");
        assert_eq!((r.delivered, r.given_up), (0, 0));
        s.connected.store(true, Ordering::Relaxed);
        let r = w.release(t0 + Duration::from_millis(20), WAIT);
        assert_eq!(s.taken(), ["1", "2"]);
        assert_eq!(r.delivered, 1, "the log is counted as delivered");
        assert!(w.is_empty());
        assert!(!marks.has_parked(s.sid));
    }

    #[test]
    fn a_socket_that_never_connects_is_let_go() {
        let t0 = Instant::now();
        let (mut w, marks) = waiting();
        let s = fake(false, 100);
        park_all(&mut w, &s, [answer(1)], t0);
        assert!(
            w.park(s.clone(), answer(2), t0 + Duration::from_millis(900))
                .is_ok()
        );
        let r = w.release(t0 + PARK_AT_MOST - Duration::from_millis(1), WAIT);
        assert_eq!(r.given_up, 0);
        let r = w.release(t0 + PARK_AT_MOST, WAIT);
        assert_eq!(r.given_up, 2);
        assert!(w.is_empty() && !marks.has_parked(s.sid));
    }

    #[test]
    fn answers_wait_for_room_in_order() {
        let t0 = Instant::now();
        let (mut w, _) = waiting();
        let s = fake(true, 0);
        park_all(&mut w, &s, [answer(1), answer(2), answer(3)], t0);
        let r = w.release(t0 + Duration::from_millis(2), WAIT);
        assert!(s.taken().is_empty() && r.refused.is_empty(), "all wait");
        // One place: the first answer goes, the next waits again.
        s.room.store(1, Ordering::Relaxed);
        let r = w.release(t0 + Duration::from_millis(4), WAIT);
        assert_eq!(s.taken(), ["1"]);
        assert!(r.refused.is_empty() && w.has_parked(s.sid));
        s.room.store(5, Ordering::Relaxed);
        w.release(t0 + Duration::from_millis(6), WAIT);
        assert_eq!(s.taken(), ["2", "3"]);
        assert!(w.is_empty());
    }

    #[test]
    fn logs_behind_an_answer_waiting_for_room_are_refused_at_once() {
        let t0 = Instant::now();
        let (mut w, _) = waiting();
        let s = fake(true, 0);
        park_all(&mut w, &s, [answer(1)], t0);
        let mut out = Released::default();
        let now = t0 + Duration::from_millis(1);
        assert_eq!(
            w.blocked(s.sid, now, WAIT, &mut out),
            Some(Blocked::AwaitsRoom),
            "a new log is to be refused like any a full queue refuses"
        );
        assert!(s.taken().is_empty() && w.has_parked(s.sid));
        // Room: the answer goes first, then nothing blocks the next packet.
        s.room.store(1, Ordering::Relaxed);
        assert!(w.blocked(s.sid, now, WAIT, &mut out).is_none());
        assert_eq!(s.taken(), ["1"]);
        assert!(w.is_empty() && out.refused.is_empty());
        // Not connected yet: everything waits.
        let c = fake(false, 10);
        park_all(&mut w, &c, [answer(2)], t0);
        assert_eq!(
            w.blocked(c.sid, now, WAIT, &mut out),
            Some(Blocked::NotTaking)
        );
        // Given up on once it has parked long enough, and then it blocks nothing.
        assert!(
            w.blocked(c.sid, t0 + PARK_AT_MOST, WAIT, &mut out)
                .is_none()
        );
        assert_eq!(out.given_up, 1);
        assert!(w.is_empty());
        // A socket that parks nothing blocks nothing.
        assert!(w.blocked(Sid::new(), now, WAIT, &mut out).is_none());
    }

    #[test]
    fn logs_parked_before_connect_are_refused_once_an_answer_waits_for_room() {
        let t0 = Instant::now();
        let (mut w, _) = waiting();
        // Held during the handshake: more than the queue will have room for.
        let s = fake(false, 1);
        park_all(
            &mut w,
            &s,
            [log(1), answer(2), log(3), answer(4), log(5)],
            t0,
        );
        s.connected.store(true, Ordering::Relaxed);
        let r = w.release(t0 + Duration::from_millis(2), WAIT);
        assert_eq!(s.taken(), ["1"], "the first log takes the one place");
        assert_eq!(r.delivered, 1);
        let refused: Vec<&str> = r
            .refused
            .iter()
            .map(|(_, p)| p.json().unwrap().get())
            .collect();
        assert_eq!(
            refused,
            ["3", "5"],
            "logs behind the waiting answer: refused now"
        );
        // The answers still wait, in order.
        s.room.store(5, Ordering::Relaxed);
        let r = w.release(t0 + Duration::from_millis(4), WAIT);
        assert_eq!(s.taken(), ["2", "4"]);
        assert!(r.refused.is_empty() && w.is_empty());
    }

    /// socketioxide may refuse as closed a socket it still calls connected: that is not a
    /// full queue, so a new log is not refused as if it were.
    #[test]
    fn a_closing_socket_is_not_taken_for_a_full_one() {
        let t0 = Instant::now();
        let (mut w, _) = waiting();
        let s = fake(true, 0);
        s.closing.store(true, Ordering::Relaxed);
        park_all(&mut w, &s, [answer(1)], t0);
        let mut out = Released::default();
        assert_eq!(
            w.blocked(s.sid, t0 + Duration::from_millis(1), WAIT, &mut out),
            Some(Blocked::NotTaking)
        );
        assert!(out.refused.is_empty());
        assert!(
            w.blocked(s.sid, t0 + PARK_AT_MOST, WAIT, &mut out)
                .is_none()
        );
        assert_eq!((out.given_up, out.refused.len()), (1, 0));
    }

    #[test]
    fn an_answer_waits_no_longer_than_its_time() {
        let t0 = Instant::now();
        let (mut w, marks) = waiting();
        let s = fake(true, 0);
        park_all(&mut w, &s, [answer(1)], t0);
        let r = w.release(t0 + WAIT - Duration::from_millis(1), WAIT);
        assert!(r.refused.is_empty() && w.has_parked(s.sid));
        let r = w.release(t0 + WAIT, WAIT);
        assert_eq!(r.refused.len(), 1, "the answer, refused like a log");
        assert!(w.is_empty() && !marks.has_parked(s.sid));
    }

    #[test]
    fn a_socket_parks_a_bounded_number_of_packets() {
        let t0 = Instant::now();
        let (mut w, _) = waiting();
        let s = fake(false, usize::MAX);
        for n in 0..MAX_PARKED as u32 {
            assert!(w.park(s.clone(), answer(n), t0).is_ok());
        }
        let refused = w.park(s.clone(), answer(0), t0).unwrap_err();
        assert_eq!(
            refused.json().unwrap().get(),
            "0",
            "given back, not lost here"
        );
        s.connected.store(true, Ordering::Relaxed);
        w.release(t0, WAIT);
        assert_eq!(s.taken().len(), MAX_PARKED);
    }
}
