//! Delivery to each client: rate limit, pause buffer, socket queues, batch window, stats.

use std::time::Duration;

use super::group::{at_most, between, config_group, positive};

config_group! {
    /// What each client is sent, and how fast.
    pub struct DeliveryConfig {
        /// Logs per second delivered live to one client whose subscription does not ask for
        /// a rate (`rateLimit`). Replays of history are not counted against it.
        rate_limit: u32 = 100, positive;
        /// The most a subscription's `rateLimit` may ask for; a larger ask is clamped and the
        /// ack says what was granted (below `rate_limit`, `rate_limit` is the most).
        max_client_rate_limit: u32 = 2000, positive;
        /// Logs held for a paused client before the overflow is dropped and reported.
        pause_buffer: usize = 1000;
        /// Bytes of logs held for a paused client (with `pause_buffer`, whichever is hit
        /// first).
        pause_buffer_bytes: usize = 8 << 20, positive;
        /// Packets queued for one socket before a slow client's overflow is dropped and
        /// reported.
        socket_queue: usize = 1024, positive;
        /// Bytes queued for one socket (sent to it, not yet written to the network) before a
        /// slow client's overflow is dropped and reported (with `socket_queue`, whichever is
        /// hit first).
        socket_queue_bytes: usize = 4 << 20, positive;
        /// Bytes queued in the socket queues of all clients of this instance together; past
        /// it, logs for any client are dropped as `slow_consumer`.
        max_queued_bytes: usize = 256 << 20, positive;
        /// A client that stays over its socket queue bound this long is disconnected.
        slow_consumer_timeout_ms: u64 = 10_000, positive;
        /// Most logs in one `log:batch` message, and in one plugin call.
        batch_max_logs: usize = 50, positive;
        /// A `batch: true` client gets a `log:batch` at most once per this window (unless
        /// `batch_max_logs` are waiting, or a log has waited 4/5 of it since it was
        /// received, and then not within half a window of the last); the first after a quiet
        /// window goes out at once.
        batch_max_delay_ms: u64 = 100, at_most(60_000);
        /// Period of the `system:stats` event (every client gets one each period).
        stats_interval_ms: u64 = 5000,
            between(100, 86_400_000, " (a day): every client gets a message each interval");
    }
}

impl DeliveryConfig {
    /// The most a subscription may ask for: `max_client_rate_limit`, and never less than
    /// `rate_limit` (what it gets without asking).
    pub fn max_client_rate(&self) -> u32 {
        self.max_client_rate_limit.max(self.rate_limit)
    }

    pub fn slow_consumer_timeout(&self) -> Duration {
        Duration::from_millis(self.slow_consumer_timeout_ms)
    }

    pub fn batch_window(&self) -> Duration {
        Duration::from_millis(self.batch_max_delay_ms)
    }
}
