//! Counters for everything that flows through. Plain atomics bumped on the hot path with
//! `Relaxed` ordering; the stats task of the server turns them into per-second rates once
//! per interval for `system:stats`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use serde::Serialize;

use crate::protocol::{DropReason, Drops};

pub struct Metrics {
    pub logs_in: AtomicU64,
    pub deliveries: AtomicU64,
    pub dropped_rate_limit: AtomicU64,
    pub dropped_pause_overflow: AtomicU64,
    pub dropped_slow_consumer: AtomicU64,
    pub dropped_scope_changed: AtomicU64,
    pub dropped_plugin_failed: AtomicU64,
    /// Clients cut for staying over their queue bound (`slow_consumer_timeout_ms`).
    pub slow_disconnects: AtomicU64,
    /// Bytes queued in all clients' socket queues (a lower bound), as each client last
    /// accounted them; held under `max_queued_bytes`.
    pub queued_bytes: AtomicU64,
    /// Ingest requests refused because the router queue was full (503).
    pub ingest_rejected: AtomicU64,
    /// Ingest bodies refused while decoding their `Content-Encoding`, by reason (indexed
    /// like [`DecodeRefusal::ALL`]).
    pub decode_refused: [AtomicU64; 3],
    /// Client events refused by the per-socket event limit.
    pub events_rejected: AtomicU64,
    pub batches: AtomicU64,
    /// Replays of history served (`since`, `tail`, resumed sessions).
    pub replays_served: AtomicU64,
    /// Replays that could not be exact (`recovered: false`).
    pub recoveries_failed: AtomicU64,
    /// Logs accepted by each source (what `logs_in` counts once routed): `POST /api/logs`,
    /// OTLP, and the seed's Redis channel (those this instance put into the stream).
    pub ingested_http: AtomicU64,
    pub ingested_otlp: AtomicU64,
    pub ingested_seed_channel: AtomicU64,
    /// Logs per evaluation batch.
    pub batch_sizes: Histogram,
    /// From receipt to being handed to the sockets of `log:new` clients, per log and batch.
    pub ingest_to_emit: Histogram,
    history: Mutex<HistoryFigures>,
    rates: Mutex<Rates>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            logs_in: AtomicU64::default(),
            deliveries: AtomicU64::default(),
            dropped_rate_limit: AtomicU64::default(),
            dropped_pause_overflow: AtomicU64::default(),
            dropped_slow_consumer: AtomicU64::default(),
            dropped_scope_changed: AtomicU64::default(),
            dropped_plugin_failed: AtomicU64::default(),
            slow_disconnects: AtomicU64::default(),
            queued_bytes: AtomicU64::default(),
            ingest_rejected: AtomicU64::default(),
            events_rejected: AtomicU64::default(),
            decode_refused: Default::default(),
            batches: AtomicU64::default(),
            replays_served: AtomicU64::default(),
            recoveries_failed: AtomicU64::default(),
            ingested_http: AtomicU64::default(),
            ingested_otlp: AtomicU64::default(),
            ingested_seed_channel: AtomicU64::default(),
            batch_sizes: Histogram::new([1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0]),
            ingest_to_emit: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            history: Mutex::default(),
            rates: Mutex::default(),
        }
    }
}

/// The kept history, as of the router's last tick.
#[derive(Debug, Clone, Default)]
pub struct HistoryFigures {
    pub logs: usize,
    pub bytes: usize,
    pub oldest: Option<(String, Instant)>,
}

#[derive(Clone, Copy, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rates {
    pub logs_in_per_sec: f64,
    pub deliveries_per_sec: f64,
    pub drops_per_sec: f64,
    #[serde(skip)]
    last: Option<(Instant, u64, u64, u64)>,
}

impl Metrics {
    pub fn add_logs_in(&self, n: u64) {
        self.logs_in.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_batch(&self, size: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.batch_sizes.observe(size as f64);
    }

    pub fn replay_served(&self, recovered: bool) {
        self.replays_served.fetch_add(1, Ordering::Relaxed);
        if !recovered {
            self.recoveries_failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn set_history(&self, logs: usize, bytes: usize, oldest: Option<(String, Instant)>) {
        *self.history.lock().unwrap_or_else(|p| p.into_inner()) = HistoryFigures {
            logs,
            bytes,
            oldest,
        };
    }

    pub fn history(&self) -> HistoryFigures {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn delivered(&self, n: u64) {
        self.deliveries.fetch_add(n, Ordering::Relaxed);
    }

    pub fn dropped(&self, reason: DropReason, n: u64) {
        let counter = match reason {
            DropReason::RateLimit => &self.dropped_rate_limit,
            DropReason::PauseOverflow => &self.dropped_pause_overflow,
            DropReason::SlowConsumer => &self.dropped_slow_consumer,
            DropReason::ScopeChanged => &self.dropped_scope_changed,
            DropReason::PluginFailed => &self.dropped_plugin_failed,
        };
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn drops(&self) -> Drops {
        let rate_limit = self.dropped_rate_limit.load(Ordering::Relaxed);
        let pause_overflow = self.dropped_pause_overflow.load(Ordering::Relaxed);
        let slow_consumer = self.dropped_slow_consumer.load(Ordering::Relaxed);
        let scope_changed = self.dropped_scope_changed.load(Ordering::Relaxed);
        let plugin_failed = self.dropped_plugin_failed.load(Ordering::Relaxed);
        Drops {
            rate_limit,
            pause_overflow,
            slow_consumer,
            scope_changed,
            plugin_failed,
            total: rate_limit + pause_overflow + slow_consumer + scope_changed + plugin_failed,
        }
    }

    /// Recompute per-second rates since the previous call and return them.
    pub fn sample_rates(&self, now: Instant) -> Rates {
        let logs = self.logs_in.load(Ordering::Relaxed);
        let del = self.deliveries.load(Ordering::Relaxed);
        let drops = self.drops().total;
        let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((t, l0, d0, x0)) = rates.last {
            let secs = now.saturating_duration_since(t).as_secs_f64().max(1e-3);
            rates.logs_in_per_sec = (logs - l0) as f64 / secs;
            rates.deliveries_per_sec = (del - d0) as f64 / secs;
            rates.drops_per_sec = (drops - x0) as f64 / secs;
        }
        rates.last = Some((now, logs, del, drops));
        *rates
    }

    /// The rates as of the last sample.
    pub fn rates(&self) -> Rates {
        *self.rates.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a body was refused (`logstream_ingest_decode_refused_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DecodeRefusal {
    UnsupportedEncoding,
    TooLarge,
    Corrupt,
}

impl DecodeRefusal {
    pub const ALL: [DecodeRefusal; 3] = [
        DecodeRefusal::UnsupportedEncoding,
        DecodeRefusal::TooLarge,
        DecodeRefusal::Corrupt,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DecodeRefusal::UnsupportedEncoding => "unsupported_encoding",
            DecodeRefusal::TooLarge => "too_large",
            DecodeRefusal::Corrupt => "corrupt",
        }
    }
}
