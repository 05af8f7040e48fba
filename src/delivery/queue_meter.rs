//! What one client's socket queue holds, in bytes, and whether the client keeps up.
//!
//! The bytes queued for a socket are what was handed to it minus what its connection has
//! written to the network (counted at the TCP edge, see `edge::Meter`). Past
//! `socket_queue_bytes` its logs are refused; past `max_queued_bytes` for all clients of the
//! instance together, anyone's are. A client is over its bound from the first packet refused
//! for it until its queue drains, or until it has read something with nothing refused since
//! the last check; past `slow_consumer_timeout_ms` over it, it is cut (Centrifugo's rule).
//!
//! The transport's written count is a counter the connection's worker thread writes, so
//! reading it is a cache miss for the router: it is read again only once what was handed
//! over since the last reading passes [`RECHECK_BYTES`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::outlet::Outlet;
use crate::metrics::Metrics;

/// How far the estimate of a socket's queue may run ahead of the transport's count before
/// the count is read again. Each client's share of `max_queued_bytes` may be overstated by
/// this much until then; with 10 000 clients that is at most 40 MB of a 256 MiB bound, and
/// the router refreshes every share exactly once the total passes half the bound.
pub const RECHECK_BYTES: u64 = 4096;

/// What [`QueueMeter::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowCheck {
    /// Not over its bound (any more).
    Fine,
    /// Still over, within `slow_consumer_timeout_ms`: check again later.
    StillOver,
    /// Over for longer than `slow_consumer_timeout_ms`: cut it now.
    Cut { over_for: Duration },
}

pub struct QueueMeter {
    metrics: Arc<Metrics>,
    /// `socket_queue_bytes`.
    socket_bound: u64,
    /// `max_queued_bytes`.
    instance_bound: u64,
    /// `slow_consumer_timeout_ms`.
    slow_timeout: Duration,
    /// Payload bytes handed to the socket, counted from where the socket's written bytes
    /// last caught up (so `sent_bytes - written` is what waits in its queue, a lower bound).
    sent_bytes: u64,
    /// The transport's written count when it was last read: `sent_bytes - written_seen`
    /// bounds the queue from above without reading it again.
    written_seen: u64,
    /// What this client adds to `Metrics::queued_bytes`.
    accounted: u64,
    /// Since when the client has been over its bound (a packet refused for it).
    over_since: Option<Instant>,
    /// A packet was refused since the last [`QueueMeter::check`].
    refused_lately: bool,
    /// The connection was cut as a slow consumer (a long-polling client stays registered
    /// until its heartbeat ends it): not marked over or cut again.
    cut: bool,
    /// The transport's written count at the last check (or when the client went over):
    /// whether it reads at all.
    written_at_check: u64,
}

impl QueueMeter {
    pub fn new(
        metrics: Arc<Metrics>,
        socket_bound: usize,
        instance_bound: usize,
        slow_timeout: Duration,
    ) -> QueueMeter {
        QueueMeter {
            metrics,
            socket_bound: socket_bound as u64,
            instance_bound: instance_bound as u64,
            slow_timeout,
            sent_bytes: 0,
            written_seen: 0,
            accounted: 0,
            over_since: None,
            refused_lately: false,
            cut: false,
            written_at_check: 0,
        }
    }

    /// Bytes handed to the socket and not yet written to the network (0 when the transport
    /// does not say).
    pub fn queued_bytes(&mut self, transport: &dyn Outlet) -> u64 {
        let Some(written) = transport.written() else {
            self.written_seen = self.sent_bytes;
            return 0;
        };
        self.written_seen = written;
        // The written count includes framing and the transport's own packets; once it
        // passes what was handed over, the queue is empty: start counting from there.
        if written >= self.sent_bytes {
            self.sent_bytes = written;
        }
        self.sent_bytes - written
    }

    /// At least what waits in the socket's queue, and at most [`RECHECK_BYTES`] more.
    fn queued_estimate(&mut self, transport: &dyn Outlet) -> u64 {
        let estimate = self.sent_bytes.saturating_sub(self.written_seen);
        if estimate <= RECHECK_BYTES {
            estimate
        } else {
            self.queued_bytes(transport)
        }
    }

    /// Whether a packet of `size` bytes fits the socket's byte bound and the instance's now
    /// (one packet always fits an empty queue while the instance has room). An estimate
    /// that says no is checked against the transport's count before the packet is refused.
    pub fn fits(&mut self, size: u64, transport: &dyn Outlet) -> bool {
        let bound = self.socket_bound;
        let own = |queued: u64| queued == 0 || queued + size <= bound;
        let queued = self.queued_estimate(transport);
        let own_ok = own(queued) || own(self.queued_bytes(transport));
        own_ok && self.instance_has_room(size, transport)
    }

    /// Whether `size` more bytes fit under `max_queued_bytes` (this client's share brought
    /// up to date first, exactly if the estimate says no).
    fn instance_has_room(&mut self, size: u64, transport: &dyn Outlet) -> bool {
        let room =
            |m: &Self| m.metrics.queued_bytes.load(Ordering::Relaxed) + size <= m.instance_bound;
        self.account(transport);
        if room(self) {
            return true;
        }
        self.account_exactly(transport);
        room(self)
    }

    /// A packet of `size` bytes was handed to the socket.
    pub fn sent(&mut self, size: u64) {
        self.sent_bytes += size;
    }

    /// A packet of `bytes` handed on earlier was refused by the socket: its bytes leave the
    /// queue, and the client is over its bound.
    pub fn refused(&mut self, bytes: u64, transport: &dyn Outlet) {
        self.sent_bytes = self.sent_bytes.saturating_sub(bytes);
        self.went_over(transport);
    }

    /// Bring this client's share of `Metrics::queued_bytes` up to date: its socket queue,
    /// where every packet is this client's own copy. (Logs kept in a pause buffer are
    /// records shared with history and every other client: bounded per client by
    /// `pause_buffer_bytes`, they would overstate memory here, and let paused sockets fill
    /// the instance's bound.)
    pub fn account(&mut self, transport: &dyn Outlet) {
        let now = self.queued_estimate(transport);
        self.set_accounted(now);
    }

    /// This client's bytes in its socket's queue, as last accounted.
    pub fn accounted(&self) -> u64 {
        self.accounted
    }

    /// [`QueueMeter::account`] from the transport's count, not an estimate.
    pub fn account_exactly(&mut self, transport: &dyn Outlet) {
        let now = self.queued_bytes(transport);
        self.set_accounted(now);
    }

    fn set_accounted(&mut self, now: u64) {
        if now >= self.accounted {
            self.metrics
                .queued_bytes
                .fetch_add(now - self.accounted, Ordering::Relaxed);
        } else {
            self.metrics
                .queued_bytes
                .fetch_sub(self.accounted - now, Ordering::Relaxed);
        }
        self.accounted = now;
    }

    /// A packet was refused: the client is over its bound from now (if it was not already).
    pub fn went_over(&mut self, transport: &dyn Outlet) {
        if self.cut {
            return;
        }
        self.refused_lately = true;
        if self.over_since.is_none() {
            self.over_since = Some(Instant::now());
            self.written_at_check = transport.written().unwrap_or(0);
        }
    }

    /// A packet put in the socket's queue at once was taken: the client keeps up.
    pub fn taken(&mut self) {
        self.over_since = None;
    }

    /// Whether this client has been refused packets and not caught up since.
    pub fn is_over_bound(&self) -> bool {
        self.over_since.is_some()
    }

    /// For a client that is over its bound: clear the mark once its queue has drained or it
    /// reads with nothing refused since the last check; past `slow_consumer_timeout_ms`,
    /// say it must be cut (it is then marked cut, and never marked over again).
    pub fn check(&mut self, now: Instant, transport: &dyn Outlet) -> SlowCheck {
        let Some(since) = self.over_since else {
            return SlowCheck::Fine;
        };
        // (A packet handed to the emitter says nothing: the socket may refuse it later.)
        let refused_lately = std::mem::take(&mut self.refused_lately);
        let written = transport.written();
        let reads = written.is_some_and(|w| w > self.written_at_check);
        self.written_at_check = written.unwrap_or(0);
        // The written count includes framing, pings and events sent outside the estimate,
        // so with tiny logs an estimate of 0 alone does not prove a drained queue.
        let drained = self.queued_bytes(transport) == 0 && written.is_some();
        if !refused_lately && (drained || reads) {
            self.over_since = None;
            return SlowCheck::Fine;
        }
        let over_for = now.saturating_duration_since(since);
        if over_for < self.slow_timeout {
            return SlowCheck::StillOver;
        }
        self.cut = true;
        self.over_since = None;
        SlowCheck::Cut { over_for }
    }
}

impl Drop for QueueMeter {
    /// A client that goes away takes its share of the instance's queued bytes with it.
    fn drop(&mut self) {
        self.metrics
            .queued_bytes
            .fetch_sub(self.accounted, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::delivery::packet::{Packet, Unsent};

    /// A transport that only reports what it has written, and how often it was asked.
    #[derive(Default)]
    struct Written {
        bytes: Mutex<Option<u64>>,
        reads: AtomicUsize,
    }

    impl Written {
        fn set(&self, bytes: u64) {
            *self.bytes.lock().unwrap() = Some(bytes);
        }
    }

    impl Outlet for Written {
        fn send(&self, _: Packet) -> Result<(), Unsent> {
            unreachable!("the meter never sends")
        }
        fn send_now(&self, _: Packet) -> Result<(), Unsent> {
            unreachable!("the meter never sends")
        }
        fn is_connected(&self) -> bool {
            true
        }
        fn written(&self) -> Option<u64> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            *self.bytes.lock().unwrap()
        }
    }

    fn meter(socket_bound: usize) -> QueueMeter {
        QueueMeter::new(
            Arc::new(Metrics::default()),
            socket_bound,
            usize::MAX / 2,
            Duration::from_secs(2),
        )
    }

    #[test]
    fn the_transport_count_is_read_only_when_the_estimate_could_matter() {
        let t = Written::default();
        t.set(0);
        let mut m = meter(usize::MAX / 2);
        let size = 100u64;
        let per_read = RECHECK_BYTES / size;
        // The transport keeps up: each packet is written as soon as it is handed over.
        for i in 1..=10 * per_read {
            assert!(m.fits(size, &t));
            m.sent(size);
            m.account(&t);
            t.set(i * size);
        }
        let reads = t.reads.load(Ordering::Relaxed);
        assert!(
            reads <= 2 * 10 + 2,
            "{reads} reads for {} packets",
            10 * per_read
        );
    }

    #[test]
    fn a_socket_that_stops_writing_is_bounded_exactly() {
        let t = Written::default();
        t.set(0);
        let mut m = meter(300);
        let mut fitted = 0;
        for _ in 0..10 {
            if m.fits(100, &t) {
                m.sent(100);
                fitted += 1;
            } else {
                m.went_over(&t);
            }
        }
        assert_eq!(fitted, 3);
        assert!(m.is_over_bound());
        // One packet always fits an empty queue, however large.
        let mut m = meter(10);
        assert!(m.fits(1000, &t));
    }

    #[test]
    fn a_drained_queue_clears_the_mark() {
        let t = Written::default();
        t.set(0);
        let mut m = meter(10);
        m.sent(30);
        m.went_over(&t);
        t.set(1 << 20);
        let t0 = Instant::now();
        // The first check still saw a refusal since the one before; the next finds it drained.
        assert_eq!(
            m.check(t0 + Duration::from_secs(1), &t),
            SlowCheck::StillOver
        );
        assert_eq!(m.check(t0 + Duration::from_secs(2), &t), SlowCheck::Fine);
        assert!(!m.is_over_bound());
    }

    #[test]
    fn tiny_logs_do_not_hide_a_stuck_queue_behind_framing_bytes() {
        // The written count runs ahead of the estimate (framing, pings, events sent outside
        // it), so the estimate reads 0 while packets are still being refused.
        let t = Written::default();
        t.set(1 << 20);
        let mut m = meter(usize::MAX / 2);
        let t0 = Instant::now();
        let mut verdict = SlowCheck::StillOver;
        for second in 0..4u64 {
            m.sent(10);
            m.refused(10, &t);
            verdict = m.check(t0 + Duration::from_secs(second), &t);
            if verdict != SlowCheck::StillOver {
                break;
            }
        }
        assert!(matches!(verdict, SlowCheck::Cut { .. }), "{verdict:?}");
        // Refusals after the cut do not mark it again.
        m.refused(10, &t);
        assert!(!m.is_over_bound());
    }

    #[test]
    fn a_meter_that_goes_takes_its_share_of_the_instance_with_it() {
        let t = Written::default();
        t.set(0);
        let metrics = Arc::new(Metrics::default());
        let mut m = QueueMeter::new(metrics.clone(), 1000, 1000, Duration::from_secs(1));
        m.sent(400);
        m.account(&t);
        assert_eq!(metrics.queued_bytes.load(Ordering::Relaxed), 400);
        // The instance's bound counts everyone's share.
        assert!(!m.fits(700, &t));
        drop(m);
        assert_eq!(metrics.queued_bytes.load(Ordering::Relaxed), 0);
    }
}
