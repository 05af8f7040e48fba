//! A token bucket: `rate` tokens per second, holding at most `burst`.
//!
//! Used for logs delivered to a client and for events a client sends. Time is passed in,
//! so tests drive it without sleeping.

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

    /// Change the rate, keeping the tokens already earned (capped to the new burst).
    /// A new rate and burst. A larger burst adds its increase to the tokens held (a client
    /// granted 2000/s can take a burst of 2000 at once, as a new one could); a smaller one
    /// caps them.
    pub fn set_rate(&mut self, rate: u32, burst: u32) {
        let burst = f64::from(burst.max(1));
        self.tokens = (self.tokens + (burst - self.burst).max(0.0)).min(burst);
        self.rate = f64::from(rate);
        self.burst = burst;
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
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
}
