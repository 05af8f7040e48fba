//! One connected client's delivery state, owned by the router thread.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::value::RawValue;
use socketioxide::socket::Sid;

use super::outlet::{Outlet, Unsent};
use crate::auth::Scope;
use crate::connections::ConnectionInfo;
use crate::log_entry::LogRecord;
use crate::protocol::{ClientError, DropReason, Dropped, event};
use crate::rate_limit::TokenBucket;
use crate::stats::Metrics;

/// Delivery limits shared by all clients.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryLimits {
    pub max_rate: u32,
    pub pause_buffer: usize,
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
            batch_max_logs: config.batch_max_logs,
            batch_interval: Duration::from_millis(config.batch_max_delay_ms),
        }
    }
}

/// How long a client registered by a handshake may stay unconnected before it is pruned.
const HANDSHAKE_GRACE: Duration = Duration::from_secs(30);

pub struct Client {
    pub sid: Sid,
    outlet: Box<dyn Outlet>,
    /// The devices this client may see (from its token).
    scope: Arc<Scope>,
    pub info: Arc<ConnectionInfo>,
    metrics: Arc<Metrics>,
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
    /// Admitted logs held while paused, oldest first; at most `limits.pause_buffer`.
    held: VecDeque<Arc<LogRecord>>,
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
            limits,
            batch_mode: false,
            with_offsets: false,
            replaying: false,
            skip_through: None,
            limiter: TokenBucket::new(limits.max_rate, limits.max_rate, now),
            paused: false,
            held: VecDeque::new(),
            pending_drops: [0; DropReason::ALL.len()],
            registered_at: now,
            outbox: Vec::new(),
            last_batch_at: None,
        }
    }

    /// A client registered during a handshake whose CONNECT never completed (so no
    /// disconnect will ever be reported for it).
    pub fn is_stale(&self, now: Instant) -> bool {
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
        self.outbox.retain(|l| scope.matches(&l.device_id));
        let removed = before - self.held.len() - self.outbox.len();
        self.drop_logs(DropReason::ScopeChanged, removed as u64);
        self.scope = scope;
        self.report_drops(&[DropReason::ScopeChanged]);
    }

    pub fn has_outbox(&self) -> bool {
        !self.outbox.is_empty()
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
        let refs: Vec<&Arc<LogRecord>> = held.iter().collect();
        self.emit_logs(&refs);
        self.report_drops(&[DropReason::PauseOverflow]);
    }

    /// Keep logs for a paused client, up to `pause_buffer`; count the overflow.
    fn hold(&mut self, logs: impl ExactSizeIterator<Item = Arc<LogRecord>>) {
        let room = self.limits.pause_buffer.saturating_sub(self.held.len());
        let overflow = logs.len().saturating_sub(room);
        self.held.extend(logs.take(room));
        self.drop_logs(DropReason::PauseOverflow, overflow as u64);
    }

    /// Emit the batch-mode outbox if it is due (or `force`). Returns whether logs are still
    /// waiting, i.e. whether the router must call again later.
    pub fn flush_outbox(&mut self, now: Instant, force: bool) -> bool {
        if self.outbox.is_empty() {
            return false;
        }
        let due = force
            || self.outbox.len() >= self.limits.batch_max_logs
            || self
                .last_batch_at
                .is_none_or(|t| now.saturating_duration_since(t) >= self.limits.batch_interval);
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
        let mut lost = 0u64;
        for chunk in logs.chunks(per_packet) {
            let sent = if self.batch_mode {
                let array = json_array(chunk);
                match chunk.last().and_then(|l| self.offset_of(l)) {
                    Some(offset) => self.outlet.send_with_offset(event::BATCH, &array, offset),
                    None => self.outlet.send(event::BATCH, &array),
                }
            } else {
                match self.offset_of(chunk[0]) {
                    Some(offset) => {
                        self.outlet
                            .send_with_offset(event::NEW, &chunk[0].json, offset)
                    }
                    None => self.outlet.send(event::NEW, &chunk[0].json),
                }
            };
            match sent {
                Ok(()) => delivered += chunk.len(),
                Err(Unsent::Closed) => return logs.len(),
                Err(Unsent::Full) if stop_when_full => break,
                Err(Unsent::Full) => lost += chunk.len() as u64,
            }
        }
        self.info
            .message_count
            .fetch_add(delivered as u64, Ordering::Relaxed);
        self.metrics.delivered(delivered as u64);
        self.drop_logs(DropReason::SlowConsumer, lost);
        delivered + lost as usize
    }

    /// The offset to send with `log`, for a resumable subscription.
    fn offset_of<'a>(&self, log: &'a LogRecord) -> Option<&'a RawValue> {
        if !self.with_offsets {
            return None;
        }
        log.stamp.get().map(|s| &*s.offset)
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
            if self.emit(event::DROPPED, &Dropped { count, reason }) {
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

    /// Emit an already serialized event (device status, errors shared by many clients).
    pub fn send_raw(&self, event: &str, data: &RawValue) -> bool {
        self.outlet.send(event, data).is_ok()
    }

    /// Emit any event to this client; best effort.
    pub fn emit<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> bool {
        to_raw(data).is_some_and(|raw| self.send_raw(event, &raw))
    }

    /// Emit `error`.
    pub fn error(&self, error: &ClientError) -> bool {
        self.emit(event::ERROR, error)
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
    }

    impl Outlet for Recorder {
        fn send(&self, event: &str, data: &RawValue) -> Result<(), Unsent> {
            if self.closed.load(Ordering::Relaxed) {
                return Err(Unsent::Closed);
            }
            let mut sent = self.sent.lock().unwrap();
            if self.room.lock().unwrap().is_some_and(|r| sent.len() >= r) {
                return Err(Unsent::Full);
            }
            sent.push((event.to_owned(), data.get().to_owned()));
            Ok(())
        }
        fn send_with_offset(
            &self,
            event: &str,
            data: &RawValue,
            offset: &RawValue,
        ) -> Result<(), Unsent> {
            let pair = format!("[{},{}]", data.get(), offset.get());
            self.send(event, &RawValue::from_string(pair).unwrap())
        }
        fn is_connected(&self) -> bool {
            !self.closed.load(Ordering::Relaxed)
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
        assert!(c.has_outbox());
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
