//! `system:stats` for every client, riding along with its logs when it can.
//!
//! Why: the seed sends `system:stats` to every client every `stats_interval_ms`. At 10 000
//! clients and 5 s that is 2 000 messages a second, each waking its socket's writer for one
//! frame and one `sendto`: a sixth of the CPU of a 1000 logs/s load (BENCHMARKS.md §8). A
//! client that is being sent logs anyway can take its stats in the same write.
//!
//! How: rounds. Clients are spread over [`STATS_SLICES`] slices (by socket id); slice `k`'s
//! round `n` is due `n` intervals plus `k` slices' share of one after the feed started. The
//! stats loop visits each slice when its round is due and sends the stats to every client
//! of it that does not have that round yet. When the router sends a client logs within a
//! quarter interval before its next round is due, it sends that round's stats right after
//! them (same turn, so the same write) and marks the round as sent, and the visit skips
//! that client. Each client gets one `system:stats` per round, so between 3/4 and 5/4 of an
//! interval apart (more only if the runtime is too busy to visit in time).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

/// `system:stats` goes to one of this many slices of the clients at a time: a broadcast to
/// all at once made every socket's writer wake in the same instant.
pub const STATS_SLICES: usize = 10;

/// The room of stats slice `n`.
pub fn stats_room(n: usize) -> String {
    format!("logstream:stats:{n}")
}

/// The slice of a socket, by its id (random), so slices stay even.
pub fn stats_slice(sid: &str) -> usize {
    sid.bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
        % STATS_SLICES
}

/// One client's place in the rounds (kept in its `ConnectionInfo`).
#[derive(Debug, Default)]
pub struct StatsTicket {
    slice: usize,
    /// The last round sent, plus one (0: none yet).
    sent: AtomicU64,
}

impl StatsTicket {
    pub fn new(slice: usize) -> StatsTicket {
        StatsTicket {
            slice: slice % STATS_SLICES,
            sent: AtomicU64::new(0),
        }
    }

    pub fn slice(&self) -> usize {
        self.slice
    }

    /// Whether `round` (or a later one) was sent.
    fn has(&self, round: u64) -> bool {
        self.sent.load(Ordering::Relaxed) > round
    }

    /// Mark `round` as sent; false if it (or a later one) was already.
    pub fn claim(&self, round: u64) -> bool {
        let mut current = self.sent.load(Ordering::Relaxed);
        loop {
            if current > round {
                return false;
            }
            match self.sent.compare_exchange_weak(
                current,
                round + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => current = now,
            }
        }
    }
}

/// The rounds' clock and the latest stats.
pub struct StatsFeed {
    start: Instant,
    interval: Duration,
    payload: Mutex<Option<Arc<RawValue>>>,
}

impl StatsFeed {
    pub fn new(interval: Duration) -> StatsFeed {
        StatsFeed::starting_at(Instant::now(), interval)
    }

    pub fn starting_at(start: Instant, interval: Duration) -> StatsFeed {
        StatsFeed {
            start,
            interval: interval.max(Duration::from_millis(1)),
            payload: Mutex::new(None),
        }
    }

    /// When slice 0's round 0 is due; the loop visits a slice every [`Self::slice_period`]
    /// from then on.
    pub fn start(&self) -> Instant {
        self.start
    }

    pub fn slice_period(&self) -> Duration {
        self.interval / STATS_SLICES as u32
    }

    /// How long before its round is due a client's stats may ride along with its logs.
    fn window(&self) -> Duration {
        self.interval / 4
    }

    /// How far into its rounds slice `slice` is at `now`: time since its round 0 was due, or
    /// `None` before that.
    fn since_first_round(&self, slice: usize, now: Instant) -> Option<Duration> {
        let first = self.start + self.slice_period() * slice as u32;
        now.checked_duration_since(first)
    }

    /// The latest round of `slice` due at `now`.
    pub fn round_due(&self, slice: usize, now: Instant) -> Option<u64> {
        let elapsed = self.since_first_round(slice, now)?;
        Some((elapsed.as_nanos() / self.interval.as_nanos()) as u64)
    }

    /// The latest stats, for every client.
    pub fn publish(&self, payload: Box<RawValue>) {
        *self.lock() = Some(Arc::from(payload));
    }

    pub fn current(&self) -> Option<Arc<RawValue>> {
        self.lock().clone()
    }

    /// The stats to send with logs a client is being sent at `now`, if its next round is due
    /// within a quarter interval (the round is then marked as sent).
    pub fn ride_along(&self, ticket: &StatsTicket, now: Instant) -> Option<Arc<RawValue>> {
        let (next, due_in) = match self.since_first_round(ticket.slice, now) {
            None => {
                let first = self.start + self.slice_period() * ticket.slice as u32;
                (0, first.saturating_duration_since(now))
            }
            Some(elapsed) => {
                let n = elapsed.as_nanos() / self.interval.as_nanos();
                let next_at = self.interval.as_nanos() * (n + 1);
                let due_in = Duration::from_nanos((next_at - elapsed.as_nanos()) as u64);
                (n as u64 + 1, due_in)
            }
        };
        // Called for every client sent logs: the lock is taken once per client and round.
        if due_in > self.window() || ticket.has(next) {
            return None;
        }
        let payload = self.current()?;
        ticket.claim(next).then_some(payload)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<RawValue>>> {
        self.payload.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(start: Instant) -> StatsFeed {
        let f = StatsFeed::starting_at(start, Duration::from_secs(10));
        f.publish(RawValue::from_string("{\"connections\":1}".into()).unwrap());
        f
    }

    #[test]
    fn a_round_goes_out_once_whoever_sends_it() {
        let t0 = Instant::now();
        let f = feed(t0);
        // Slice 3: round 0 due at 3 s, round 1 at 13 s; the window is 2.5 s.
        let ticket = StatsTicket::new(3);
        assert_eq!(f.round_due(3, t0 + Duration::from_secs(2)), None);
        // Too early to ride along (due in 3 s).
        assert!(f.ride_along(&ticket, t0).is_none());
        // Within the window: round 0 rides along, and the visit at 3 s finds it sent.
        assert!(f.ride_along(&ticket, t0 + Duration::from_secs(1)).is_some());
        assert!(f.ride_along(&ticket, t0 + Duration::from_secs(2)).is_none());
        let visit = t0 + Duration::from_secs(3);
        assert_eq!(f.round_due(3, visit), Some(0));
        assert!(
            !ticket.claim(0),
            "the visit skips a client that has its round"
        );
        // No logs before round 1: the visit at 13 s sends it.
        assert!(f.ride_along(&ticket, t0 + Duration::from_secs(5)).is_none());
        let visit = t0 + Duration::from_secs(13);
        assert_eq!(f.round_due(3, visit), Some(1));
        assert!(ticket.claim(1));
        // Round 2 is due at 23 s: logs at 21 s take it, at 22 s nothing more goes.
        assert!(
            f.ride_along(&ticket, t0 + Duration::from_secs(21))
                .is_some()
        );
        assert!(
            f.ride_along(&ticket, t0 + Duration::from_secs(22))
                .is_none()
        );
        assert!(!ticket.claim(2));
    }

    #[test]
    fn nothing_rides_along_before_the_first_stats_exist() {
        let t0 = Instant::now();
        let f = StatsFeed::starting_at(t0, Duration::from_secs(10));
        let ticket = StatsTicket::new(0);
        assert!(f.ride_along(&ticket, t0 + Duration::from_secs(9)).is_none());
        assert!(ticket.claim(1), "the round is still there for the visit");
    }

    #[test]
    fn slices_are_spread_and_stable() {
        let mut counts = [0usize; STATS_SLICES];
        for i in 0..10_000 {
            counts[stats_slice(&format!("sid-{i:08x}"))] += 1;
        }
        assert!(counts.iter().all(|&c| c > 700), "{counts:?}");
        assert_eq!(stats_slice("abc"), stats_slice("abc"));
    }
}
