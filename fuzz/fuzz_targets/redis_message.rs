//! The Redis bus (bus/redis.rs, bus/stream.rs): one payload, handled as each channel would.
//! - log channel: bytes → `Value` → `parse_entries` with the bus's default id (a digest of the
//!   payload and the entry's index, so every instance assigns the same id);
//! - status channel: bytes → `Value` → `{deviceId, status}` → `device_status`;
//! - admin channel: bytes → `serde_json::from_slice::<ClusterOp>`;
//! - stream entry: field `e` as a UTF-8 string → `Value` → `LogRecord::from_value_with_id`
//!   with the entry id as default.

#![no_main]

use libfuzzer_sys::fuzz_target;
use logstream::log_entry::{LogRecord, MAX_DEVICE_ID_LEN, MAX_STATUS_LEN, device_status, parse_entries};
use logstream::protocol::{ClusterOp, DeviceStatus};
use logstream_fuzz::{check_record, check_record_against_input, id_from_message};
use serde_json::Value;

/// `on_status`, as written in bus/redis.rs.
fn on_status(payload: &[u8]) -> Option<DeviceStatus> {
    serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|mut v| {
            let device = v.get("deviceId")?.as_str()?.to_owned();
            let status = v.get_mut("status").map(Value::take)?;
            device_status(device, status).ok()
        })
}

fuzz_target!(|payload: &[u8]| {
    // Log channel.
    if let Ok(value) = serde_json::from_slice::<Value>(payload) {
        if let Ok(records) = parse_entries(value.clone(), |i| id_from_message(payload, i)) {
            let inputs: Vec<&serde_json::Map<String, Value>> = match &value {
                Value::Array(items) => items.iter().map(|v| v.as_object().unwrap()).collect(),
                Value::Object(obj) => vec![obj],
                other => panic!("{other} accepted as log entries"),
            };
            assert_eq!(records.len(), inputs.len());
            for (i, (r, input)) in records.iter().zip(inputs).enumerate() {
                check_record_against_input(r, input, &id_from_message(payload, i));
            }
            // Another instance reading the same message assigns the same ids.
            let other = parse_entries(value, |i| id_from_message(payload, i)).unwrap();
            assert!(records.iter().zip(&other).all(|(a, b)| a.id == b.id));
        }
    }

    // Status channel; what is accepted is published again as `serde_json::to_string(status)`
    // (publish_status) and must read back the same.
    if let Some(status) = on_status(payload) {
        assert!((1..=MAX_DEVICE_ID_LEN).contains(&status.device_id.len()));
        assert!(!status.device_id.chars().any(char::is_control));
        assert!((1..=MAX_STATUS_LEN).contains(&status.status.len()));
        let _ = status.extra_event();
        let text = serde_json::to_string(&status).unwrap();
        assert_eq!(on_status(text.as_bytes()), Some(status));
    }

    // Admin channel; an accepted op is what `publish_op` sends, and must read back.
    if let Ok(op) = serde_json::from_slice::<ClusterOp>(payload) {
        let text = serde_json::to_string(&op).unwrap();
        let back = serde_json::from_str::<ClusterOp>(&text)
            .unwrap_or_else(|e| panic!("a cluster op does not read back: {e}: {text}"));
        assert!(
            logstream_fuzz::same_json_text(&serde_json::to_string(&back).unwrap(), &text),
            "a cluster op changes when it reads back: {text}"
        );
    }

    // Stream entry (`records` in bus/stream.rs): field `e` must be a UTF-8 string.
    if let Ok(text) = std::str::from_utf8(payload)
        && let Ok(value) = serde_json::from_str::<Value>(text)
        && let Ok(record) = LogRecord::from_value_with_id(value, || "1700000000000-0".to_owned())
    {
        check_record(&record);
    }
});
