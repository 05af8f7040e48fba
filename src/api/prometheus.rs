//! Prometheus `GET /metrics`: the text exposition of what the server counts.
//!
//! Why a collector read at scrape time rather than a second set of counters: the hot path
//! already bumps plain atomics (`metrics::Metrics`, each plugin's `PluginStats`, the Redis
//! status); a scrape reads them, so serving metrics costs the delivery path nothing. The
//! few distributions (batch sizes, ingest → emit latency, plugin call durations) are
//! histograms observed where they happen, once per batch (or per log of a batch), never per
//! delivery.
//!
//! Encoded with `prometheus-client` (the Prometheus project's Rust client) in the
//! OpenMetrics text format, which Prometheus scrapes as text.

use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::app::AppState;
use crate::protocol::DropReason;

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The exposition as of now.
pub fn render(app: &AppState) -> String {
    let mut registry = Registry::with_prefix("logstream");
    registry.register_collector(Box::new(Scrape { app: app.clone() }));
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

struct Scrape {
    app: AppState,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &Histogram,
) -> Result<(), std::fmt::Error> {
    h.encode(encoder.encode_descriptor(name, help, None, h.metric_type())?)
}

/// One counter family with a single label, e.g. `dropped_total{reason="rate_limit"}`.
fn labelled_counters<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) -> Result<(), std::fmt::Error> {
    let kind = ConstCounter::new(0u64).metric_type();
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (value, n) in values {
        let labels = [(label, value)];
        ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let app = &self.app;
        let m = &app.metrics;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);

        gauge(
            &mut e,
            "connections",
            "Socket.IO connections on this instance.",
            app.connections.len() as i64,
        )?;
        let bus = app.bus.counters();
        labelled_counters(
            &mut e,
            "logs_ingested",
            "Logs accepted, by source (redis: the seed channel, bridged by this instance).",
            "source",
            [
                ("http", load(&m.ingested_http)),
                ("otlp", load(&m.ingested_otlp)),
                ("redis", load(&m.ingested_seed_channel)),
            ],
        )?;
        counter(
            &mut e,
            "logs_routed",
            "Logs the router evaluated (every source, and with Redis every instance's).",
            load(&m.logs_in),
        )?;
        counter(
            &mut e,
            "deliveries",
            "Logs handed to client sockets.",
            load(&m.deliveries),
        )?;
        let drops = m.drops();
        labelled_counters(
            &mut e,
            "dropped",
            "Logs matched for a client and not delivered, by reason (reported as log:dropped).",
            "reason",
            DropReason::ALL.iter().map(|r| {
                let n = match r {
                    DropReason::RateLimit => drops.rate_limit,
                    DropReason::PauseOverflow => drops.pause_overflow,
                    DropReason::SlowConsumer => drops.slow_consumer,
                    DropReason::ScopeChanged => drops.scope_changed,
                    DropReason::PluginFailed => drops.plugin_failed,
                };
                (r.as_str(), n)
            }),
        )?;
        counter(
            &mut e,
            "ingest_rejected",
            "Ingest requests refused with 503 (router queue full or bus unavailable).",
            load(&m.ingest_rejected),
        )?;
        counter(
            &mut e,
            "events_rejected",
            "Client events refused by the per-socket event limit.",
            load(&m.events_rejected),
        )?;
        counter(
            &mut e,
            "slow_consumer_disconnects",
            "Clients disconnected for staying over their queue bound.",
            load(&m.slow_disconnects),
        )?;
        counter(
            &mut e,
            "unauthenticated_refused",
            "Connections closed at accept: their address had max_unauthenticated_per_ip.",
            app.edge.refused(),
        )?;
        labelled_counters(
            &mut e,
            "ingest_decode_refused",
            "Ingest bodies refused while decoding their Content-Encoding, by reason.",
            "reason",
            crate::metrics::DecodeRefusal::ALL
                .map(|r| (r.as_str(), load(&m.decode_refused[r as usize]))),
        )?;
        counter(
            &mut e,
            "unauthenticated_sessions_refused",
            "Engine.IO sessions refused before authentication (max_unauthenticated_per_ip, unauthenticated_sessions_per_second, max_unauthenticated_sessions).",
            app.edge.sessions.refused(),
        )?;
        gauge(
            &mut e,
            "unauthenticated_sessions",
            "Engine.IO sessions open that have not authenticated (an upper bound).",
            app.edge.sessions.open() as i64,
        )?;
        gauge(
            &mut e,
            "queued_bytes",
            "Bytes queued for clients (socket queues and pause buffers), as last accounted.",
            load(&m.queued_bytes) as i64,
        )?;
        let (compressed, shared) = app.gzip_batches.counts();
        counter(
            &mut e,
            "gzip_batches_compressed",
            "log:batch payloads compressed for encoding: \"gzip\" subscriptions.",
            compressed,
        )?;
        counter(
            &mut e,
            "gzip_batches_shared",
            "gzip log:batch payloads served from one already compressed for another client.",
            shared,
        )?;
        counter(&mut e, "batches", "Evaluation batches.", load(&m.batches))?;
        histogram(
            &mut e,
            "batch_size",
            "Logs per evaluation batch.",
            &m.batch_sizes,
        )?;
        histogram(
            &mut e,
            "ingest_to_emit_seconds",
            "From receipt of a log to its batch being handed to the sockets.",
            &m.ingest_to_emit,
        )?;
        let history = m.history();
        gauge(
            &mut e,
            "history_logs",
            "Logs kept in history.",
            history.logs as i64,
        )?;
        gauge(
            &mut e,
            "history_bytes",
            "Bytes of logs kept in history.",
            history.bytes as i64,
        )?;
        counter(
            &mut e,
            "replays_served",
            "Replays of history served (since, tail, resumed sessions).",
            load(&m.replays_served),
        )?;
        counter(
            &mut e,
            "recoveries_failed",
            "Replays that could not be exact (recovered: false).",
            load(&m.recoveries_failed),
        )?;
        gauge(
            &mut e,
            "bus_connected",
            "1 when the bus is connected (always 1 for the embedded bus).",
            i64::from(bus.connected),
        )?;
        counter(
            &mut e,
            "redis_reconnects",
            "Reconnections to Redis.",
            bus.reconnects,
        )?;
        counter(
            &mut e,
            "redis_malformed",
            "Messages on the Redis channels that could not be decoded (skipped).",
            bus.malformed,
        )?;
        counter(
            &mut e,
            "redis_stream_entries_read",
            "Stream entries this instance read from Redis (per log ingested in the cluster: the read amplification).",
            bus.entries_read,
        )?;
        gauge(
            &mut e,
            "redis_shards_read",
            "Shards of the log stream this instance reads now (redis_stream_shards).",
            i64::from(bus.shards_read),
        )?;

        let plugins = app
            .plugins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .loaded
            .clone();
        let each = |f: fn(&crate::plugins::catalog::PluginStats) -> u64| {
            plugins
                .iter()
                .map(move |p| (p.name.as_str(), f(p)))
                .collect::<Vec<_>>()
        };
        labelled_counters(
            &mut e,
            "plugin_calls",
            "Calls into each plugin.",
            "plugin",
            each(|p| p.calls.load(Ordering::Relaxed)),
        )?;
        labelled_counters(
            &mut e,
            "plugin_failures",
            "Failed calls (trap, CPU budget, bad answer) of each plugin.",
            "plugin",
            each(|p| p.failures.load(Ordering::Relaxed)),
        )?;
        labelled_counters(
            &mut e,
            "plugin_restarts",
            "Fresh instances of each plugin after a failure.",
            "plugin",
            each(|p| p.restarts.load(Ordering::Relaxed)),
        )?;
        {
            let kind = ConstGauge::new(0i64).metric_type();
            let mut family = e.encode_descriptor(
                "plugin_enabled",
                "1 while a plugin serves, 0 while it is disabled.",
                None,
                kind,
            )?;
            for p in &plugins {
                let labels = [("plugin", p.name.as_str())];
                ConstGauge::new(i64::from(p.disabled().is_none()))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let kind = plugins
                .first()
                .map(|p| p.call_seconds.0.metric_type())
                .unwrap_or(ConstCounter::new(0u64).metric_type());
            if !plugins.is_empty() {
                let mut family = e.encode_descriptor(
                    "plugin_call_seconds",
                    "Duration of each batch call (evaluate, apply) of each plugin.",
                    None,
                    kind,
                )?;
                for p in &plugins {
                    let labels = [("plugin", p.name.as_str())];
                    p.call_seconds.0.encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}
