//! One connected client's delivery state, owned by the router thread.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::value::RawValue;
use socketioxide::socket::Sid;

use super::emitter::Refused;
use super::outlet::{Data, Outlet, Packet, Unsent};
use crate::auth::Scope;
use crate::connections::ConnectionInfo;
use crate::log_entry::LogRecord;
use crate::protocol::{ClientError, DropReason, Dropped, event};
use crate::rate_limit::TokenBucket;
use crate::stats::Metrics;
use crate::stats_feed::StatsFeed;

/// Delivery limits shared by all clients.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryLimits {
    pub max_rate: u32,
    pub pause_buffer: usize,
    pub pause_buffer_bytes: usize,
    /// Bytes a socket may have queued (handed over, not yet written to the network).
    pub socket_queue_bytes: usize,
    /// How long a client may stay over its queue bound before it is cut.
    pub slow_consumer_timeout: Duration,
    /// Bytes queued for all clients together (see `Metrics::queued_bytes`).
    pub max_queued_bytes: usize,
    pub batch_max_logs: usize,
    /// A batch-mode client gets at most one `log:batch` per interval (unless
    /// `batch_max_logs` are waiting); the first after a quiet interval goes out at once.
    pub batch_interval: Duration,
}

impl DeliveryLimits {
    pub fn from_config(config: &crate::config::Config) -> DeliveryLimits {
        DeliveryLimits {
            max_rate: config.rate_limit,
            pause_buffer: config.pause_buffer,
            pause_buffer_bytes: config.pause_buffer_bytes,
            socket_queue_bytes: config.socket_queue_bytes,
            slow_consumer_timeout: Duration::from_millis(config.slow_consumer_timeout_ms),
            max_queued_bytes: config.max_queued_bytes,
            batch_max_logs: config.batch_max_logs,
            batch_interval: Duration::from_millis(config.batch_max_delay_ms),
        }
    }
}

/// The share of `batch_max_delay_ms` a log may wait in a batch-mode outbox, counted from
/// when this instance received it. The rest of the window is left for the way to the client
/// (the socket's writer task, the kernel, the client's read), so that the seed's "50 logs or
/// 100 ms" and its "latency < 100 ms" hold together under load: the ingest → client p99 stays
/// under the window while a message still carries about a window's worth of logs
/// (BENCHMARKS.md §8).
pub const OUTBOX_HOLD_SHARE: f64 = 0.8;

/// How far the estimate of a socket's queue may run ahead of the transport's count before
/// the count is read again (see [`Client::queued_estimate`]). Each client's share of
/// `max_queued_bytes` may be overstated by this much until then; with 10 000 clients that is
/// at most 40 MB of a 256 MiB bound, and the router refreshes every share exactly once the
/// total passes half the bound.
pub const RECHECK_BYTES: u64 = 4096;

/// How long a client registered by a handshake may stay unconnected before it is pruned.
pub const HANDSHAKE_GRACE: Duration = Duration::from_secs(30);

pub struct Client {
    pub sid: Sid,
    outlet: Box<dyn Outlet>,
    /// The devices this client may see (from its token).
    scope: Arc<Scope>,
    pub info: Arc<ConnectionInfo>,
    metrics: Arc<Metrics>,
    /// `system:stats`, sent with this client's logs when its round is near.
    stats: Option<Arc<StatsFeed>>,
    limits: DeliveryLimits,
    /// `log:batch` arrays instead of one `log:new` per log.
    batch_mode: bool,
    /// Events carry the offset as a last argument (resumable subscriptions).
    with_offsets: bool,
    /// A replay of history is under way: live logs are held until it ends.
    replaying: bool,
    /// Logs at or before this position are not sent: the client has them already (it
    /// resumed from an offset this instance had not reached).
    skip_through: Option<crate::log_entry::Position>,
    limiter: TokenBucket,
    paused: bool,
    /// Admitted logs held while paused, oldest first; at most `limits.pause_buffer` logs and
    /// `limits.pause_buffer_bytes` bytes.
    held: VecDeque<Arc<LogRecord>>,
    held_bytes: usize,
    /// Payload bytes handed to the socket, counted from where the socket's written bytes
    /// last caught up (so `sent_bytes - written` is what waits in its queue, a lower bound).
    sent_bytes: u64,
    /// Since when the client has been over its queue bound (a packet refused for it).
    over_since: Option<Instant>,
    /// A packet was refused since the last [`Client::check_slow`].
    refused_lately: bool,
    /// The connection was cut as a slow consumer (a long-polling client stays registered
    /// until its heartbeat ends it): not marked or cut again.
    cut: bool,
    /// The transport's written-bytes count at the last [`Client::check_slow`] (or when the
    /// client went over): whether it reads at all.
    written_at_check: u64,
    /// What this client adds to `Metrics::queued_bytes`.
    accounted: u64,
    /// The transport's written-bytes count when it was last read: `sent_bytes -
    /// written_seen` bounds the queue from above without reading it again.
    written_seen: u64,
    /// Not yet reported drops, indexed like [`DropReason::ALL`].
    pending_drops: [u64; DropReason::ALL.len()],
    /// When the handshake registered this client (see [`Client::is_stale`]).
    registered_at: Instant,
    /// Batch mode: admitted logs waiting for the next `log:batch`, oldest first.
    outbox: Vec<Arc<LogRecord>>,
    /// Batch mode: when the last `log:batch` went out.
    last_batch_at: Option<Instant>,
}

impl Client {
    pub fn new(
        outlet: Box<dyn Outlet>,
        sid: Sid,
        scope: Arc<Scope>,
        info: Arc<ConnectionInfo>,
        metrics: Arc<Metrics>,
        limits: DeliveryLimits,
        now: Instant,
    ) -> Client {
        Client {
            sid,
            outlet,
            scope,
            info,
            metrics,
            stats: None,
            limits,
            batch_mode: false,
            with_offsets: false,
            replaying: false,
            skip_through: None,
            limiter: TokenBucket::new(limits.max_rate, limits.max_rate, now),
            paused: false,
            held: VecDeque::new(),
            held_bytes: 0,
            sent_bytes: 0,
            over_since: None,
            refused_lately: false,
            cut: false,
            written_at_check: 0,
            accounted: 0,
            written_seen: 0,
            pending_drops: [0; DropReason::ALL.len()],
            registered_at: now,
            outbox: Vec::new(),
            last_batch_at: None,
        }
    }

    /// Send this client's `system:stats` with its logs when its round is near (see
    /// `stats_feed`).
    pub fn with_stats(mut self, feed: Arc<StatsFeed>) -> Client {
        self.stats = Some(feed);
        self
    }

    /// A client registered during a handshake whose CONNECT never completed (so no
    /// disconnect will ever be reported for it).
    pub fn is_stale(&self, now: Instant) -> bool {
        // (Checked once per client, HANDSHAKE_GRACE after it registered.)
        !self.outlet.is_connected()
            && now.saturating_duration_since(self.registered_at) > HANDSHAKE_GRACE
    }

    /// Apply a (new) subscription's delivery options; returns the effective rate. Logs
    /// the previous subscription already admitted are sent first.
    pub fn configure(
        &mut self,
        batch_mode: bool,
        with_offsets: bool,
        rate: Option<u32>,
        now: Instant,
    ) -> u32 {
        self.flush_outbox(now, true);
        let rate = rate
            .unwrap_or(self.limits.max_rate)
            .clamp(1, self.limits.max_rate);
        self.batch_mode = batch_mode;
        self.with_offsets = with_offsets;
        self.limiter.set_rate(rate, rate);
        rate
    }

    pub fn scope(&self) -> &Arc<Scope> {
        &self.scope
    }

    /// A refreshed token's scope. What is held for the client (paused, behind a replay, in
    /// the batch window) from devices the new scope excludes is no longer its to receive:
    /// dropped, and reported as `scope_changed`.
    pub fn set_scope(&mut self, scope: Arc<Scope>) {
        let before = self.held.len() + self.outbox.len();
        self.held.retain(|l| scope.matches(&l.device_id));
        self.held_bytes = self.held.iter().map(|l| l.json.get().len()).sum();
        self.outbox.retain(|l| scope.matches(&l.device_id));
        let removed = before - self.held.len() - self.outbox.len();
        self.drop_logs(DropReason::ScopeChanged, removed as u64);
        self.scope = scope;
        self.account();
        self.report_drops(&[DropReason::ScopeChanged]);
    }

    /// Drops not yet reported (the router's tick reports them).
    pub fn has_pending_drops(&self) -> bool {
        self.pending_drops.iter().any(|n| *n > 0)
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    fn drop_logs(&mut self, reason: DropReason, count: u64) {
        if count == 0 {
            return;
        }
        self.pending_drops[reason as usize] += count;
        self.metrics.dropped(reason, count);
    }

    /// `count` logs meant for this client were lost before delivery (a failed plugin call):
    /// counted, and reported at once.
    pub fn lost(&mut self, reason: DropReason, count: u64) {
        self.drop_logs(reason, count);
        self.report_drops(&[reason]);
    }

    /// Skip logs at or before `position` from now on (they are the client's already).
    pub fn skip_through(&mut self, position: crate::log_entry::Position) {
        self.skip_through = Some(position);
    }

    /// Deliver `logs` (this client's matches of one batch), in order.
    pub fn deliver(&mut self, logs: &[Arc<LogRecord>], now: Instant) {
        let mut admitted: Vec<&Arc<LogRecord>> = Vec::with_capacity(logs.len());
        let mut limited = 0;
        let logs = match self.skip_through {
            Some(through) => {
                let first_new = logs
                    .iter()
                    .position(|l| l.stamp.get().is_some_and(|s| s.position > through));
                match first_new {
                    Some(i) => {
                        self.skip_through = None;
                        &logs[i..]
                    }
                    None => &[],
                }
            }
            None => logs,
        };
        for log in logs {
            if self.limiter.try_take(now) {
                admitted.push(log);
            } else {
                limited += 1;
            }
        }
        self.drop_logs(DropReason::RateLimit, limited);
        if self.paused || self.replaying {
            self.hold(admitted.into_iter().cloned());
            return;
        }
        if self.batch_mode {
            self.outbox.extend(admitted.into_iter().cloned());
            self.flush_outbox(now, false);
        } else {
            self.emit_logs(&admitted);
        }
    }

    /// Deliver logs a replay of history found, ahead of the live logs held meanwhile:
    /// rate-limited like live ones, then sent (held if the client is paused). A replay can
    /// outrun the socket: what its queue cannot take now is returned, to be sent later with
    /// [`Client::send_replayed`], rather than dropped.
    pub fn deliver_replay(
        &mut self,
        logs: &[Arc<LogRecord>],
        now: Instant,
    ) -> (usize, Vec<Arc<LogRecord>>) {
        let mut admitted: Vec<Arc<LogRecord>> = Vec::with_capacity(logs.len());
        let mut limited = 0;
        for log in logs {
            if self.limiter.try_take(now) {
                admitted.push(log.clone());
            } else {
                limited += 1;
            }
        }
        self.drop_logs(DropReason::RateLimit, limited);
        if self.paused {
            let n = admitted.len();
            self.hold(admitted.into_iter());
            return (n, Vec::new());
        }
        let sent = self.send_replayed(&admitted);
        (sent, admitted.split_off(sent))
    }

    /// Forget what is held: a new subscription replays history that covers it.
    pub fn discard_held(&mut self) {
        self.held.clear();
        self.held_bytes = 0;
        self.account();
    }

    /// Send already admitted replayed logs until the socket's queue is full; returns how many
    /// went out.
    pub fn send_replayed(&mut self, logs: &[Arc<LogRecord>]) -> usize {
        let refs: Vec<&Arc<LogRecord>> = logs.iter().collect();
        self.emit_packets(&refs, true)
    }

    /// A replay begins: live logs wait behind it.
    pub fn start_replay(&mut self) {
        self.replaying = true;
    }

    /// The replay is done: what was held meanwhile goes out, in order.
    pub fn finish_replay(&mut self) {
        if !self.replaying {
            return;
        }
        self.replaying = false;
        if !self.paused {
            self.release_held();
        }
    }

    fn release_held(&mut self) {
        let held: Vec<Arc<LogRecord>> = self.held.drain(..).collect();
        self.held_bytes = 0;
        let refs: Vec<&Arc<LogRecord>> = held.iter().collect();
        self.emit_logs(&refs);
        self.report_drops(&[DropReason::PauseOverflow]);
    }

    /// Keep logs for a paused client, up to `pause_buffer` logs and `pause_buffer_bytes`;
    /// count the overflow (the newest logs are the ones dropped, so what is kept has no gap).
    fn hold(&mut self, logs: impl Iterator<Item = Arc<LogRecord>>) {
        let mut overflow = 0u64;
        for log in logs {
            let size = log.json.get().len();
            if overflow == 0
                && self.held.len() < self.limits.pause_buffer
                && self.held_bytes + size <= self.limits.pause_buffer_bytes
            {
                self.held_bytes += size;
                self.held.push_back(log);
            } else {
                overflow += 1;
            }
        }
        self.drop_logs(DropReason::PauseOverflow, overflow);
        self.account();
    }

    /// Bytes handed to the socket and not yet written to the network (0 when the transport
    /// does not say).
    fn queued_bytes(&mut self) -> u64 {
        let Some(written) = self.outlet.written() else {
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

    /// At least what waits in the socket's queue, and at most [`RECHECK_BYTES`] more: the
    /// transport's count (a counter the connection's worker thread writes, so reading it is
    /// a cache miss for this thread) is read again only once what was handed over since the
    /// last reading passes that.
    fn queued_estimate(&mut self) -> u64 {
        let estimate = self.sent_bytes.saturating_sub(self.written_seen);
        if estimate <= RECHECK_BYTES {
            estimate
        } else {
            self.queued_bytes()
        }
    }

    /// Whether a packet of `size` bytes fits the socket's byte bound and the instance's now
    /// (one packet always fits an empty queue while the instance has room). An estimate
    /// that says no is checked against the transport's count before the packet is refused.
    fn fits(&mut self, size: usize) -> bool {
        let bound = self.limits.socket_queue_bytes as u64;
        let own = |queued: u64| queued == 0 || queued + size as u64 <= bound;
        let queued = self.queued_estimate();
        let own_ok = own(queued) || own(self.queued_bytes());
        own_ok && self.instance_has_room(size)
    }

    /// Whether `size` more bytes fit under `max_queued_bytes` (this client's share brought
    /// up to date first, exactly if the estimate says no).
    fn instance_has_room(&mut self, size: usize) -> bool {
        let room = |c: &Self| {
            c.metrics.queued_bytes.load(Ordering::Relaxed) + size as u64
                <= c.limits.max_queued_bytes as u64
        };
        self.account();
        if room(self) {
            return true;
        }
        self.account_exactly();
        room(self)
    }

    /// Bring this client's share of `Metrics::queued_bytes` up to date: its socket queue,
    /// where every packet is this client's own copy. (Held logs are records shared with
    /// history and every other client: bounded per client by `pause_buffer_bytes`, they
    /// would overstate memory here, and let paused sockets fill the instance's bound.)
    pub fn account(&mut self) {
        let now = self.queued_estimate();
        self.set_accounted(now);
    }

    /// [`Client::account`] from the transport's count, not an estimate.
    pub fn account_exactly(&mut self) {
        let now = self.queued_bytes();
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
    fn went_over(&mut self) {
        if self.cut {
            return;
        }
        self.refused_lately = true;
        if self.over_since.is_none() {
            self.over_since = Some(Instant::now());
            self.written_at_check = self.outlet.written().unwrap_or(0);
        }
    }

    /// Whether this client has been refused packets and not caught up since.
    pub fn is_over(&self) -> bool {
        self.over_since.is_some()
    }

    /// For a client that is over its bound: clear it once its queue has drained; past
    /// `slow_consumer_timeout`, cut its connection (reported, counted). Returns whether the
    /// client is still over (to be checked again).
    pub fn check_slow(&mut self, now: Instant) -> bool {
        let Some(since) = self.over_since else {
            return false;
        };
        // Caught up: its queue drained, or it reads and nothing was refused for a while. (A
        // packet handed to the emitter says nothing: the socket may refuse it later.)
        let refused_lately = std::mem::take(&mut self.refused_lately);
        let written = self.outlet.written();
        let reads = written.is_some_and(|w| w > self.written_at_check);
        self.written_at_check = written.unwrap_or(0);
        // (The written count includes framing, pings and events sent outside the estimate,
        // so with tiny logs an estimate of 0 alone does not prove a drained queue.)
        let drained = self.queued_bytes() == 0 && written.is_some();
        if !refused_lately && (drained || reads) {
            self.over_since = None;
            return false;
        }
        if now.saturating_duration_since(since) < self.limits.slow_consumer_timeout {
            return true;
        }
        tracing::warn!(sid = %self.sid, user = %self.info.user_id, over_s = now.saturating_duration_since(since).as_secs(), "slow consumer disconnected (slow_consumer_timeout_ms)");
        let error = ClientError::new(
            crate::protocol::Code::SlowConsumer,
            format!(
                "your connection stayed over its queue bound for {} ms (slow_consumer_timeout_ms); disconnected",
                self.limits.slow_consumer_timeout.as_millis()
            ),
        );
        // Into the socket's queue now (when it has room), ahead of the cut.
        if let Some(raw) = to_raw(&error) {
            let _ = self
                .outlet
                .send_now(Packet::event(event::ERROR, Data::Owned(raw)));
        }
        self.metrics
            .slow_disconnects
            .fetch_add(1, Ordering::Relaxed);
        self.outlet.cut();
        self.cut = true;
        self.over_since = None;
        false
    }

    /// When the batch-mode outbox is due, if it holds anything: a window after the last
    /// `log:batch`, or earlier, by the time its oldest log has spent [`OUTBOX_HOLD_SHARE`]
    /// of the window in this instance since it was received (so the whole path from ingest
    /// to the client stays within the window), but never sooner than half a window after the
    /// last `log:batch`: a backlog of old logs does not turn into a message per evaluation.
    pub fn outbox_due(&self) -> Option<Instant> {
        let oldest = self.outbox.first()?;
        let window = self.limits.batch_interval;
        let after = |t: Instant, d: Duration| t.checked_add(d).unwrap_or(t);
        let by_age = after(oldest.received, window.mul_f64(OUTBOX_HOLD_SHARE));
        Some(match self.last_batch_at {
            None => oldest.received,
            Some(last) => after(last, window).min(by_age).max(after(last, window / 2)),
        })
    }

    /// Emit the batch-mode outbox if it is due (or `force`). Returns whether logs are still
    /// waiting, i.e. whether the router must call again later.
    pub fn flush_outbox(&mut self, now: Instant, force: bool) -> bool {
        if self.outbox.is_empty() {
            return false;
        }
        let due = force
            || self.outbox.len() >= self.limits.batch_max_logs
            || self.last_batch_at.is_none()
            || self.outbox_due().is_some_and(|at| now >= at);
        if !due {
            return true;
        }
        let logs = std::mem::take(&mut self.outbox);
        let refs: Vec<&Arc<LogRecord>> = logs.iter().collect();
        self.emit_logs(&refs);
        self.last_batch_at = Some(now);
        false
    }

    /// Emit admitted logs: one `log:batch` per `batch_max_logs` in batch mode, else one
    /// `log:new` each. What the socket cannot queue is counted as `slow_consumer`.
    fn emit_logs(&mut self, logs: &[&Arc<LogRecord>]) {
        self.emit_packets(logs, false);
    }

    /// Emit `logs` as packets (one `log:batch` per `batch_max_logs` in batch mode, else one
    /// `log:new` each). A packet the socket cannot queue is dropped as `slow_consumer`, or,
    /// with `stop_when_full`, ends the emission. Returns how many logs were sent (or held
    /// back by a closed socket).
    fn emit_packets(&mut self, logs: &[&Arc<LogRecord>], stop_when_full: bool) -> usize {
        if logs.is_empty() {
            return 0;
        }
        let per_packet = if self.batch_mode {
            self.limits.batch_max_logs.max(1)
        } else {
            1
        };
        let mut delivered = 0usize;
        // Sent with `send_now`, so counted here (the emitter counts what it emits).
        let mut sent_now = 0u64;
        let mut lost = 0u64;
        let mut refused = false;
        for chunk in logs.chunks(per_packet) {
            let (event, data) = if self.batch_mode {
                (event::BATCH, Data::Owned(json_array(chunk)))
            } else {
                (event::NEW, Data::Log(Arc::clone(chunk[0])))
            };
            let offset_of = match chunk.last() {
                Some(last) if self.with_offsets => Some(Arc::clone(last)),
                _ => None,
            };
            let mut packet = Packet {
                event,
                data,
                offset_of,
                logs: chunk.len() as u32,
                bytes: 0,
                report: None,
            };
            // What the packet carries at least: `42["event",data,offset]`.
            let size = packet.data().get().len()
                + event.len()
                + 6
                + packet.offset().map_or(0, |o| o.get().len() + 1);
            packet.bytes = size as u64;
            let sent = if !self.fits(size) {
                Err(Unsent::Full)
            } else if stop_when_full {
                let sent = self.outlet.send_now(packet);
                if sent.is_ok() {
                    sent_now += chunk.len() as u64;
                }
                sent
            } else {
                self.outlet.send(packet)
            };
            match sent {
                Ok(()) => {
                    self.sent_bytes += size as u64;
                    delivered += chunk.len();
                }
                Err(Unsent::Closed) => return logs.len(),
                Err(Unsent::Full) => {
                    refused = true;
                    if stop_when_full {
                        break;
                    }
                    lost += chunk.len() as u64;
                }
            }
        }
        if refused {
            self.went_over();
        } else if sent_now > 0 {
            // The socket took it (a packet only handed on may still be refused).
            self.over_since = None;
        }
        self.account();
        self.info
            .message_count
            .fetch_add(delivered as u64, Ordering::Relaxed);
        self.metrics.delivered(sent_now);
        self.drop_logs(DropReason::SlowConsumer, lost);
        if delivered > 0 {
            self.stats_ride_along();
        }
        delivered + lost as usize
    }

    pub fn pause(&mut self) {
        self.paused = true;
        // Admitted but not yet sent: these are held like anything that arrives now.
        let waiting = std::mem::take(&mut self.outbox);
        self.hold(waiting.into_iter());
    }

    /// Deliver everything held, in order (unless a replay is still under way), then report
    /// any pause overflow at once.
    pub fn resume(&mut self) {
        if !self.paused {
            return;
        }
        self.paused = false;
        if !self.replaying {
            self.release_held();
        }
    }

    /// Emit `log:dropped` for each reason with unreported drops. Called at most once a
    /// second per client by the router, and on resume. A report that cannot be queued
    /// stays pending for the next round, so no count is lost.
    pub fn report_drops(&mut self, reasons: &[DropReason]) {
        for &reason in reasons {
            let count = self.pending_drops[reason as usize];
            if count == 0 {
                continue;
            }
            let Some(raw) = to_raw(&Dropped { count, reason }) else {
                continue;
            };
            let mut packet = Packet::event(event::DROPPED, Data::Owned(raw));
            // Reported again if the socket refuses it.
            packet.report = Some((reason, count));
            if self.outlet.send(packet).is_ok() {
                self.pending_drops[reason as usize] = 0;
            }
        }
    }

    /// The reports due on the periodic tick: a paused client hears about pause overflow
    /// only when it resumes.
    pub fn report_periodic_drops(&mut self) {
        if self.paused {
            self.report_drops(&[DropReason::RateLimit, DropReason::SlowConsumer]);
        } else {
            self.report_drops(&DropReason::ALL);
        }
    }

    /// Emit an event serialized once for many clients (device status, shared errors).
    pub fn send_raw(&self, event: &'static str, data: &Arc<RawValue>) -> bool {
        let data = Data::Shared(Arc::clone(data));
        self.outlet.send(Packet::event(event, data)).is_ok()
    }

    /// Emit any event to this client; best effort.
    pub fn emit<T: Serialize + ?Sized>(&self, event: &'static str, data: &T) -> bool {
        to_raw(data).is_some_and(|raw| {
            let packet = Packet::event(event, Data::Owned(raw));
            self.outlet.send(packet).is_ok()
        })
    }

    /// This client's `system:stats`, right after logs it is being sent, when its next round
    /// is near: the same write carries both.
    fn stats_ride_along(&self) {
        let Some(feed) = &self.stats else {
            return;
        };
        if let Some(payload) = feed.ride_along(&self.info.stats, Instant::now()) {
            let packet = Packet::event(event::SYSTEM_STATS, Data::Shared(payload));
            let _ = self.outlet.send(packet);
        }
    }

    /// The socket refused a packet handed to it earlier (see `emitter`): count it as if it
    /// had been refused at once. Its logs are `slow_consumer` drops, its bytes leave the
    /// queue estimate, and a refused drop report is kept to be reported again.
    pub fn refused(&mut self, refused: &Refused) {
        self.sent_bytes = self.sent_bytes.saturating_sub(refused.bytes);
        if refused.logs > 0 {
            let logs = u64::from(refused.logs);
            self.info.message_count.fetch_sub(logs, Ordering::Relaxed);
            self.drop_logs(DropReason::SlowConsumer, logs);
        }
        self.went_over();
        if let Some((reason, count)) = refused.report {
            self.pending_drops[reason as usize] += count;
        }
        self.account();
    }

    /// Emit `error`.
    pub fn error(&self, error: &ClientError) -> bool {
        self.emit(event::ERROR, error)
    }
}

impl Drop for Client {
    /// A client that goes away takes its share of the instance's queued bytes with it.
    fn drop(&mut self) {
        self.metrics
            .queued_bytes
            .fetch_sub(self.accounted, Ordering::Relaxed);
    }
}

/// Serialize once, for sharing among clients.
pub fn to_raw<T: Serialize + ?Sized>(data: &T) -> Option<Box<RawValue>> {
    serde_json::value::to_raw_value(data).ok()
}

/// `[a,b,c]` from the logs' own JSON, without re-serializing them.
fn json_array(logs: &[&Arc<LogRecord>]) -> Box<RawValue> {
    let mut text =
        String::with_capacity(logs.iter().map(|l| l.json.get().len() + 1).sum::<usize>() + 2);
    text.push('[');
    for (i, log) in logs.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(log.json.get());
    }
    text.push(']');
    // Valid JSON values joined by commas inside brackets are a valid JSON array.
    RawValue::from_string(text)
        .unwrap_or_else(|_| RawValue::from_string("[]".to_owned()).expect("`[]` is valid JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;

    /// Records what was sent; refuses with `Full` once `room` events are queued.
    #[derive(Clone, Default)]
    struct Recorder {
        sent: Arc<Mutex<Vec<(String, String)>>>,
        room: Arc<Mutex<Option<usize>>>,
        closed: Arc<AtomicBool>,
        /// Bytes "written to the network", when the test plays a metered transport.
        written: Arc<Mutex<Option<u64>>>,
        /// How often `written` was read.
        written_reads: Arc<std::sync::atomic::AtomicUsize>,
        cut: Arc<AtomicBool>,
    }

    impl Outlet for Recorder {
        fn send(&self, packet: Packet) -> Result<(), Unsent> {
            if self.closed.load(Ordering::Relaxed) {
                return Err(Unsent::Closed);
            }
            let mut sent = self.sent.lock().unwrap();
            if self.room.lock().unwrap().is_some_and(|r| sent.len() >= r) {
                return Err(Unsent::Full);
            }
            let data = match packet.offset() {
                Some(offset) => format!("[{},{}]", packet.data().get(), offset.get()),
                None => packet.data().get().to_owned(),
            };
            sent.push((packet.event.to_owned(), data));
            Ok(())
        }
        fn send_now(&self, packet: Packet) -> Result<(), Unsent> {
            self.send(packet)
        }
        fn is_connected(&self) -> bool {
            !self.closed.load(Ordering::Relaxed)
        }
        fn written(&self) -> Option<u64> {
            self.written_reads.fetch_add(1, Ordering::Relaxed);
            *self.written.lock().unwrap()
        }
        fn cut(&self) {
            self.cut.store(true, Ordering::Relaxed);
        }
    }

    impl Recorder {
        fn events(&self) -> Vec<(String, String)> {
            self.sent.lock().unwrap().clone()
        }
        fn messages(&self, name: &str) -> Vec<String> {
            self.events()
                .into_iter()
                .filter(|(e, _)| e == name)
                .map(|(_, d)| d)
                .collect()
        }
    }

    fn limits(rate: u32, pause_buffer: usize) -> DeliveryLimits {
        DeliveryLimits {
            max_rate: rate,
            pause_buffer,
            pause_buffer_bytes: usize::MAX,
            socket_queue_bytes: usize::MAX,
            slow_consumer_timeout: Duration::from_secs(10),
            max_queued_bytes: usize::MAX / 2,
            batch_max_logs: 3,
            batch_interval: Duration::from_millis(100),
        }
    }

    fn client(rec: &Recorder, limits: DeliveryLimits, now: Instant) -> Client {
        let info = Arc::new(ConnectionInfo {
            id: "c".into(),
            user_id: "u".into(),
            ip: "127.0.0.1".into(),
            connected_at: std::time::SystemTime::now(),
            message_count: Default::default(),
            stats: Default::default(),
            subscription: Default::default(),
        });
        Client::new(
            Box::new(rec.clone()),
            Sid::new(),
            Arc::new(Scope::all()),
            info,
            Arc::new(Metrics::default()),
            limits,
            now,
        )
    }

    fn logs(n: usize) -> Vec<Arc<LogRecord>> {
        (0..n)
            .map(|i| {
                let v = serde_json::json!({"deviceId": "d", "message": i.to_string(), "id": i.to_string()});
                Arc::new(LogRecord::from_value(v).unwrap())
            })
            .collect()
    }

    /// A client on a metered transport that has written `written` bytes, cut after 2 s over
    /// its bound.
    fn metered_client(written: u64) -> (Recorder, Instant, Client) {
        let rec = Recorder::default();
        *rec.written.lock().unwrap() = Some(written);
        let t0 = Instant::now();
        let mut l = limits(1000, 100);
        l.slow_consumer_timeout = Duration::from_secs(2);
        let c = client(&rec, l, t0);
        (rec, t0, c)
    }

    /// The socket refused a packet of `logs` logs and `bytes` bytes after the hand-off.
    fn refusal(c: &Client, logs: u32, bytes: u64) -> Refused {
        Refused {
            sid: c.sid,
            logs,
            bytes,
            report: None,
        }
    }

    fn dropped(rec: &Recorder) -> Vec<Dropped> {
        rec.messages(event::DROPPED)
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    #[test]
    fn rate_limit_drops_add_up_and_are_reported() {
        let rec = Recorder::default();
        let t0 = Instant::now();
        let mut c = client(&rec, limits(5, 100), t0);
        c.deliver(&logs(8), t0);
        assert_eq!(rec.messages(event::NEW).len(), 5);
        c.report_periodic_drops();
        assert_eq!(
            dropped(&rec),
            vec![Dropped {
                count: 3,
                reason: DropReason::RateLimit
            }]
        );
        c.report_periodic_drops();
        assert_eq!(dropped(&rec).len(), 1, "a count is reported once");
    }

    #[test]
    fn pause_holds_in_order_and_reports_overflow_on_resume() {
        let rec = Recorder::default();
        let t0 = Instant::now();
        let mut c = client(&rec, limits(100, 4), t0);
        c.pause();
        c.deliver(&logs(6), t0);
        c.report_periodic_drops();
        assert!(rec.events().is_empty(), "nothing while paused");
        c.resume();
        let got: Vec<String> = rec
            .messages(event::NEW)
            .iter()
            .map(|j| {
                serde_json::from_str::<serde_json::Value>(j).unwrap()["message"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(got, ["0", "1", "2", "3"]);
        assert_eq!(
            dropped(&rec),
            vec![Dropped {
                count: 2,
                reason: DropReason::PauseOverflow
            }]
        );
    }

    #[test]
    fn batch_mode_sends_the_first_at_once_then_gathers_per_window() {
        let rec = Recorder::default();
        let t0 = Instant::now();
        let mut c = client(&rec, limits(100, 100), t0);
        c.configure(true, false, None, t0);
        c.deliver(&logs(1), t0);
        assert_eq!(rec.messages(event::BATCH).len(), 1, "leading edge");
        c.deliver(&logs(2), t0 + Duration::from_millis(10));
        assert!(c.outbox_due().is_some());
        assert!(
            c.flush_outbox(t0 + Duration::from_millis(50), false),
            "not due"
        );
        assert!(!c.flush_outbox(t0 + Duration::from_millis(100), false));
        let batches = rec.messages(event::BATCH);
        assert_eq!(batches.len(), 2);
        let second: serde_json::Value = serde_json::from_str(&batches[1]).unwrap();
        assert_eq!(second.as_array().unwrap().len(), 2);
    }

    #[test]
    fn a_log_waits_in_the_outbox_at_most_its_share_of_the_window_since_it_was_received() {
        let rec = Recorder::default();
        let t0 = Instant::now() + Duration::from_secs(1);
        let ms = Duration::from_millis;
        let mut c = client(&rec, limits(100, 100), t0);
        c.configure(true, false, None, t0);
        c.deliver(&logs(1), t0);
        let received_at = |at: Instant| {
            let mut log =
                LogRecord::from_value(serde_json::json!({"deviceId": "d", "message": "x"}))
                    .unwrap();
            log.received = at;
            vec![Arc::new(log)]
        };
        // Received just now: due a window after the last batch.
        c.deliver(&received_at(t0 + ms(60)), t0 + ms(60));
        assert_eq!(c.outbox_due(), Some(t0 + ms(100)));
        assert!(c.flush_outbox(t0 + ms(90), false), "not due yet");
        assert!(!c.flush_outbox(t0 + ms(100), false));
        // Received 40 ms before it reached the router (a long ingest, a busy router): due
        // once it has been in the instance for 80 ms, before the window ends.
        c.deliver(&received_at(t0 + ms(70)), t0 + ms(110));
        assert_eq!(c.outbox_due(), Some(t0 + ms(150)));
        assert!(c.flush_outbox(t0 + ms(149), false));
        assert!(!c.flush_outbox(t0 + ms(150), false));
        assert_eq!(rec.messages(event::BATCH).len(), 3);
        assert_eq!(c.outbox_due(), None);
        // A log that was already old when it arrived (a backlog) is not sent sooner than
        // half a window after the last batch.
        c.deliver(&received_at(t0 - ms(500)), t0 + ms(160));
        assert_eq!(c.outbox_due(), Some(t0 + ms(200)));
    }

    #[test]
    fn live_logs_wait_behind_a_replay_and_carry_offsets() {
        use crate::log_entry::{Position, Stamp};
        let rec = Recorder::default();
        let t0 = Instant::now();
        let mut c = client(&rec, limits(100, 100), t0);
        c.configure(false, true, None, t0);
        let all = logs(4);
        for (i, l) in all.iter().enumerate() {
            let _ = l.stamp.set(Stamp::new(
                "e",
                Position {
                    major: i as u64 + 1,
                    minor: 0,
                },
            ));
        }
        c.start_replay();
        c.deliver(&all[2..], t0); // live, during the replay
        assert!(rec.events().is_empty());
        assert!(c.deliver_replay(&all[..2], t0).1.is_empty());
        c.finish_replay();
        let sent = rec.messages(event::NEW);
        let offsets: Vec<String> = sent
            .iter()
            .map(|pair| {
                serde_json::from_str::<serde_json::Value>(pair).unwrap()[1]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            offsets,
            ["e:1-0", "e:2-0", "e:3-0", "e:4-0"],
            "replay first, then live"
        );
    }

    #[test]
    fn a_client_resumed_ahead_of_this_reader_is_not_sent_what_it_has() {
        use crate::log_entry::{Position, Stamp};
        let rec = Recorder::default();
        let t0 = Instant::now();
        let mut c = client(&rec, limits(100, 100), t0);
        let all = logs(4);
        for (i, l) in all.iter().enumerate() {
            let _ = l.stamp.set(Stamp::new(
                "e",
                Position {
                    major: i as u64 + 1,
                    minor: 0,
                },
            ));
        }
        c.skip_through(Position { major: 2, minor: 0 });
        c.deliver(&all[..1], t0);
        c.deliver(&all[1..], t0);
        c.deliver(&all[..1], t0); // past the seam: no longer filtered
        let got: Vec<String> = rec
            .messages(event::NEW)
            .iter()
            .map(|j| {
                serde_json::from_str::<serde_json::Value>(j).unwrap()["message"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(got, ["2", "3", "0"]);
    }

    #[test]
    fn a_narrower_scope_drops_what_is_held_from_devices_it_excludes() {
        let rec = Recorder::default();
        let t0 = Instant::now();
        let mut c = client(&rec, limits(100, 100), t0);
        c.pause();
        let mixed: Vec<Arc<LogRecord>> = ["a/1", "b/1", "a/2"]
            .iter()
            .map(|d| {
                Arc::new(
                    LogRecord::from_value(serde_json::json!({"deviceId": d, "message": d}))
                        .unwrap(),
                )
            })
            .collect();
        c.deliver(&mixed, t0);
        c.set_scope(Arc::new(Scope::parse(&["a/*".to_owned()]).unwrap()));
        c.resume();
        let devices: Vec<String> = rec
            .messages(event::NEW)
            .iter()
            .map(|j| {
                serde_json::from_str::<serde_json::Value>(j).unwrap()["deviceId"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(devices, ["a/1", "a/2"]);
        assert_eq!(
            dropped(&rec),
            vec![Dropped {
                count: 1,
                reason: DropReason::ScopeChanged
            }]
        );
    }

    #[test]
    fn a_full_socket_queue_is_counted_as_slow_consumer() {
        let rec = Recorder::default();
        *rec.room.lock().unwrap() = Some(2);
        let t0 = Instant::now();
        let mut c = client(&rec, limits(100, 100), t0);
        c.deliver(&logs(5), t0);
        assert_eq!(rec.messages(event::NEW).len(), 2);
        *rec.room.lock().unwrap() = None;
        c.report_periodic_drops();
        assert_eq!(
            dropped(&rec),
            vec![Dropped {
                count: 3,
                reason: DropReason::SlowConsumer
            }]
        );
        assert_eq!(c.info.message_count.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_refusal_reported_later_is_counted_like_one_seen_at_once() {
        let rec = Recorder::default();
        *rec.written.lock().unwrap() = Some(0);
        let t0 = Instant::now();
        let mut c = client(&rec, limits(100, 100), t0);
        c.deliver(&logs(3), t0);
        assert_eq!(c.info.message_count.load(Ordering::Relaxed), 3);
        let queued = c.queued_bytes();
        // The socket refused the second packet after the router had handed it on.
        let size = queued / 3;
        c.refused(&refusal(&c, 1, size));
        assert!(c.is_over(), "a refusal marks the client as over its bound");
        assert_eq!(c.queued_bytes(), queued - size, "its bytes left the queue");
        assert_eq!(c.info.message_count.load(Ordering::Relaxed), 2);
        // A drop report the socket refused is reported again, with what came since.
        c.refused(&Refused {
            sid: c.sid,
            logs: 0,
            bytes: 0,
            report: Some((DropReason::RateLimit, 4)),
        });
        c.report_periodic_drops();
        let mut reports = dropped(&rec);
        reports.sort_by_key(|d| d.reason as usize);
        assert_eq!(
            reports,
            vec![
                Dropped {
                    count: 4,
                    reason: DropReason::RateLimit
                },
                Dropped {
                    count: 1,
                    reason: DropReason::SlowConsumer
                },
            ]
        );
    }

    #[test]
    fn the_transport_count_is_read_only_when_the_estimate_could_matter() {
        let rec = Recorder::default();
        *rec.written.lock().unwrap() = Some(0);
        let t0 = Instant::now();
        let mut c = client(&rec, limits(100_000, 100), t0);
        let log = logs(1).pop().unwrap();
        let size = (log.json.get().len() + event::NEW.len() + 6) as u64;
        let per_read = (RECHECK_BYTES / size) as usize;
        // The transport keeps up: each packet is written as soon as it is handed over.
        for i in 1..=10 * per_read {
            c.deliver(std::slice::from_ref(&log), t0);
            *rec.written.lock().unwrap() = Some(i as u64 * size);
        }
        assert_eq!(rec.messages(event::NEW).len(), 10 * per_read, "all sent");
        let reads = rec.written_reads.load(Ordering::Relaxed);
        assert!(
            reads <= 2 * 10 + 2,
            "{reads} reads for {} packets of {size} bytes",
            10 * per_read
        );
        // A socket that stops writing is still bounded exactly.
        let mut tight = limits(100_000, 100);
        tight.socket_queue_bytes = 3 * size as usize;
        let stuck = Recorder::default();
        *stuck.written.lock().unwrap() = Some(0);
        let mut c = client(&stuck, tight, t0);
        let many: Vec<_> = (0..10).map(|_| log.clone()).collect();
        c.deliver(&many, t0);
        assert_eq!(stuck.messages(event::NEW).len(), 3);
        assert!(c.is_over());
    }

    #[test]
    fn socket_queues_are_bounded_in_bytes_and_a_client_stuck_over_them_is_cut() {
        let rec = Recorder::default();
        *rec.written.lock().unwrap() = Some(0);
        let t0 = Instant::now();
        let mut l = limits(1000, 100);
        // Room for about three of these logs (each `{"message":"…"}` plus the event name).
        let log = Arc::new(
            LogRecord::from_value(
                serde_json::json!({"deviceId": "d", "message": "m".repeat(1000)}),
            )
            .unwrap(),
        );
        let size = log.json.get().len() + event::NEW.len() + 6;
        l.socket_queue_bytes = 3 * size + size / 2;
        l.slow_consumer_timeout = Duration::from_secs(2);
        let mut c = client(&rec, l, t0);
        let five: Vec<Arc<LogRecord>> = (0..5).map(|_| log.clone()).collect();
        c.deliver(&five, t0);
        assert_eq!(rec.messages(event::NEW).len(), 3, "three fit, two dropped");
        assert!(c.is_over());
        // The transport writes two of them: room for two more.
        *rec.written.lock().unwrap() = Some(2 * size as u64);
        c.deliver(&five[..2], t0);
        assert_eq!(rec.messages(event::NEW).len(), 5);
        // Handed on is not taken: caught up once it reads and nothing was refused since the
        // last check.
        assert!(
            c.check_slow(t0),
            "a packet was refused since the last check"
        );
        *rec.written.lock().unwrap() = Some(4 * size as u64);
        assert!(!c.check_slow(t0));
        assert!(!c.is_over(), "caught up");
        // Stuck again, past the timeout: cut, with the reason.
        c.deliver(&five, t0);
        assert!(c.is_over());
        assert!(c.check_slow(t0 + Duration::from_secs(1)), "not yet");
        assert!(!rec.cut.load(Ordering::Relaxed));
        assert!(!c.check_slow(t0 + Duration::from_secs(3)));
        assert!(rec.cut.load(Ordering::Relaxed), "cut past the timeout");
        let errors = rec.messages(event::ERROR);
        assert!(
            errors.iter().any(|e| e.contains("slow_consumer")),
            "{errors:?}"
        );
        c.report_periodic_drops();
        // Two at first; then, with one packet still queued, two more fit and three not.
        assert_eq!(
            dropped(&rec),
            vec![Dropped {
                count: 5,
                reason: DropReason::SlowConsumer
            }]
        );
    }

    #[test]
    fn a_client_that_never_reads_stays_over_while_its_packets_are_handed_on() {
        // Small logs: the socket's packet bound refuses them after the router handed them
        // on; later hand-offs must not clear the mark, or it is never cut.
        let (rec, t0, mut c) = metered_client(1000);
        for round in 0..3u64 {
            c.deliver(&logs(2), t0);
            c.refused(&refusal(&c, 1, 10));
            c.deliver(&logs(2), t0);
            assert!(c.is_over(), "handed on is not taken (round {round})");
            c.check_slow(t0 + Duration::from_millis(500 * round));
        }
        assert!(!c.check_slow(t0 + Duration::from_secs(3)), "cut");
        assert!(rec.cut.load(Ordering::Relaxed));
    }

    #[test]
    fn a_drained_queue_clears_the_slow_mark() {
        let rec = Recorder::default();
        *rec.written.lock().unwrap() = Some(0);
        let t0 = Instant::now();
        let mut l = limits(1000, 100);
        l.socket_queue_bytes = 10;
        let mut c = client(&rec, l, t0);
        c.deliver(&logs(3), t0);
        assert!(c.is_over());
        *rec.written.lock().unwrap() = Some(1 << 20);
        // The first check still saw a refusal since the one before; the next finds it drained.
        assert!(c.check_slow(t0 + Duration::from_secs(1)));
        assert!(
            !c.check_slow(t0 + Duration::from_secs(2)),
            "drained: not over"
        );
        assert!(!c.is_over());
        assert!(!rec.cut.load(Ordering::Relaxed));
    }

    #[test]
    fn tiny_logs_do_not_hide_a_stuck_queue_behind_framing_bytes() {
        // The written count runs ahead of the estimate (framing, pings, events sent outside
        // it), so the estimate reads 0 while packets are still being refused.
        let (rec, t0, mut c) = metered_client(1 << 20);
        for second in 0..4u64 {
            c.deliver(&logs(1), t0);
            c.refused(&refusal(&c, 1, 10));
            if !c.check_slow(t0 + Duration::from_secs(second)) {
                break;
            }
        }
        assert!(rec.cut.load(Ordering::Relaxed), "refused every second: cut");
        // Refusals that come back after the cut do not mark it again.
        c.refused(&refusal(&c, 1, 10));
        assert!(!c.is_over());
    }

    #[test]
    fn pause_buffers_are_bounded_in_bytes() {
        let rec = Recorder::default();
        let t0 = Instant::now();
        let mut l = limits(1000, 100);
        let log = Arc::new(
            LogRecord::from_value(
                serde_json::json!({"deviceId": "d", "message": "m".repeat(1000)}),
            )
            .unwrap(),
        );
        l.pause_buffer_bytes = 2 * log.json.get().len() + 10;
        let mut c = client(&rec, l, t0);
        c.pause();
        let four: Vec<Arc<LogRecord>> = (0..4).map(|_| log.clone()).collect();
        c.deliver(&four, t0);
        c.resume();
        assert_eq!(rec.messages(event::NEW).len(), 2);
        assert_eq!(
            dropped(&rec),
            vec![Dropped {
                count: 2,
                reason: DropReason::PauseOverflow
            }]
        );
    }

    #[test]
    fn a_closed_socket_is_stale_after_the_grace_period() {
        let rec = Recorder::default();
        let t0 = Instant::now();
        let c = client(&rec, limits(100, 100), t0);
        assert!(!c.is_stale(t0 + HANDSHAKE_GRACE * 2));
        rec.closed.store(true, Ordering::Relaxed);
        assert!(!c.is_stale(t0));
        assert!(c.is_stale(t0 + HANDSHAKE_GRACE * 2));
    }
}
