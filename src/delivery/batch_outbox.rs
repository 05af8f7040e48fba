//! The window of a `batch: true` client: admitted logs wait here for the next `log:batch`.
//!
//! The seed's "50 logs or 100 ms" as a leading-edge throttle: the first logs after a quiet
//! window go out at once; later ones wait until a window has passed since the last
//! `log:batch`, or until `batch_max_logs` wait. The window is also a latency bound: a log
//! waits here at most [`OUTBOX_HOLD_SHARE`] of the window counted from when this instance
//! received it, leaving the rest for the way to the client, though never less than half a
//! window after the last `log:batch`, so that a backlog of old logs does not turn into a
//! message per evaluation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::Scope;
use crate::log_entry::LogRecord;

/// The share of `batch_max_delay_ms` a log may wait in an outbox, counted from when this
/// instance received it. The rest of the window is left for the socket's writer task, the
/// kernel and the client's read, so that the seed's "50 logs or 100 ms" and its "latency <
/// 100 ms" hold together under load (BENCHMARKS.md §8).
pub const OUTBOX_HOLD_SHARE: f64 = 0.8;

pub struct BatchOutbox {
    /// Admitted logs waiting for the next `log:batch`, oldest first.
    logs: Vec<Arc<LogRecord>>,
    /// When the last `log:batch` went out.
    last_sent_at: Option<Instant>,
    /// `batch_max_delay_ms`.
    window: Duration,
    /// `batch_max_logs`: this many waiting go out at once.
    max_logs: usize,
}

impl BatchOutbox {
    pub fn new(window: Duration, max_logs: usize) -> BatchOutbox {
        BatchOutbox {
            logs: Vec::new(),
            last_sent_at: None,
            window,
            max_logs,
        }
    }

    pub fn push(&mut self, logs: impl IntoIterator<Item = Arc<LogRecord>>) {
        self.logs.extend(logs);
    }

    /// When the waiting logs are due, if any wait (see the module doc).
    pub fn due_at(&self) -> Option<Instant> {
        let oldest = self.logs.first()?;
        let after = |t: Instant, d: Duration| t.checked_add(d).unwrap_or(t);
        let by_age = after(oldest.received, self.window.mul_f64(OUTBOX_HOLD_SHARE));
        Some(match self.last_sent_at {
            None => oldest.received,
            Some(last) => after(last, self.window)
                .min(by_age)
                .max(after(last, self.window / 2)),
        })
    }

    /// The waiting logs if they are due at `now` (or `force`), counting them as sent now;
    /// `None` if nothing waits or it is not time yet.
    pub fn take_due(&mut self, now: Instant, force: bool) -> Option<Vec<Arc<LogRecord>>> {
        if self.logs.is_empty() {
            return None;
        }
        let due = force
            || self.logs.len() >= self.max_logs
            || self.last_sent_at.is_none()
            || self.due_at().is_some_and(|at| now >= at);
        if !due {
            return None;
        }
        self.last_sent_at = Some(now);
        Some(std::mem::take(&mut self.logs))
    }

    /// Everything waiting, not counted as sent (a pause keeps it).
    pub fn take_all(&mut self) -> Vec<Arc<LogRecord>> {
        std::mem::take(&mut self.logs)
    }

    /// Forget the logs of devices `scope` excludes; returns how many.
    pub fn retain_scope(&mut self, scope: &Scope) -> usize {
        let before = self.logs.len();
        self.logs.retain(|l| scope.matches(&l.device_id));
        before - self.logs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received_at(at: Instant) -> Arc<LogRecord> {
        let mut log =
            LogRecord::from_value(serde_json::json!({"deviceId": "d", "message": "x"})).unwrap();
        log.received = at;
        Arc::new(log)
    }

    #[test]
    fn the_first_goes_at_once_then_logs_gather_per_window() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut o = BatchOutbox::new(ms(100), 3);
        o.push([received_at(t0)]);
        assert_eq!(
            o.take_due(t0, false).map(|l| l.len()),
            Some(1),
            "leading edge"
        );
        o.push([received_at(t0 + ms(10)), received_at(t0 + ms(10))]);
        assert!(o.take_due(t0 + ms(50), false).is_none(), "not due");
        assert_eq!(o.take_due(t0 + ms(100), false).map(|l| l.len()), Some(2));
        // `max_logs` waiting go out at once.
        o.push((0..3).map(|_| received_at(t0 + ms(110))));
        assert_eq!(o.take_due(t0 + ms(110), false).map(|l| l.len()), Some(3));
        assert_eq!(o.due_at(), None);
    }

    #[test]
    fn a_log_waits_at_most_its_share_of_the_window_since_it_was_received() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let ms = Duration::from_millis;
        let mut o = BatchOutbox::new(ms(100), 50);
        o.push([received_at(t0)]);
        assert!(o.take_due(t0, false).is_some());
        // Received just now: due a window after the last batch.
        o.push([received_at(t0 + ms(60))]);
        assert_eq!(o.due_at(), Some(t0 + ms(100)));
        assert!(o.take_due(t0 + ms(90), false).is_none(), "not due yet");
        assert!(o.take_due(t0 + ms(100), false).is_some());
        // Received 40 ms before it reached the router (a long ingest, a busy router): due
        // once it has been in the instance for 80 ms, before the window ends.
        o.push([received_at(t0 + ms(70))]);
        assert_eq!(o.due_at(), Some(t0 + ms(150)));
        assert!(o.take_due(t0 + ms(149), false).is_none());
        assert!(o.take_due(t0 + ms(150), false).is_some());
        // A log that was already old when it arrived (a backlog) is not sent sooner than
        // half a window after the last batch.
        o.push([received_at(t0 - ms(500))]);
        assert_eq!(o.due_at(), Some(t0 + ms(200)));
    }
}
