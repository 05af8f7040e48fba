//! The `default` filter's semantics as a table, run against the wasm component the server
//! serves with and against the native reference; plus a cross-check of both over every
//! (subscription × log) pair of a generated set, which also exercises the device index.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use logstream::engine::native::{DefaultParams, NativeDefault};
use logstream::engine::{AddError, FilterEngine, Matches};
use logstream::log_entry::LogRecord;
use logstream::plugins::filter::WasmFilter;
use logstream::plugins::{BUILTIN_DEFAULT, PluginLimits, PluginStats, Runtime};
use serde_json::{Value, json};

fn wasm_default() -> WasmFilter {
    let runtime = Runtime::new(
        PluginLimits {
            call_timeout: Duration::from_secs(5),
            memory_bytes: 64 << 20,
            log_per_second: 10,
            max_output_bytes: 64 << 20,
        },
        None,
    )
    .expect("runtime");
    let pre = logstream::plugins::component::prepare(&runtime, BUILTIN_DEFAULT)
        .expect("built-in default loads");
    WasmFilter::new("default", runtime, pre, 3, Arc::new(PluginStats::default()))
}

fn record(v: Value) -> Arc<LogRecord> {
    Arc::new(LogRecord::from_value(v).expect("valid log"))
}

fn matched(engine: &mut dyn FilterEngine, batch: &[Arc<LogRecord>]) -> BTreeSet<(u64, u32)> {
    let mut out: Vec<Matches> = Vec::new();
    engine.evaluate(batch, &mut out).expect("evaluate");
    out.iter()
        .flat_map(|m| m.entries.iter().map(move |e| (m.registration, *e)))
        .collect()
}

#[test]
fn table_of_cases_agrees_with_the_contract() {
    let log = |device: &str, level: &str, message: &str, tags: &[&str]| json!({ "deviceId": device, "level": level, "message": message, "tags": tags });
    // (params, log, expected)
    let cases = vec![
        (json!({}), log("a", "INFO", "m", &[]), true),
        (json!({ "deviceIds": [] }), log("a", "INFO", "m", &[]), true),
        (
            json!({ "deviceIds": null, "levels": null }),
            log("a", "INFO", "m", &[]),
            true,
        ),
        (
            json!({ "deviceIds": ["a"] }),
            log("a", "INFO", "m", &[]),
            true,
        ),
        (
            json!({ "deviceIds": ["b", "a"] }),
            log("a", "INFO", "m", &[]),
            true,
        ),
        (
            json!({ "deviceIds": ["b"] }),
            log("a", "INFO", "m", &[]),
            false,
        ),
        (
            json!({ "deviceIds": ["A"] }),
            log("a", "INFO", "m", &[]),
            false,
        ),
        (
            json!({ "levels": ["error"] }),
            log("a", "ERROR", "m", &[]),
            true,
        ),
        (
            json!({ "levels": ["Warn", "ERROR"] }),
            log("a", "warn", "m", &[]),
            true,
        ),
        (
            json!({ "levels": ["ERROR"] }),
            log("a", "FATAL", "m", &[]),
            false,
        ),
        (
            json!({ "tags": ["x"] }),
            log("a", "INFO", "m", &["y", "x"]),
            true,
        ),
        (
            json!({ "tags": ["x", "z"] }),
            log("a", "INFO", "m", &["z"]),
            true,
        ),
        (json!({ "tags": ["x"] }), log("a", "INFO", "m", &[]), false),
        (
            json!({ "tags": ["X"] }),
            log("a", "INFO", "m", &["x"]),
            false,
        ),
        (
            json!({ "keywords": ["TIMEOUT"] }),
            log("a", "INFO", "Connection timeout", &[]),
            true,
        ),
        (
            json!({ "keywords": ["out"] }),
            log("a", "INFO", "Connection TimeOut", &[]),
            true,
        ),
        (
            json!({ "keywords": ["disk", "net"] }),
            log("a", "INFO", "net down", &[]),
            true,
        ),
        (
            json!({ "keywords": ["disk"] }),
            log("a", "INFO", "net down", &[]),
            false,
        ),
        (
            json!({ "keywords": ["ÜBER"] }),
            log("a", "INFO", "über alles", &[]),
            true,
        ),
        (
            json!({ "deviceIds": ["a"], "levels": ["ERROR"], "tags": ["t"], "keywords": ["boom"] }),
            log("a", "ERROR", "BOOM", &["t"]),
            true,
        ),
        (
            json!({ "deviceIds": ["a"], "levels": ["ERROR"], "tags": ["t"], "keywords": ["boom"] }),
            log("a", "ERROR", "BOOM", &["u"]),
            false,
        ),
        (
            json!({ "deviceIds": ["a"], "levels": ["ERROR"], "keywords": ["boom"] }),
            log("b", "ERROR", "boom", &[]),
            false,
        ),
    ];
    let mut wasm = wasm_default();
    let mut native = NativeDefault::default();
    for (i, (params, log, expected)) in cases.iter().enumerate() {
        let id = i as u64 + 1;
        let reference = DefaultParams::parse(params).unwrap();
        let rec = record(log.clone());
        assert_eq!(
            reference.matches(&rec),
            *expected,
            "reference, case {i}: {params} vs {log}"
        );
        wasm.add(id, &params.to_string()).unwrap();
        native.add(id, &params.to_string()).unwrap();
        let batch = [rec];
        let w = matched(&mut wasm, &batch).contains(&(id, 0));
        let n = matched(&mut native, &batch).contains(&(id, 0));
        assert_eq!(
            (w, n),
            (*expected, *expected),
            "wasm/native, case {i}: {params} vs {log}"
        );
        wasm.remove(id);
        native.remove(id);
    }
}

#[test]
fn both_refuse_the_same_bad_params_naming_the_field() {
    let mut wasm = wasm_default();
    let mut native = NativeDefault::default();
    let cases = [
        (json!({ "deviceIds": "a" }), "deviceIds"),
        (json!({ "levels": ["LOUD"] }), "levels[0]"),
        (json!({ "tags": [1] }), "tags[0]"),
        (json!({ "keywords": [""] }), "keywords[0]"),
        (json!({ "keywords": vec!["k"; 101] }), "keywords"),
        (json!({ "deviceIds": vec!["d"; 1001] }), "deviceIds"),
        (json!({ "colour": "red" }), "colour"),
        (json!([]), "params"),
    ];
    for (params, field) in cases {
        for (engine, which) in [
            (&mut wasm as &mut dyn FilterEngine, "wasm"),
            (&mut native, "native"),
        ] {
            match engine.add(1, &params.to_string()) {
                Err(AddError::Rejected(reason)) => {
                    assert!(reason.starts_with(field), "{which}: {params} -> {reason}")
                }
                other => panic!("{which}: {params} -> {other:?}"),
            }
        }
    }
}

#[test]
fn wasm_and_native_agree_on_every_pair_of_a_generated_set() {
    let devices = ["d0", "d1", "d2", "d3"];
    let levels = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"];
    let words = ["disk", "Net", "timeout", "ok"];
    let mut subs = Vec::new();
    let mut seed = 7u64;
    let mut next = move |n: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize % n
    };
    for _ in 0..300 {
        let mut p = serde_json::Map::new();
        if next(2) == 0 {
            p.insert(
                "deviceIds".into(),
                json!(
                    (0..1 + next(2))
                        .map(|_| devices[next(4)])
                        .collect::<Vec<_>>()
                ),
            );
        }
        if next(3) == 0 {
            p.insert(
                "levels".into(),
                json!([levels[next(6)].to_lowercase(), levels[next(6)]]),
            );
        }
        if next(4) == 0 {
            p.insert("tags".into(), json!([format!("t{}", next(3))]));
        }
        if next(3) == 0 {
            p.insert("keywords".into(), json!([words[next(4)].to_uppercase()]));
        }
        subs.push(Value::Object(p));
    }
    let batch: Vec<Arc<LogRecord>> = (0..200)
        .map(|i| {
            record(json!({
                "deviceId": devices[next(4)],
                "level": levels[next(6)],
                "message": format!("{} event {i}", words[next(4)]),
                "tags": [format!("t{}", next(3))],
            }))
        })
        .collect();
    let mut wasm = wasm_default();
    let mut native = NativeDefault::default();
    let mut expected = BTreeSet::new();
    let parsed: HashMap<u64, DefaultParams> = subs
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u64 + 1, DefaultParams::parse(p).unwrap()))
        .collect();
    for (id, p) in &parsed {
        for (j, log) in batch.iter().enumerate() {
            if p.matches(log) {
                expected.insert((*id, j as u32));
            }
        }
    }
    for (i, p) in subs.iter().enumerate() {
        wasm.add(i as u64 + 1, &p.to_string()).unwrap();
        native.add(i as u64 + 1, &p.to_string()).unwrap();
    }
    assert!(
        expected.len() > 1000,
        "the generated set should match a lot: {}",
        expected.len()
    );
    assert_eq!(
        matched(&mut wasm, &batch),
        expected,
        "wasm default vs reference predicate"
    );
    assert_eq!(
        matched(&mut native, &batch),
        expected,
        "native engine vs reference predicate"
    );
}
