//! A token bucket: `rate` tokens per second, holding at most `burst`.
//!
//! Used for logs delivered to a client, for the logs its replays send, and for events a
//! client sends. Time is passed in, so tests drive it without sleeping.

use std::time::Instant;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: now,
        }
    }

    /// A new rate and burst. The tokens held keep their share of the burst: a full bucket
    /// stays full (a client granted 2000/s can take a burst of 2000 at once, as a new one
    /// could), an empty one stays empty, so asking for a low rate and then a high one again
    /// (re-subscribing) earns nothing.
    pub fn set_rate(&mut self, rate: u32, burst: u32) {
        let burst = f64::from(burst.max(1));
        self.tokens = (self.tokens / self.burst * burst).min(burst);
        self.rate = f64::from(rate);
        self.burst = burst;
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Whole tokens available now.
    pub fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.tokens.max(0.0) as usize
    }

    /// Take `n` tokens (at most those held; see [`TokenBucket::available`]).
    pub fn take(&mut self, n: usize) {
        self.tokens = (self.tokens - n as f64).max(0.0);
    }

    /// How long until `n` tokens (at most a burst) are held.
    pub fn wait_for(&mut self, n: usize, now: Instant) -> std::time::Duration {
        self.refill(now);
        let missing = (n as f64).min(self.burst) - self.tokens;
        if missing <= 0.0 || self.rate <= 0.0 {
            return std::time::Duration::ZERO;
        }
        std::time::Duration::from_secs_f64(missing / self.rate)
    }

    /// Take one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn admits_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 100, t0);
        let first = (0..250).filter(|_| b.try_take(t0)).count();
        assert_eq!(first, 100);
        let later = t0 + Duration::from_millis(500);
        let second = (0..250).filter(|_| b.try_take(later)).count();
        assert_eq!(second, 50);
        let much_later = t0 + Duration::from_secs(60);
        let third = (0..250).filter(|_| b.try_take(much_later)).count();
        assert_eq!(third, 100, "never more than the burst");
    }

    #[test]
    fn changing_the_rate_keeps_the_share_held_so_oscillating_earns_nothing() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 100, t0);
        b.set_rate(2000, 2000);
        assert_eq!(
            (0..5000).filter(|_| b.try_take(t0)).count(),
            2000,
            "full stays full"
        );
        for _ in 0..50 {
            b.set_rate(1, 1);
            b.set_rate(2000, 2000);
        }
        assert_eq!(
            (0..5000).filter(|_| b.try_take(t0)).count(),
            0,
            "empty stays empty"
        );
        let half = t0 + Duration::from_millis(500);
        assert_eq!((0..5000).filter(|_| b.try_take(half)).count(), 1000);
    }
}
