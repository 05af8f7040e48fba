//! HTTP ingest: `POST /api/logs` (one entry or an array) and `POST /api/devices/{id}/status`.
//! Bytes → `serde_json::from_slice::<Value>` (invalid JSON is a 400 before any parser runs)
//! → `parse_entries` / `LogRecord::from_value` / `device_status`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use logstream::auth::Scope;
use logstream::log_entry::{
    LogRecord, MAX_DEVICE_ID_LEN, MAX_ENTRIES_PER_REQUEST, MAX_STATUS_LEN, device_status,
    parse_entries,
};
use logstream::protocol::DeviceStatus;
use logstream_fuzz::{check_record, check_record_against_input};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };

    // POST /api/logs, with a recognisable default id per entry.
    let default_id = |i: usize| format!("default-{i}");
    match parse_entries(value.clone(), default_id) {
        Ok(records) => {
            let inputs: Vec<&serde_json::Map<String, Value>> = match &value {
                Value::Array(items) => items.iter().map(|v| v.as_object().unwrap()).collect(),
                Value::Object(obj) => vec![obj],
                other => panic!("{other} accepted as log entries"),
            };
            assert!(!records.is_empty() && records.len() <= MAX_ENTRIES_PER_REQUEST);
            assert_eq!(records.len(), inputs.len(), "all or nothing");
            for (i, (r, input)) in records.iter().zip(inputs).enumerate() {
                check_record_against_input(r, input, &default_id(i));
                // The ingest scope check runs `Scope::matches(deviceId)`: an accepted device id
                // is a valid pattern of its own and matches itself.
                let own = Scope::parse(std::slice::from_ref(&r.device_id))
                    .unwrap_or_else(|e| panic!("accepted deviceId is not a valid pattern: {e}"));
                assert!(own.matches(&r.device_id));
            }
        }
        Err(e) => {
            assert!(!e.field.is_empty(), "an error names no field");
            assert!(!e.message.is_empty());
            let _ = e.to_string();
        }
    }

    // The single-entry entry point (random id) agrees with parse_entries on objects.
    if value.is_object() {
        match (LogRecord::from_value(value.clone()), parse_entries(value.clone(), default_id)) {
            (Ok(r), Ok(_)) => check_record(&r),
            (Err(a), Err(b)) => assert_eq!(a, b),
            (a, b) => panic!("from_value {:?} but parse_entries {:?}", a.is_ok(), b.is_ok()),
        }
    }

    // POST /api/devices/{id}/status: the path's id (here: the body's deviceId when it is a
    // string) and the body's `status`.
    let device = value
        .get("deviceId")
        .and_then(Value::as_str)
        .unwrap_or("device-001")
        .to_owned();
    let mut body = value;
    let status = body.get_mut("status").map(Value::take).unwrap_or(Value::Null);
    match device_status(device.clone(), status.clone()) {
        Ok(DeviceStatus { device_id, status: s }) => {
            assert_eq!(device_id, device);
            assert!((1..=MAX_DEVICE_ID_LEN).contains(&device_id.len()));
            assert!(!device_id.chars().any(char::is_control));
            assert!((1..=MAX_STATUS_LEN).contains(&s.len()));
            assert_eq!(Some(s.as_str()), status.as_str());
        }
        Err(e) => assert!(e.field == "deviceId" || e.field == "status", "{e}"),
    }
});
