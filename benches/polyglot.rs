//! Plugins in other languages: compile time with and without the on-disk cache, the cost of a
//! reload (what hot reload does off the hot path), and per-evaluation cost of the Python and
//! JavaScript examples next to Rust.
//!
//! `cargo bench --bench polyglot` (builds the examples with examples/filters/build.sh first)
//!
//! Python `min-level {minLevel: WARN}` and the Rust default filter with
//! `{levels: [WARN, ERROR, FATAL]}` select the same logs; the JavaScript example
//! (`field-equals` on a pass-through field) has no Rust twin and parses each entry's `extra`
//! JSON, so it is shown for scale.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use logstream::engine::{FilterEngine, Matches};
use logstream::log_entry::LogRecord;
use logstream::plugins::filter::WasmFilter;
use logstream::plugins::{PluginLimits, PluginStats, Runtime};
use serde_json::{Value, json};

fn limits() -> PluginLimits {
    PluginLimits {
        call_timeout: Duration::from_secs(30),
        memory_bytes: 1 << 30,
        log_per_second: 10,
        max_output_bytes: 64 << 20,
    }
}

fn batch() -> Vec<Arc<LogRecord>> {
    let levels = ["DEBUG", "INFO", "WARN", "ERROR"];
    (0..50)
        .map(|k| {
            Arc::new(
                LogRecord::from_value(json!({
                    "deviceId": format!("sensor-{}", k % 100), "level": levels[k % 4],
                    "message": format!("reading {k}"), "region": if k % 3 == 0 { "eu" } else { "us" },
                }))
                .unwrap(),
            )
        })
        .collect()
}

fn engine(runtime: &Arc<Runtime>, bytes: &[u8], name: &str) -> WasmFilter {
    let pre = logstream::plugins::component::prepare(runtime, bytes).expect("loads");
    WasmFilter::new(
        name,
        runtime.clone(),
        pre,
        3,
        Arc::new(PluginStats::default()),
    )
}

fn per_evaluate(engine: &mut WasmFilter, batch: &[Arc<LogRecord>]) -> Duration {
    let mut out: Vec<Matches> = Vec::new();
    for _ in 0..3 {
        out.clear();
        engine.evaluate(batch, &mut out).unwrap();
    }
    let started = Instant::now();
    let mut n = 0u32;
    while started.elapsed() < Duration::from_millis(1500) {
        out.clear();
        engine.evaluate(batch, &mut out).unwrap();
        n += 1;
    }
    started.elapsed() / n
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/polyglot-plugins");
    let ok = std::process::Command::new("bash")
        .arg(root.join("examples/filters/build.sh"))
        .arg(&dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "examples/filters/build.sh failed");
    let plugins: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "rust (default)",
            "default",
            logstream::plugins::BUILTIN_DEFAULT.to_vec(),
        ),
        (
            "python (min-level)",
            "min-level",
            std::fs::read(dir.join("min-level.wasm")).unwrap(),
        ),
        (
            "javascript (field-equals)",
            "field-equals",
            std::fs::read(dir.join("field-equals.wasm")).unwrap(),
        ),
    ];

    println!(
        "| plugin | size | compile, no cache | load from cache | reload with 1000 subscriptions (cached) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    let cache = std::env::temp_dir().join(format!("logstream-bench-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    for (label, name, bytes) in &plugins {
        let uncached = Runtime::new(limits(), None).unwrap();
        let t = Instant::now();
        logstream::plugins::component::prepare(&uncached, bytes).unwrap();
        let compile = t.elapsed();
        let cached = Runtime::new(limits(), Some(cache.clone())).unwrap();
        logstream::plugins::component::prepare(&cached, bytes).unwrap(); // fills the cache
        let fresh = Runtime::new(limits(), Some(cache.clone())).unwrap();
        let t = Instant::now();
        logstream::plugins::component::prepare(&fresh, bytes).unwrap();
        let from_cache = t.elapsed();
        // What hot reload does before the switch: load, instantiate, register subscriptions.
        let params = params_for(name);
        let t = Instant::now();
        let mut e = engine(&fresh, bytes, name);
        for id in 0..1000u64 {
            e.add(id + 1, &params(id).to_string()).unwrap();
        }
        let reload = t.elapsed();
        println!(
            "| {label} | {:.1} MB | {:.2} s | {:.0} ms | {:.0} ms |",
            bytes.len() as f64 / 1e6,
            compile.as_secs_f64(),
            from_cache.as_secs_f64() * 1e3,
            reload.as_secs_f64() * 1e3
        );
    }
    let _ = std::fs::remove_dir_all(&cache);

    println!();
    println!("| plugin | subscriptions | per batch of 50 | per log | per (log × subscription) |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let runtime = Runtime::new(limits(), None).unwrap();
    let batch = batch();
    for (label, name, bytes) in &plugins {
        for subs in [10u64, 1000] {
            let mut e = engine(&runtime, bytes, name);
            let params = params_for(name);
            for id in 0..subs {
                e.add(id + 1, &params(id).to_string()).unwrap();
            }
            let d = per_evaluate(&mut e, &batch);
            let per_log = d.as_nanos() as f64 / 50.0;
            println!(
                "| {label} | {subs} | {:.1} µs | {:.0} ns | {:.0} ns |",
                d.as_nanos() as f64 / 1e3,
                per_log,
                per_log / subs as f64
            );
        }
    }
}

/// Params for subscription `id` of each example. Registered straight into the engine (no
/// sharing of identical params happens at this level), so every id is evaluated.
fn params_for(name: &str) -> fn(u64) -> Value {
    match name {
        "default" => |_| json!({ "levels": ["WARN", "ERROR", "FATAL"] }),
        "min-level" => |_| json!({ "minLevel": "WARN", "devicePrefix": "sensor-" }),
        _ => |id| json!({ "field": "region", "value": if id % 2 == 0 { "eu" } else { "us" } }),
    }
}
