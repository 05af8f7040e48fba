//! Which shards this instance's subscriptions need (`redis_stream_shards` > 1), and the
//! client commands held until the bus reads them.
//!
//! The bus reads only the shards the router asks for ([`Wanted`]). A subscription that
//! needs a shard not read yet is held here (with every later command of its client, so they
//! keep their order) until the bus says the shard is in the order
//! ([`super::Inbound::Shards`]): the shard's history has reached the router by then, and
//! its live logs come after, so the subscription starts with no gap and no duplicate. A
//! shard no subscription needs is read a little longer ([`GRACE`]), so a client that
//! reconnects does not make the bus drop and reload it; the router stops counting it as
//! read before it asks the bus to stop, so nothing is installed on a shard being dropped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use socketioxide::socket::Sid;
use tokio::sync::watch;

use crate::shards::{ShardMask, Wanted};

/// How long a shard nobody needs is still read.
pub const GRACE: Duration = Duration::from_secs(10);
/// How long a command may wait for its shards before it is refused.
pub const PARK_TIMEOUT: Duration = Duration::from_secs(10);
/// Most commands one client may have waiting; past it its commands are refused (busy).
pub const MAX_PARKED_PER_CLIENT: usize = 32;
/// Most commands waiting in all.
pub const MAX_PARKED: usize = 10_000;

struct Parked<T> {
    sid: Sid,
    need: ShardMask,
    since: Instant,
    command: T,
}

pub struct ShardInterest<T> {
    /// The shards of each installed subscription.
    installed: HashMap<Sid, ShardMask>,
    /// Subscriptions per shard.
    counts: Vec<u32>,
    /// When each shard lost its last subscription.
    idle_since: Vec<Option<Instant>>,
    parked: VecDeque<Parked<T>>,
    /// Commands waiting per client.
    parked_by: HashMap<Sid, usize>,
    wanted: watch::Sender<Wanted>,
    /// The shards the bus said are in the order, for the current generation (less those
    /// the router let go since).
    ready: ShardMask,
}

impl<T> ShardInterest<T> {
    pub fn new(shards: usize, wanted: watch::Sender<Wanted>) -> ShardInterest<T> {
        ShardInterest {
            installed: HashMap::new(),
            counts: vec![0; shards],
            idle_since: vec![None; shards],
            parked: VecDeque::new(),
            parked_by: HashMap::new(),
            wanted,
            ready: 0,
        }
    }

    /// Whether every shard of `need` is read and in the order.
    pub fn is_ready(&self, need: ShardMask) -> bool {
        need & !self.ready == 0
    }

    pub fn has_parked(&self, sid: Sid) -> bool {
        self.parked_by.contains_key(&sid)
    }

    /// Hold `command` of `sid` until the shards `need` are ready; `Err(command)` if the
    /// client has [`MAX_PARKED_PER_CLIENT`] waiting already, or all have [`MAX_PARKED`].
    pub fn park(&mut self, sid: Sid, need: ShardMask, command: T, now: Instant) -> Result<(), T> {
        let mine = self.parked_by.entry(sid).or_default();
        if *mine >= MAX_PARKED_PER_CLIENT || self.parked.len() >= MAX_PARKED {
            if *mine == 0 {
                self.parked_by.remove(&sid);
            }
            return Err(command);
        }
        *mine += 1;
        self.parked.push_back(Parked {
            sid,
            need,
            since: now,
            command,
        });
        self.publish(now);
        Ok(())
    }

    /// Drop what `sid` has parked (it disconnected).
    pub fn drop_parked(&mut self, sid: Sid, now: Instant) -> Vec<T> {
        let (gone, kept) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| p.sid == sid);
        self.parked = kept;
        self.parked_by.remove(&sid);
        self.publish(now);
        gone.into_iter().map(|p| p.command).collect::<Vec<T>>()
    }

    /// `sid`'s subscription needs `need` now (`None`: it has none).
    pub fn set(&mut self, sid: Sid, need: Option<ShardMask>, now: Instant) {
        let before = self.installed.get(&sid).copied().unwrap_or(0);
        let after = need.unwrap_or(0);
        if before == after {
            return;
        }
        match need {
            Some(m) if m != 0 => self.installed.insert(sid, m),
            _ => self.installed.remove(&sid),
        };
        for (shard, count) in self.counts.iter_mut().enumerate() {
            let bit = 1 << shard;
            if before & bit != 0 {
                *count -= 1;
                if *count == 0 {
                    self.idle_since[shard] = Some(now);
                }
            }
            if after & bit != 0 {
                *count += 1;
                self.idle_since[shard] = None;
            }
        }
        self.publish(now);
    }

    /// The bus's answer for `generation`: the commands that may go now, in order. An answer
    /// to an older request says nothing about shards asked for (or let go) since.
    pub fn on_ready(&mut self, ready: ShardMask, generation: u64) -> Vec<T> {
        if generation != self.wanted.borrow().generation {
            return Vec::new();
        }
        self.ready = ready;
        self.release()
    }

    /// Let go of shards past their grace; returns the commands that waited too long (to be
    /// refused) and those they held up (to go now), in that order.
    pub fn tick(&mut self, now: Instant) -> (Vec<T>, Vec<T>) {
        self.publish(now);
        let mut expired = Vec::new();
        let mut kept = VecDeque::new();
        for p in std::mem::take(&mut self.parked) {
            if now.saturating_duration_since(p.since) > PARK_TIMEOUT && p.need != 0 {
                self.unpark(p.sid);
                expired.push(p.command);
            } else {
                kept.push_back(p);
            }
        }
        self.parked = kept;
        let released = self.release();
        (expired, released)
    }

    /// Take out the parked commands that may go: in order, none before an earlier one of
    /// its client that must still wait.
    fn release(&mut self) -> Vec<T> {
        if self.parked.is_empty() {
            return Vec::new();
        }
        let mut blocked: HashSet<Sid> = HashSet::new();
        let mut out = Vec::new();
        let mut kept = VecDeque::new();
        for p in std::mem::take(&mut self.parked) {
            if !blocked.contains(&p.sid) && self.is_ready(p.need) {
                self.unpark(p.sid);
                out.push(p.command);
            } else {
                blocked.insert(p.sid);
                kept.push_back(p);
            }
        }
        self.parked = kept;
        out
    }

    /// One command of `sid` left the waiting line.
    fn unpark(&mut self, sid: Sid) {
        if let Some(n) = self.parked_by.get_mut(&sid) {
            *n -= 1;
            if *n == 0 {
                self.parked_by.remove(&sid);
            }
        }
    }

    /// Ask the bus for the shards of installed and parked subscriptions, and those still in
    /// their grace; a shard let go stops counting as ready at once.
    fn publish(&mut self, now: Instant) {
        let mut mask: ShardMask = self.parked.iter().fold(0, |m, p| m | p.need);
        for (shard, count) in self.counts.iter().enumerate() {
            let in_grace =
                self.idle_since[shard].is_some_and(|t| now.saturating_duration_since(t) < GRACE);
            if *count > 0 || in_grace {
                mask |= 1 << shard;
            }
        }
        if mask != self.wanted.borrow().mask {
            self.ready &= mask;
            self.wanted.send_modify(|w| {
                w.mask = mask;
                w.generation += 1;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parks_until_the_shards_are_ready_and_keeps_each_clients_order() {
        let (tx, rx) = watch::channel(Wanted::default());
        let mut i: ShardInterest<&str> = ShardInterest::new(4, tx);
        let (a, b) = (Sid::new(), Sid::new());
        let t0 = Instant::now();
        assert!(!i.is_ready(0b10));
        i.park(a, 0b10, "a subscribes", t0).unwrap();
        i.park(a, 0, "a pauses", t0).unwrap();
        i.park(b, 0, "b pauses", t0).unwrap();
        assert_eq!(rx.borrow().mask, 0b10);
        let asked = rx.borrow().generation;
        // An answer to an older request does not count.
        assert!(i.on_ready(0b10, asked - 1).is_empty());
        assert_eq!(i.on_ready(0, asked), ["b pauses"]);
        assert_eq!(i.on_ready(0b10, asked), ["a subscribes", "a pauses"]);
        i.set(a, Some(0b10), t0);
        assert!(i.is_ready(0b10));
        // Unsubscribed: read for the grace, then let go (and no longer ready).
        i.set(a, None, t0);
        i.tick(t0 + GRACE / 2);
        assert_eq!(rx.borrow().mask, 0b10);
        i.tick(t0 + GRACE * 2);
        assert_eq!(rx.borrow().mask, 0);
        assert!(!i.is_ready(0b10));
    }

    #[test]
    fn a_command_that_waits_too_long_is_refused_and_lets_the_next_go() {
        let (tx, _rx) = watch::channel(Wanted::default());
        let mut i: ShardInterest<&str> = ShardInterest::new(4, tx);
        let a = Sid::new();
        let t0 = Instant::now();
        i.park(a, 0b1, "subscribe", t0).unwrap();
        i.park(a, 0, "unsubscribe", t0).unwrap();
        // A client that keeps sending while it waits is refused past the cap.
        for _ in 2..MAX_PARKED_PER_CLIENT {
            i.park(a, 0, "pause", t0).unwrap();
        }
        assert_eq!(i.park(a, 0, "one too many", t0), Err("one too many"));
        assert_eq!(i.tick(t0 + Duration::from_secs(1)), (vec![], vec![]));
        let (expired, released) = i.tick(t0 + PARK_TIMEOUT * 2);
        assert_eq!(expired, ["subscribe"]);
        assert_eq!(released.len(), MAX_PARKED_PER_CLIENT - 1);
        assert_eq!(released[0], "unsubscribe");
        assert!(!i.has_parked(a));
    }
}
