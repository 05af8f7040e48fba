//! One connected client's delivery state, owned by the router thread: what it asked for
//! ([`DeliveryOptions`]), its rate limit, and the parts that each keep one promise: the
//! [`PauseBuffer`] (paused, or behind a replay), the [`BatchOutbox`] (the batch window), the
//! [`QueueMeter`] (bytes queued, slow consumers) and the [`DropCounts`] (what is still to be
//! reported). Order of checks: rate limit at admission, then pause, then the socket's
//! bounded queue; every log admitted or not ends up delivered or counted as a drop.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::value::RawValue;
use socketioxide::socket::Sid;

use super::batch_outbox::BatchOutbox;
use super::drops::DropCounts;
use super::emitter::Refused;
use super::gzip_batches::GzipBatches;
use super::outlet::Outlet;
use super::packet::{Data, Packet, Unsent, to_raw};
use super::pause_buffer::PauseBuffer;
use super::queue_meter::{QueueMeter, SlowCheck};
use crate::auth::Scope;
use crate::config::DeliveryConfig;
use crate::connections::ConnectionInfo;
use crate::log_entry::{LogRecord, Position};
use crate::metrics::Metrics;
use crate::protocol::{ClientError, DropReason, event};
use crate::rate_limit::TokenBucket;
use crate::system_stats::StatsFeed;

/// How long a client registered by a handshake may stay unconnected before it is pruned.
pub const HANDSHAKE_GRACE: Duration = Duration::from_secs(30);

/// What a subscription asks of delivery.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryOptions {
    /// `log:batch` arrays instead of one `log:new` per log.
    pub batch: bool,
    /// Events carry the offset as a last argument (resumable subscriptions).
    pub with_offsets: bool,
    /// A lower rate limit than the server's (`rateLimit`).
    pub rate: Option<u32>,
    /// `log:batch` as the gzip of its array, a binary attachment (`encoding: "gzip"`).
    pub gzip: bool,
}

pub struct Client {
    pub sid: Sid,
    outlet: Box<dyn Outlet>,
    /// The devices this client may see (from its token).
    scope: Arc<Scope>,
    pub info: Arc<ConnectionInfo>,
    metrics: Arc<Metrics>,
    /// `system:stats`, sent with this client's logs when its round is near.
    stats: Option<Arc<StatsFeed>>,
    /// Compressed batches, shared by every client (see `gzip_batches`).
    gzip_batches: Arc<GzipBatches>,
    /// The server's delivery keys (shared by every client).
    limits: Arc<DeliveryConfig>,
    options: DeliveryOptions,
    limiter: TokenBucket,
    /// What replays may send: a whole `replay_max_logs` at once, then that many per minute
    /// (replays are not charged to `limiter`, but a client that asks for one after another
    /// must not make the server read and send history without end).
    replay_budget: TokenBucket,
    paused: bool,
    /// A replay of history is under way: live logs are kept until it ends.
    replaying: bool,
    /// Logs at or before this position are not sent: the client has them already (it
    /// resumed from an offset this instance had not reached).
    skip_through: Option<Position>,
    /// Admitted logs kept while paused or replaying.
    kept: PauseBuffer,
    /// Batch mode: admitted logs waiting for the next `log:batch`.
    outbox: BatchOutbox,
    meter: QueueMeter,
    drops: DropCounts,
    /// When the handshake registered this client (see [`Client::is_stale`]).
    registered_at: Instant,
}

impl Client {
    pub fn new(
        outlet: Box<dyn Outlet>,
        sid: Sid,
        scope: Arc<Scope>,
        info: Arc<ConnectionInfo>,
        metrics: Arc<Metrics>,
        limits: Arc<DeliveryConfig>,
        now: Instant,
    ) -> Client {
        Client {
            sid,
            outlet,
            scope,
            info,
            stats: None,
            gzip_batches: Arc::default(),
            limiter: TokenBucket::new(limits.rate_limit, limits.rate_limit, now),
            replay_budget: TokenBucket::new(u32::MAX, u32::MAX, now),
            options: DeliveryOptions::default(),
            paused: false,
            replaying: false,
            skip_through: None,
            kept: PauseBuffer::new(limits.pause_buffer, limits.pause_buffer_bytes),
            outbox: BatchOutbox::new(limits.batch_window(), limits.batch_max_logs),
            meter: QueueMeter::new(
                metrics.clone(),
                limits.socket_queue_bytes,
                limits.max_queued_bytes,
                limits.slow_consumer_timeout(),
            ),
            drops: DropCounts::default(),
            metrics,
            limits,
            registered_at: now,
        }
    }

    /// Compress this client's gzip batches through `batches`, shared with the other clients.
    pub fn with_gzip_batches(mut self, batches: Arc<GzipBatches>) -> Client {
        self.gzip_batches = batches;
        self
    }

    /// Bound this client's replays to `max_logs` at once and `max_logs` a minute after that
    /// (`replay_max_logs`).
    pub fn with_replay_budget(mut self, max_logs: usize, now: Instant) -> Client {
        let burst = u32::try_from(max_logs).unwrap_or(u32::MAX).max(1);
        self.replay_budget = TokenBucket::new((burst / 60).max(1), burst, now);
        self
    }

    /// How long until this client's replays may send `n` more logs.
    pub fn replay_wait(&mut self, n: usize, now: Instant) -> Duration {
        self.replay_budget.wait_for(n, now)
    }

    /// Send this client's `system:stats` with its logs when its round is near (see
    /// `system_stats`).
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
    pub fn configure(&mut self, options: DeliveryOptions, now: Instant) -> u32 {
        self.flush_outbox(now, true);
        self.options = options;
        let rate = self.granted_rate();
        self.limiter.set_rate(rate, rate);
        rate
    }

    /// New delivery rates (SIGHUP): the subscription's ask is granted again under them.
    /// (The other keys of `limits` were sized into this client's parts and stay.)
    pub fn set_limits(&mut self, limits: Arc<DeliveryConfig>) {
        self.limits = limits;
        let rate = self.granted_rate();
        self.limiter.set_rate(rate, rate);
    }

    /// The live rate this client gets: what its subscription asked for (else `rate_limit`),
    /// at most `max_client_rate_limit`.
    fn granted_rate(&self) -> u32 {
        self.options
            .rate
            .unwrap_or(self.limits.rate_limit)
            .clamp(1, self.limits.max_client_rate())
    }

    pub fn scope(&self) -> &Arc<Scope> {
        &self.scope
    }

    /// A refreshed token's scope. What is kept for the client (paused, behind a replay, in
    /// the batch window) from devices the new scope excludes is no longer its to receive:
    /// dropped, and reported as `scope_changed`.
    pub fn set_scope(&mut self, scope: Arc<Scope>) {
        let removed = self.kept.retain_scope(&scope) + self.outbox.retain_scope(&scope);
        self.count_drops(DropReason::ScopeChanged, removed as u64);
        self.scope = scope;
        self.account_queue();
        self.report_drops(&[DropReason::ScopeChanged]);
    }

    /// Drops not yet reported (the router's tick reports them).
    pub fn has_unreported_drops(&self) -> bool {
        self.drops.any()
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Bring the queued bytes up to date (the instance's total, and the admin view's).
    fn account_queue(&mut self) {
        self.meter.account(&*self.outlet);
        self.info
            .show_queue(self.meter.accounted(), self.outlet.is_websocket());
    }

    /// Count `count` logs of this client dropped for `reason` (reported later).
    fn count_drops(&mut self, reason: DropReason, count: u64) {
        if count == 0 {
            return;
        }
        self.info.dropped.fetch_add(count, Ordering::Relaxed);
        self.drops.add(reason, count);
        self.metrics.dropped(reason, count);
    }

    /// `count` logs meant for this client were dropped before delivery (a failed plugin
    /// call): counted, and reported at once.
    pub fn drop_and_report(&mut self, reason: DropReason, count: u64) {
        self.count_drops(reason, count);
        self.report_drops(&[reason]);
    }

    /// Skip logs at or before `position` from now on (they are the client's already).
    pub fn skip_through(&mut self, position: Position) {
        self.skip_through = Some(position);
    }

    /// The logs of `logs` the rate limit lets through, in order; the rest are counted as
    /// `rate_limit` drops.
    fn admit(&mut self, logs: &[Arc<LogRecord>], now: Instant) -> Vec<Arc<LogRecord>> {
        let mut admitted = Vec::with_capacity(logs.len());
        let mut limited = 0;
        for log in logs {
            if self.limiter.try_take(now) {
                admitted.push(Arc::clone(log));
            } else {
                limited += 1;
            }
        }
        self.count_drops(DropReason::RateLimit, limited);
        admitted
    }

    /// Deliver `logs` (this client's matches of one batch), in order.
    pub fn deliver(&mut self, logs: &[Arc<LogRecord>], now: Instant) {
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
        let admitted = self.admit(logs, now);
        if self.paused || self.replaying {
            self.keep(admitted);
            return;
        }
        if self.options.batch {
            self.outbox.push(admitted);
            self.flush_outbox(now, false);
        } else {
            self.emit_logs(&admitted, Emission::DropWhatDoesNotFit);
        }
    }

    /// Deliver logs a replay of history found, ahead of the live logs kept meanwhile (kept
    /// if the client is paused). A replay is not charged to the live rate limit: the client
    /// asked for these logs, and a replay is bounded by `replay_max_logs` and by the socket's
    /// byte queue instead. It can outrun the socket: what the queue cannot take now is
    /// returned, to be sent later with [`Client::send_replayed`], rather than dropped.
    pub fn deliver_replay(
        &mut self,
        logs: &[Arc<LogRecord>],
        now: Instant,
    ) -> (usize, Vec<Arc<LogRecord>>) {
        if self.paused {
            let n = logs.len().min(self.replay_budget.available(now));
            self.replay_budget.take(n);
            self.keep(logs[..n].to_vec());
            return (n, logs[n..].to_vec());
        }
        let sent = self.send_replayed(logs, now);
        (sent, logs[sent..].to_vec())
    }

    /// Forget what is kept: a new subscription replays history that covers it.
    pub fn discard_kept(&mut self) {
        self.kept.clear();
        self.account_queue();
    }

    /// Send replayed logs until the socket's queue is full or the replay budget is spent;
    /// returns how many went out.
    pub fn send_replayed(&mut self, logs: &[Arc<LogRecord>], now: Instant) -> usize {
        let allowed = logs.len().min(self.replay_budget.available(now));
        let sent = self.emit_logs(&logs[..allowed], Emission::StopWhenFull);
        self.replay_budget.take(sent);
        sent
    }

    /// A replay begins: live logs wait behind it.
    pub fn start_replay(&mut self) {
        self.replaying = true;
    }

    /// The replay is done: what was kept meanwhile goes out, in order.
    pub fn finish_replay(&mut self) {
        if !self.replaying {
            return;
        }
        self.replaying = false;
        if !self.paused {
            self.release_kept();
        }
    }

    fn release_kept(&mut self) {
        let kept = self.kept.take_all();
        self.emit_logs(&kept, Emission::DropWhatDoesNotFit);
        self.report_drops(&[DropReason::PauseOverflow]);
    }

    /// Keep logs for a paused (or replaying) client; the overflow is `pause_overflow`.
    fn keep(&mut self, logs: Vec<Arc<LogRecord>>) {
        let overflow = self.kept.keep(logs);
        self.count_drops(DropReason::PauseOverflow, overflow);
        self.account_queue();
    }

    /// Bring this client's share of the instance's queued bytes up to date from the
    /// transport's count (see [`QueueMeter::account_exactly`]).
    pub fn account_exactly(&mut self) {
        self.meter.account_exactly(&*self.outlet);
        self.info
            .show_queue(self.meter.accounted(), self.outlet.is_websocket());
    }

    /// Whether this client has been refused packets and not caught up since.
    pub fn is_over_queue_bound(&self) -> bool {
        self.meter.is_over_bound()
    }

    /// For a client that is over its bound: clear the mark once it has caught up; past
    /// `slow_consumer_timeout`, cut its connection (reported, counted). Returns whether the
    /// client is still over (to be checked again).
    pub fn check_slow(&mut self, now: Instant) -> bool {
        let over_for = match self.meter.check(now, &*self.outlet) {
            SlowCheck::Fine => return false,
            SlowCheck::StillOver => return true,
            SlowCheck::Cut { over_for } => over_for,
        };
        tracing::warn!(sid = %self.sid, user = %self.info.user_id, over_s = over_for.as_secs(), "slow consumer disconnected (slow_consumer_timeout_ms)");
        let error = ClientError::new(
            crate::protocol::Code::SlowConsumer,
            format!(
                "your connection stayed over its queue bound for {} ms (slow_consumer_timeout_ms); disconnected",
                self.limits.slow_consumer_timeout_ms
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
        false
    }

    /// When the batch-mode outbox is due, if it holds anything (see `batch_outbox`).
    pub fn outbox_due(&self) -> Option<Instant> {
        self.outbox.due_at()
    }

    /// Emit the batch-mode outbox if it is due (or `force`). Returns whether logs are still
    /// waiting, i.e. whether the router must call again later.
    pub fn flush_outbox(&mut self, now: Instant, force: bool) -> bool {
        if let Some(logs) = self.outbox.take_due(now, force) {
            self.emit_logs(&logs, Emission::DropWhatDoesNotFit);
        }
        self.outbox.due_at().is_some()
    }

    /// Emit `logs` as packets: one `log:batch` per `batch_max_logs` in batch mode, else one
    /// `log:new` each. Returns how many logs were sent, dropped, or held back by a closed
    /// socket (with [`Emission::StopWhenFull`], those after the first packet that did not
    /// fit are not counted: the caller keeps them).
    fn emit_logs(&mut self, logs: &[Arc<LogRecord>], how: Emission) -> usize {
        if logs.is_empty() {
            return 0;
        }
        let per_packet = if self.options.batch {
            self.limits.batch_max_logs.max(1)
        } else {
            1
        };
        let stop_when_full = how == Emission::StopWhenFull;
        let mut delivered = 0usize;
        // Sent with `send_now`, so counted here (the emitter counts what it emits).
        let mut sent_now = 0u64;
        let mut dropped = 0u64;
        let mut refused = false;
        let refs: Vec<&Arc<LogRecord>> = logs.iter().collect();
        for chunk in refs.chunks(per_packet) {
            let gzip = self.options.gzip.then_some(&*self.gzip_batches);
            let packet = Packet::logs(chunk, self.options.batch, self.options.with_offsets, gzip);
            let size = packet.bytes;
            let sent = if !self.meter.fits(size, &*self.outlet) {
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
                    self.meter.sent(size);
                    delivered += chunk.len();
                }
                Err(Unsent::Closed) => return logs.len(),
                Err(Unsent::Full) => {
                    refused = true;
                    if stop_when_full {
                        break;
                    }
                    dropped += chunk.len() as u64;
                }
            }
        }
        if refused {
            self.meter.went_over(&*self.outlet);
        } else if sent_now > 0 {
            // The socket took it (a packet only handed on may still be refused).
            self.meter.taken();
        }
        self.account_queue();
        self.info
            .message_count
            .fetch_add(delivered as u64, Ordering::Relaxed);
        self.metrics.delivered(sent_now);
        self.count_drops(DropReason::SlowConsumer, dropped);
        if delivered > 0 {
            self.stats_ride_along();
        }
        delivered + dropped as usize
    }

    pub fn pause(&mut self) {
        self.paused = true;
        // Admitted but not yet sent: kept like anything that arrives now.
        let waiting = self.outbox.take_all();
        self.keep(waiting);
    }

    /// Deliver everything kept, in order (unless a replay is still under way), then report
    /// any pause overflow at once.
    pub fn resume(&mut self) {
        if !self.paused {
            return;
        }
        self.paused = false;
        if !self.replaying {
            self.release_kept();
        }
    }

    /// Emit `log:dropped` for each reason with unreported drops. Called at most once a
    /// second per client by the router, and on resume. A report that cannot be queued
    /// stays unreported for the next round, so no count is lost.
    pub fn report_drops(&mut self, reasons: &[DropReason]) {
        for &reason in reasons {
            if let Some(report) = self.drops.report(reason)
                && self.outlet.send(report).is_ok()
            {
                self.drops.reported(reason);
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
    /// queue estimate, and a refused drop report is counted again to be reported again.
    pub fn count_refusal(&mut self, refused: &Refused) {
        if refused.logs > 0 {
            let logs = u64::from(refused.logs);
            self.info.message_count.fetch_sub(logs, Ordering::Relaxed);
            self.count_drops(DropReason::SlowConsumer, logs);
        }
        self.meter.refused(refused.bytes, &*self.outlet);
        if let Some((reason, count)) = refused.report {
            self.drops.add(reason, count);
        }
        self.account_queue();
    }

    /// Emit `error`.
    pub fn error(&self, error: &ClientError) -> bool {
        self.emit(event::ERROR, error)
    }
}

/// What [`Client::emit_logs`] does with a packet the socket's queue cannot take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Emission {
    /// Live logs: drop it (`slow_consumer`) and go on with the next.
    DropWhatDoesNotFit,
    /// A replay: stop there; the caller keeps the rest for later.
    StopWhenFull,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Dropped;
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
        cut: Arc<AtomicBool>,
    }

    /// A packet's first argument as text (a gzip batch decompressed).
    fn json(packet: &Packet) -> String {
        match &packet.data {
            Data::Gzip(bytes) => {
                let mut text = String::new();
                std::io::Read::read_to_string(
                    &mut flate2::read::GzDecoder::new(&bytes[..]),
                    &mut text,
                )
                .unwrap();
                text
            }
            _ => packet.json().unwrap().get().to_owned(),
        }
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
                Some(offset) => format!("[{},{}]", json(&packet), offset.get()),
                None => json(&packet),
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

    fn limits(rate: u32, pause_buffer: usize) -> DeliveryConfig {
        DeliveryConfig {
            rate_limit: rate,
            pause_buffer,
            pause_buffer_bytes: usize::MAX,
            socket_queue_bytes: usize::MAX,
            slow_consumer_timeout_ms: 10_000,
            max_queued_bytes: usize::MAX / 2,
            batch_max_logs: 3,
            batch_max_delay_ms: 100,
            ..DeliveryConfig::default()
        }
    }

    fn client(rec: &Recorder, limits: DeliveryConfig, now: Instant) -> Client {
        let info = Arc::new(ConnectionInfo {
            id: "c".into(),
            user_id: "u".into(),
            ip: "127.0.0.1".into(),
            connected_at: std::time::SystemTime::now(),
            message_count: Default::default(),
            dropped: Default::default(),
            queued_bytes: Default::default(),
            transport: Default::default(),
            stats: Default::default(),
            subscription: Default::default(),
        });
        Client::new(
            Box::new(rec.clone()),
            Sid::new(),
            Arc::new(Scope::all()),
            info,
            Arc::new(Metrics::default()),
            Arc::new(limits),
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
        l.slow_consumer_timeout_ms = 2000;
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
        assert_eq!(
            c.info.dropped.load(Ordering::Relaxed),
            3,
            "the admin view counts them"
        );
    }

    #[test]
    fn a_replay_is_not_charged_to_the_rate_limit() {
        let rec = Recorder::default();
        let t0 = Instant::now();
        let mut c = client(&rec, limits(5, 100), t0);
        c.start_replay();
        let (sent, unsent) = c.deliver_replay(&logs(40), t0);
        c.finish_replay();
        assert_eq!((sent, unsent.len()), (40, 0));
        assert_eq!(rec.messages(event::NEW).len(), 40);
        // The live budget is whole afterwards.
        c.deliver(&logs(8), t0);
        assert_eq!(rec.messages(event::NEW).len(), 45);
        c.report_periodic_drops();
        assert_eq!(dropped(&rec)[0].count, 3);
    }

    #[test]
    fn replays_spend_a_budget_of_replay_max_logs_refilled_per_minute() {
        let rec = Recorder::default();
        let t0 = Instant::now();
        let mut c = client(&rec, limits(5, 100), t0).with_replay_budget(600, t0);
        c.start_replay();
        let (sent, unsent) = c.deliver_replay(&logs(500), t0);
        assert_eq!((sent, unsent.len()), (500, 0), "a whole replay at once");
        let (sent, unsent) = c.deliver_replay(&logs(500), t0);
        assert_eq!(
            (sent, unsent.len()),
            (100, 400),
            "the rest waits, it is not dropped"
        );
        assert_eq!(
            c.replay_wait(10, t0),
            Duration::from_secs(1),
            "600 a minute: 10 a second"
        );
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(c.send_replayed(&unsent, t1), 20);
        c.finish_replay();
        c.report_periodic_drops();
        assert!(dropped(&rec).is_empty(), "nothing dropped");
    }

    #[test]
    fn a_subscription_may_ask_up_to_max_client_rate_limit() {
        let rec = Recorder::default();
        let t0 = Instant::now();
        let mut config = limits(5, 100);
        config.max_client_rate_limit = 20;
        let mut c = client(&rec, config, t0);
        let ask = |rate| DeliveryOptions {
            rate,
            ..DeliveryOptions::default()
        };
        assert_eq!(c.configure(ask(None), t0), 5);
        assert_eq!(c.configure(ask(Some(3)), t0), 3);
        assert_eq!(c.configure(ask(Some(15)), t0), 15);
        assert_eq!(c.configure(ask(Some(1_000_000)), t0), 20, "clamped");
        c.deliver(&logs(30), t0);
        assert_eq!(rec.messages(event::NEW).len(), 20);
    }

    #[test]
    fn pause_keeps_in_order_and_reports_overflow_on_resume() {
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
    fn gzip_batches_carry_the_same_array_compressed_and_are_shared_between_clients() {
        let (rec_a, rec_b) = (Recorder::default(), Recorder::default());
        let t0 = Instant::now();
        let shared = Arc::new(GzipBatches::default());
        let gzip = DeliveryOptions {
            batch: true,
            gzip: true,
            ..Default::default()
        };
        let mut a = client(&rec_a, limits(100, 100), t0).with_gzip_batches(shared.clone());
        let mut b = client(&rec_b, limits(100, 100), t0).with_gzip_batches(shared.clone());
        a.configure(gzip, t0);
        b.configure(gzip, t0);
        let some = logs(3);
        a.deliver(&some, t0);
        b.deliver(&some, t0);
        let (got_a, got_b) = (rec_a.messages(event::BATCH), rec_b.messages(event::BATCH));
        assert_eq!(got_a, got_b);
        let array: serde_json::Value = serde_json::from_str(&got_a[0]).unwrap();
        assert_eq!(array.as_array().unwrap().len(), 3);
        assert_eq!(shared.counts(), (1, 1), "compressed once, for both");
    }

    #[test]
    fn batch_mode_sends_the_first_at_once_then_gathers_per_window() {
        let rec = Recorder::default();
        let t0 = Instant::now();
        let mut c = client(&rec, limits(100, 100), t0);
        c.configure(
            DeliveryOptions {
                batch: true,
                ..Default::default()
            },
            t0,
        );
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
    fn live_logs_wait_behind_a_replay_and_carry_offsets() {
        use crate::log_entry::{Position, Stamp};
        let rec = Recorder::default();
        let t0 = Instant::now();
        let mut c = client(&rec, limits(100, 100), t0);
        c.configure(
            DeliveryOptions {
                with_offsets: true,
                ..Default::default()
            },
            t0,
        );
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
    fn a_narrower_scope_drops_what_is_kept_from_devices_it_excludes() {
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
        let queued = c.meter.queued_bytes(&*c.outlet);
        // The socket refused the second packet after the router had handed it on.
        let size = queued / 3;
        c.count_refusal(&refusal(&c, 1, size));
        assert!(
            c.is_over_queue_bound(),
            "a refusal marks the client as over its bound"
        );
        assert_eq!(
            c.meter.queued_bytes(&*c.outlet),
            queued - size,
            "its bytes left the queue"
        );
        assert_eq!(c.info.message_count.load(Ordering::Relaxed), 2);
        // A drop report the socket refused is reported again, with what came since.
        c.count_refusal(&Refused {
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
        l.slow_consumer_timeout_ms = 2000;
        let mut c = client(&rec, l, t0);
        let five: Vec<Arc<LogRecord>> = (0..5).map(|_| log.clone()).collect();
        c.deliver(&five, t0);
        assert_eq!(rec.messages(event::NEW).len(), 3, "three fit, two dropped");
        assert!(c.is_over_queue_bound());
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
        assert!(!c.is_over_queue_bound(), "caught up");
        // Stuck again, past the timeout: cut, with the reason.
        c.deliver(&five, t0);
        assert!(c.is_over_queue_bound());
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
            c.count_refusal(&refusal(&c, 1, 10));
            c.deliver(&logs(2), t0);
            assert!(
                c.is_over_queue_bound(),
                "handed on is not taken (round {round})"
            );
            c.check_slow(t0 + Duration::from_millis(500 * round));
        }
        assert!(!c.check_slow(t0 + Duration::from_secs(3)), "cut");
        assert!(rec.cut.load(Ordering::Relaxed));
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
