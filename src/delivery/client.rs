//! One connected client's delivery state.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::value::RawValue;
use socketioxide::SocketError;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;

use super::rate_limit::TokenBucket;
use crate::connections::ConnectionInfo;
use crate::log_entry::LogRecord;
use crate::stats::Metrics;

/// Why a matched log did not reach the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Over the client's logs-per-second limit.
    RateLimit,
    /// The client was paused and its hold buffer was full.
    PauseOverflow,
    /// The socket's outbound queue was full: the client reads slower than logs arrive.
    SlowConsumer,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [
        DropReason::RateLimit,
        DropReason::PauseOverflow,
        DropReason::SlowConsumer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::RateLimit => "rate_limit",
            DropReason::PauseOverflow => "pause_overflow",
            DropReason::SlowConsumer => "slow_consumer",
        }
    }
}

#[derive(Serialize)]
struct DroppedEvent {
    count: u64,
    reason: &'static str,
}

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

pub struct Client {
    pub sid: Sid,
    socket: SocketRef,
    pub info: Arc<ConnectionInfo>,
    metrics: Arc<Metrics>,
    limits: DeliveryLimits,
    /// `log:batch` arrays instead of one `log:new` per log.
    pub batch_mode: bool,
    limiter: TokenBucket,
    paused: bool,
    /// Admitted logs held while paused, oldest first; at most `limits.pause_buffer`.
    held: VecDeque<Arc<LogRecord>>,
    /// Not yet reported drops, indexed like [`DropReason::ALL`].
    pending_drops: [u64; 3],
    /// When the handshake registered this client (see [`Client::is_stale`]).
    registered_at: Instant,
    /// Batch mode: admitted logs waiting for the next `log:batch`, oldest first.
    outbox: Vec<Arc<LogRecord>>,
    /// Batch mode: when the last `log:batch` went out.
    last_batch_at: Option<Instant>,
}

impl Client {
    pub fn new(
        socket: SocketRef,
        info: Arc<ConnectionInfo>,
        metrics: Arc<Metrics>,
        limits: DeliveryLimits,
        now: Instant,
    ) -> Client {
        Client {
            sid: socket.id,
            socket,
            info,
            metrics,
            limits,
            batch_mode: false,
            limiter: TokenBucket::new(limits.max_rate, limits.max_rate, now),
            paused: false,
            held: VecDeque::new(),
            pending_drops: [0; 3],
            registered_at: now,
            outbox: Vec::new(),
            last_batch_at: None,
        }
    }

    /// A client registered during a handshake whose CONNECT never completed (so no
    /// disconnect will ever be reported for it).
    pub fn is_stale(&self, now: Instant) -> bool {
        !self.socket.connected()
            && now.saturating_duration_since(self.registered_at)
                > std::time::Duration::from_secs(30)
    }

    /// Apply a (new) subscription's delivery options; returns the effective rate. Logs
    /// the previous subscription already admitted are sent first.
    pub fn configure(&mut self, batch_mode: bool, rate: Option<u32>) -> u32 {
        self.flush_outbox(Instant::now(), true);
        let rate = rate
            .unwrap_or(self.limits.max_rate)
            .clamp(1, self.limits.max_rate);
        self.batch_mode = batch_mode;
        self.limiter.set_rate(rate, rate);
        rate
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

    /// Deliver `logs` (this client's matches of one batch), in order.
    pub fn deliver(&mut self, logs: &[Arc<LogRecord>], now: Instant) {
        let mut admitted: Vec<&Arc<LogRecord>> = Vec::with_capacity(logs.len());
        let mut limited = 0;
        for log in logs {
            if self.limiter.try_take(now) {
                admitted.push(log);
            } else {
                limited += 1;
            }
        }
        self.drop_logs(DropReason::RateLimit, limited);
        if self.paused {
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

    /// Emit admitted logs: one `log:batch` in batch mode, else one `log:new` each.
    fn emit_logs(&mut self, logs: &[&Arc<LogRecord>]) {
        if logs.is_empty() {
            return;
        }
        let mut delivered = 0u64;
        let mut lost = 0u64;
        if self.batch_mode {
            for chunk in logs.chunks(self.limits.batch_max_logs.max(1)) {
                let raws: Vec<&RawValue> = chunk.iter().map(|l| &*l.json).collect();
                match self.socket.emit("log:batch", &raws) {
                    Ok(()) => delivered += chunk.len() as u64,
                    Err(e) if is_closed(&e) => return,
                    Err(_) => lost += chunk.len() as u64,
                }
            }
        } else {
            for log in logs {
                match self.socket.emit("log:new", &*log.json) {
                    Ok(()) => delivered += 1,
                    Err(e) if is_closed(&e) => return,
                    Err(_) => lost += 1,
                }
            }
        }
        self.info
            .message_count
            .fetch_add(delivered, Ordering::Relaxed);
        self.metrics.delivered(delivered);
        self.drop_logs(DropReason::SlowConsumer, lost);
    }

    pub fn pause(&mut self) {
        self.paused = true;
        // Admitted but not yet sent: these are held like anything that arrives now.
        let waiting = std::mem::take(&mut self.outbox);
        self.hold(waiting.into_iter());
    }

    /// Deliver everything held, in order, then report any pause overflow at once.
    pub fn resume(&mut self) {
        if !self.paused {
            return;
        }
        self.paused = false;
        let held: Vec<Arc<LogRecord>> = self.held.drain(..).collect();
        let refs: Vec<&Arc<LogRecord>> = held.iter().collect();
        self.emit_logs(&refs);
        self.report_drops(&[DropReason::PauseOverflow]);
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
            let event = DroppedEvent {
                count,
                reason: reason.as_str(),
            };
            if self.socket.emit("log:dropped", &event).is_ok() {
                self.pending_drops[reason as usize] = 0;
            }
        }
    }

    /// Emit any event (device status, errors) to this client; best effort.
    pub fn emit<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> bool {
        self.socket.emit(event, data).is_ok()
    }
}

fn is_closed(e: &socketioxide::SendError) -> bool {
    matches!(e, socketioxide::SendError::Socket(SocketError::Closed))
}
