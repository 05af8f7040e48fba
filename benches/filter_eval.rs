//! Cost of evaluating the `default` filter: the wasm component the server serves with
//! against the native reference, per (log × subscription) and per log, at 10, 1000 and
//! 10000 subscriptions.
//!
//! `cargo bench --bench filter_eval`
//! `cargo bench --bench filter_eval -- --keyword-heavy` (optionally with `OLD_DEFAULT_WASM=`
//! a build of an earlier `default` filter to compare with)
//! `cargo bench --bench filter_eval -- --boundary` (optionally with `OLD_DEFAULT_WASM=` and
//! `OLD_REGEX_WASM=`, builds for interface 0.1.0): the fixed cost of handing a batch to a
//! plugin, with one subscription that matches nothing.
//!
//! Workloads (batches of 50 logs over 100 devices):
//! - one subscriber per device: subscription i watches device i, so every log meets exactly
//!   one subscription whatever their number; the device index should keep the per-log cost
//!   flat from 10 to 10000 subscribers;
//! - device-scoped: each subscription names one of the 100 devices (many dashboards on the
//!   same devices), so matches grow with subscribers;
//! - unscoped: levels + keyword on every subscription, so every log meets every subscription.

use std::sync::Arc;
use std::time::{Duration, Instant};

use logstream::engine::native::NativeDefault;
use logstream::engine::{FilterEngine, Matches};
use logstream::log_entry::LogRecord;
use logstream::plugins::filter::WasmFilter;
use logstream::plugins::{BUILTIN_DEFAULT, PluginLimits, PluginStats, Runtime};
use serde_json::json;

const BATCH: usize = 50;
const DEVICES: usize = 100;

fn wasm_default() -> WasmFilter {
    wasm_filter(BUILTIN_DEFAULT)
}

fn wasm_filter(bytes: &[u8]) -> WasmFilter {
    let runtime = Runtime::new(
        PluginLimits {
            call_timeout: Duration::from_secs(10),
            memory_bytes: 512 << 20,
            log_per_second: 10,
            max_output_bytes: 64 << 20,
        },
        None,
    )
    .expect("runtime");
    let pre = logstream::plugins::component::prepare(&runtime, bytes).expect("default loads");
    WasmFilter::new("default", runtime, pre, 3, Arc::new(PluginStats::default()))
}

fn batches(n: usize) -> Vec<Vec<Arc<LogRecord>>> {
    let levels = ["DEBUG", "INFO", "WARN", "ERROR"];
    (0..n)
        .map(|b| {
            (0..BATCH)
                .map(|i| {
                    let k = b * BATCH + i;
                    Arc::new(
                        LogRecord::from_value(json!({
                            "deviceId": format!("dev-{}", k % DEVICES),
                            "level": levels[k % 4],
                            "message": format!("request {k} finished with status {} after timeout check", k % 7),
                            "tags": ["api", format!("shard-{}", k % 3)],
                        }))
                        .expect("valid"),
                    )
                })
                .collect()
        })
        .collect()
}

/// Mean time of one `evaluate` over `batches`, repeated for at least `min` wall time.
fn time_evaluate(
    engine: &mut dyn FilterEngine,
    batches: &[Vec<Arc<LogRecord>>],
    min: Duration,
) -> (Duration, usize) {
    let mut out: Vec<Matches> = Vec::new();
    // Warm up.
    for b in batches.iter().take(5) {
        out.clear();
        engine.evaluate(b, &mut out).expect("evaluate");
    }
    let started = Instant::now();
    let mut calls = 0usize;
    let mut matched = 0usize;
    while started.elapsed() < min {
        for b in batches {
            out.clear();
            engine.evaluate(b, &mut out).expect("evaluate");
            matched += out.iter().map(|m| m.entries.len()).sum::<usize>();
            calls += 1;
        }
    }
    (started.elapsed() / calls as u32, matched / calls)
}

/// The attack of issue "no client can hurt the others": 8 subscriptions of 100 keywords of
/// 256 bytes each (none of which occur), batches of 50 logs of 1 KB.
fn keyword_heavy(min: Duration) {
    let filler = "the quick brown fox jumps over the lazy dog ".repeat(24);
    let batches: Vec<Vec<Arc<LogRecord>>> = (0..4)
        .map(|b| {
            (0..BATCH)
                .map(|i| {
                    Arc::new(
                        LogRecord::from_value(json!({
                            "deviceId": format!("noise-{}", (b * BATCH + i) % DEVICES),
                            "message": filler[..1000].to_owned(),
                        }))
                        .expect("valid"),
                    )
                })
                .collect()
        })
        .collect();
    let mut engines: Vec<(String, Box<dyn FilterEngine>)> = vec![
        (
            "native reference (substring per keyword)".into(),
            Box::new(NativeDefault::default()),
        ),
        (
            "wasm default, keyword index (now)".into(),
            Box::new(wasm_default()),
        ),
    ];
    if let Ok(path) = std::env::var("OLD_DEFAULT_WASM") {
        let bytes = std::fs::read(&path).expect("OLD_DEFAULT_WASM");
        engines.push((
            "wasm default, substring per keyword (before)".into(),
            Box::new(wasm_filter(&bytes)),
        ));
    }
    println!("| engine | per batch of {BATCH} logs of 1 KB, 8 × 100 keywords of 256 bytes |");
    println!("| --- | ---: |");
    for (name, mut engine) in engines {
        for s in 0..8u64 {
            let keywords: Vec<String> = (0..100)
                .map(|k| {
                    let unit = format!("zq{s}x{k}y");
                    unit.repeat(256 / unit.len() + 1)[..256].to_owned()
                })
                .collect();
            engine
                .add(s + 1, &json!({ "keywords": keywords }).to_string())
                .expect("add");
        }
        let (per_batch, _) = time_evaluate(engine.as_mut(), &batches, min);
        println!("| {name} | {:.2} ms |", per_batch.as_secs_f64() * 1e3);
    }
}

/// `--boundary`: one subscription that matches nothing, so a call costs the crossing (the
/// host's conversion, the canonical ABI's lowering into the guest, the guest's reading of
/// the batch) and hardly any filtering.
fn boundary(min: Duration) {
    let batches = batches(20);
    let mut engines: Vec<(String, String, WasmFilter)> = vec![(
        "default (built-in, now)".into(),
        json!({ "deviceIds": ["nobody"] }).to_string(),
        wasm_default(),
    )];
    let regex =
        std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/regex.wasm"))
            .expect("plugins/regex.wasm (built by `cargo build`)");
    engines.push((
        "regex (Rust SDK, now)".into(),
        json!({ "pattern": "^nothing like this$" }).to_string(),
        wasm_filter(&regex),
    ));
    for (var, name, params) in [
        (
            "OLD_DEFAULT_WASM",
            "default (before)",
            json!({ "deviceIds": ["nobody"] }),
        ),
        (
            "OLD_REGEX_WASM",
            "regex (Rust SDK, before)",
            json!({ "pattern": "^nothing like this$" }),
        ),
    ] {
        if let Ok(path) = std::env::var(var) {
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{var}: {e}"));
            engines.push((name.into(), params.to_string(), wasm_filter(&bytes)));
        }
    }
    println!("| plugin | interface | per batch of {BATCH} logs | per log |");
    println!("| --- | --- | ---: | ---: |");
    for (name, params, mut engine) in engines {
        engine.add(1, &params).expect("add");
        let interface = engine.interface();
        let (per_batch, matched) = time_evaluate(&mut engine, &batches, min);
        assert_eq!(matched, 0, "{name} matched something");
        println!(
            "| {name} | {interface} | {:.1} µs | {:.0} ns |",
            per_batch.as_nanos() as f64 / 1e3,
            per_batch.as_nanos() as f64 / BATCH as f64
        );
    }
}

fn main() {
    if std::env::args().any(|a| a == "--boundary") {
        boundary(Duration::from_millis(1500));
        return;
    }
    if std::env::args().any(|a| a == "--keyword-heavy") {
        keyword_heavy(Duration::from_millis(1500));
        return;
    }
    let min = Duration::from_millis(
        std::env::var("BENCH_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1500),
    );
    let batches = batches(20);
    println!(
        "| workload | subscriptions | engine | per batch of {BATCH} | per log | per (log × subscription) | matches per batch |"
    );
    println!("| --- | ---: | --- | ---: | ---: | ---: | ---: |");
    for workload in ["one subscriber per device", "device-scoped", "unscoped"] {
        for subs in [10usize, 1000, 10_000] {
            let mut rows = Vec::new();
            for engine_name in ["native", "wasm"] {
                let mut engine: Box<dyn FilterEngine> = match engine_name {
                    "native" => Box::new(NativeDefault::default()),
                    _ => Box::new(wasm_default()),
                };
                for id in 0..subs {
                    let params = match workload {
                        // Devices dev-0..dev-N: logs (from dev-0..dev-99) each meet exactly one.
                        "one subscriber per device" => {
                            json!({ "deviceIds": [format!("dev-{id}")] })
                        }
                        "device-scoped" => {
                            json!({ "deviceIds": [format!("dev-{}", id % DEVICES)] })
                        }
                        _ => {
                            json!({ "levels": ["WARN", "ERROR"], "keywords": [format!("status {}", id % 7)] })
                        }
                    };
                    engine.add(id as u64 + 1, &params.to_string()).expect("add");
                }
                let (per_batch, matched) = time_evaluate(engine.as_mut(), &batches, min);
                let per_log = per_batch.as_nanos() as f64 / BATCH as f64;
                let per_pair = per_log / subs as f64;
                rows.push((engine_name, per_batch, per_log, per_pair, matched));
            }
            for (engine_name, per_batch, per_log, per_pair, matched) in &rows {
                println!(
                    "| {workload} | {subs} | {engine_name} | {:.1} µs | {:.0} ns | {:.2} ns | {matched} |",
                    per_batch.as_nanos() as f64 / 1e3,
                    per_log,
                    per_pair
                );
            }
            let ratio = rows[1].2 / rows[0].2;
            println!("| {workload} | {subs} | wasm / native | {ratio:.2}× | | | |");
        }
    }
}
