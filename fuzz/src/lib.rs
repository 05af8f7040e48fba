//! Invariants shared by the fuzz targets. Every check is an `assert!`: a violated invariant is
//! a crash libFuzzer keeps as an artifact, same as a panic inside logstream.

use logstream::log_entry::{
    Level, LogRecord, MAX_DEVICE_ID_LEN, MAX_ID_LEN, MAX_TAG_LEN, MAX_TAGS,
};
use serde_json::{Map, Value};
use std::sync::OnceLock;

/// The fields `LogRecord::from_value` consumes; everything else passes through.
pub const KNOWN_FIELDS: [&str; 6] = ["id", "deviceId", "timestamp", "level", "message", "tags"];

/// The id the seed channel gives entry `index` of a message that gave none (the same on
/// every instance).
pub use logstream::ingest::seed_channel::id_from_message;

/// Whether floats must survive a JSON round trip exactly (`LOGSTREAM_FUZZ_STRICT_FLOATS=1`).
/// Off by default: serde_json without its `float_roundtrip` feature (as logstream builds it)
/// may parse a float 1 ULP off, so a pass-through float can change on each re-read (finding
/// log_entry-1 in README.md). Set it to reproduce that finding.
pub fn strict_floats() -> bool {
    static STRICT: OnceLock<bool> = OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("LOGSTREAM_FUZZ_STRICT_FLOATS").is_some())
}

/// JSON equality, except that two floats a few ULPs apart count as equal (unless
/// [`strict_floats`]). Integers, strings, keys and structure must match exactly.
pub fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() && y.is_f64() && !strict_floats() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x == y
                || (x.is_sign_negative() == y.is_sign_negative()
                    && x.to_bits().abs_diff(y.to_bits()) <= 4)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// [`same_json`] of two JSON texts.
pub fn same_json_text(a: &str, b: &str) -> bool {
    a == b
        || same_json(
            &serde_json::from_str(a).expect("JSON text"),
            &serde_json::from_str(b).expect("JSON text"),
        )
}

/// What `log_entry.rs` promises of an accepted record, on its own.
pub fn check_record(r: &LogRecord) {
    // deviceId: 1..=256 bytes, no control characters.
    assert!(!r.device_id.is_empty(), "empty deviceId accepted");
    assert!(r.device_id.len() <= MAX_DEVICE_ID_LEN, "deviceId over {MAX_DEVICE_ID_LEN} bytes");
    assert!(
        !r.device_id.chars().any(char::is_control),
        "deviceId with a control character: {:?}",
        r.device_id
    );
    // id: a non-empty string without control characters (given, a number's text, or the default).
    assert!(!r.id.is_empty(), "empty id");
    assert!(r.id.len() <= MAX_ID_LEN, "id over {MAX_ID_LEN} bytes: {:?}", r.id);
    assert!(!r.id.chars().any(char::is_control), "id with a control character: {:?}", r.id);
    // tags: at most 64, each at most 256 bytes.
    assert!(r.tags.len() <= MAX_TAGS);
    assert!(r.tags.iter().all(|t| t.len() <= MAX_TAG_LEN));
    // timestamp: RFC 3339 (given and checked, converted from epoch ms, or now).
    assert!(
        time::OffsetDateTime::parse(&r.timestamp, &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "timestamp is not RFC 3339: {:?}",
        r.timestamp
    );
    assert_eq!(Level::parse(r.level.as_str()), Some(r.level));

    // The bytes every client receives: a JSON object with the record's fields.
    let back: Value = serde_json::from_str(r.json.get()).expect("record JSON re-parses");
    let obj = back.as_object().expect("record JSON is an object");
    assert_eq!(obj.get("id").and_then(Value::as_str), Some(r.id.as_str()));
    assert_eq!(obj.get("deviceId").and_then(Value::as_str), Some(r.device_id.as_str()));
    assert_eq!(obj.get("timestamp").and_then(Value::as_str), Some(r.timestamp.as_str()));
    assert_eq!(obj.get("level").and_then(Value::as_str), Some(r.level.as_str()));
    assert_eq!(obj.get("message").and_then(Value::as_str), Some(r.message.as_str()));
    let tags: Vec<&str> = obj
        .get("tags")
        .and_then(Value::as_array)
        .expect("tags is an array")
        .iter()
        .map(|t| t.as_str().expect("tag is a string"))
        .collect();
    assert_eq!(tags, r.tags.iter().map(String::as_str).collect::<Vec<_>>());
    // extra_json: an object holding exactly the pass-through fields of `json`.
    let extra: Map<String, Value> =
        serde_json::from_str(&r.extra_json).expect("extra_json is a JSON object");
    assert!(KNOWN_FIELDS.iter().all(|k| !extra.contains_key(*k)));
    assert_eq!(obj.len(), KNOWN_FIELDS.len() + extra.len(), "duplicate or lost keys");
    for (k, v) in &extra {
        assert_eq!(obj.get(k), Some(v), "extra field {k:?} differs between json and extra_json");
    }

    // The Redis stream stores `json` and every instance validates it again on reading
    // (bus/stream.rs `records`): it must be accepted, as the same record.
    let again = LogRecord::from_value_with_id(back, || panic!("the record JSON has an id"))
        .unwrap_or_else(|e| panic!("the record's own JSON is refused on re-read: {e}"));
    assert_eq!(again.id, r.id);
    assert_eq!(again.device_id, r.device_id);
    assert_eq!(again.timestamp, r.timestamp);
    assert_eq!(again.level, r.level);
    assert_eq!(again.message, r.message);
    assert_eq!(again.tags, r.tags);
    assert!(
        same_json_text(&again.extra_json, &r.extra_json),
        "pass-through fields change on re-read:\n  {}\n  {}",
        r.extra_json,
        again.extra_json
    );
    assert!(
        same_json_text(again.json.get(), r.json.get()),
        "record JSON changes on re-read:\n  {}\n  {}",
        r.json.get(),
        again.json.get()
    );
}

/// [`check_record`], plus what an accepted record keeps of the object it came from.
/// `default_id` is the id the caller's default gave (used when the input had none).
pub fn check_record_against_input(r: &LogRecord, input: &Map<String, Value>, default_id: &str) {
    check_record(r);
    assert_eq!(input.get("deviceId").and_then(Value::as_str), Some(r.device_id.as_str()));
    assert_eq!(input.get("message").and_then(Value::as_str), Some(r.message.as_str()));
    match input.get("id") {
        None | Some(Value::Null) => assert_eq!(r.id, default_id),
        Some(Value::String(s)) => assert_eq!(&r.id, s),
        Some(Value::Number(n)) => assert_eq!(r.id, n.to_string()),
        Some(other) => panic!("id {other} accepted"),
    }
    match input.get("level") {
        None | Some(Value::Null) => assert_eq!(r.level, Level::Info),
        Some(Value::String(s)) => assert_eq!(Level::parse(s), Some(r.level)),
        Some(other) => panic!("level {other} accepted"),
    }
    if let Some(Value::String(s)) = input.get("timestamp") {
        assert_eq!(&r.timestamp, s, "a string timestamp is kept as given");
    }
    match input.get("tags") {
        None | Some(Value::Null) => assert!(r.tags.is_empty()),
        Some(Value::Array(items)) => assert_eq!(
            items.iter().map(|t| t.as_str().expect("tag is a string")).collect::<Vec<_>>(),
            r.tags.iter().map(String::as_str).collect::<Vec<_>>()
        ),
        Some(other) => panic!("tags {other} accepted"),
    }
    let extra: Map<String, Value> = serde_json::from_str(&r.extra_json).expect("extra_json");
    let passed: Map<String, Value> = input
        .iter()
        .filter(|(k, _)| !KNOWN_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert!(
        same_json(&Value::Object(extra.clone()), &Value::Object(passed.clone())),
        "pass-through fields are not kept as given:\n  {passed:?}\n  {extra:?}"
    );
}
