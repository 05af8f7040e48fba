//! The log entry: validated once at ingest, serialized to JSON once, shared by every delivery.
//!
//! A [`LogRecord`] is immutable after ingest and travels through the pipeline behind an `Arc`.
//! Its `json` field holds the exact bytes every client receives, so fan-out to N clients costs
//! N copies of bytes, never N serializations.

use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, value::RawValue};

use crate::protocol::DeviceStatus;

/// Longest accepted `deviceId`, in bytes.
pub const MAX_DEVICE_ID_LEN: usize = 256;
/// Longest accepted `id`, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Most tags on one entry.
pub const MAX_TAGS: usize = 64;
/// Longest accepted tag, in bytes.
pub const MAX_TAG_LEN: usize = 256;

/// Severity, as the seed defines it. Parsed case-insensitively, always emitted upper-case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Fatal,
}

impl Level {
    pub const ALL: [Level; 6] = [
        Level::Trace,
        Level::Debug,
        Level::Info,
        Level::Warn,
        Level::Error,
        Level::Fatal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
            Level::Fatal => "FATAL",
        }
    }

    /// Case-insensitive parse; `None` for anything that is not one of the six names.
    pub fn parse(s: &str) -> Option<Level> {
        Level::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(s))
    }

    /// What producers write for a level, any case: the six names, the common aliases, the
    /// syslog severities (RFC 5424 keywords) and OpenTelemetry's severity texts (`WARN2`,
    /// `ERROR4`, ...). The README's level table lists them.
    pub fn parse_alias(s: &str) -> Option<Level> {
        if let Some(level) = Level::parse(s) {
            return Some(level);
        }
        let lower = s.trim().to_ascii_lowercase();
        // OpenTelemetry: a name followed by 2, 3 or 4.
        let base = match lower.strip_suffix(['2', '3', '4']) {
            Some(base) if Level::parse(base).is_some() => base,
            _ => lower.as_str(),
        };
        Some(match base {
            "trace" | "trc" | "finest" | "finer" | "verbose" => Level::Trace,
            "debug" | "dbg" | "fine" => Level::Debug,
            "info" | "inf" | "information" | "informational" | "notice" | "ok" => Level::Info,
            "warn" | "warning" | "wrn" => Level::Warn,
            "error" | "err" | "severe" => Level::Error,
            "fatal" | "crit" | "critical" | "alert" | "emerg" | "emergency" | "panic" => {
                Level::Fatal
            }
            _ => return None,
        })
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validation failure that names the offending field (`[2].deviceId`, `tags[0]`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Prefix the field path, e.g. `deviceId` inside array element 3 becomes `[3].deviceId`.
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = format!("{prefix}.{}", self.field);
        self
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// One accepted log entry.
#[derive(Debug)]
pub struct LogRecord {
    pub id: String,
    pub device_id: String,
    /// ISO-8601 / RFC 3339 text, as given or as assigned at ingest.
    pub timestamp: String,
    pub level: Level,
    pub message: String,
    pub tags: Vec<String>,
    /// The pass-through fields as one JSON object text (`{}` when there are none),
    /// handed to plugins without re-encoding.
    pub extra_json: String,
    /// The complete entry as clients receive it.
    pub json: Box<RawValue>,
    /// Where the entry stands in the history: set once, by the router (embedded bus) or the
    /// Redis stream reader, before any client sees it.
    pub stamp: OnceLock<Stamp>,
    /// When this instance built the record (ingest, or read from the Redis stream): the start
    /// of the ingest → emit latency in `/metrics`.
    pub received: std::time::Instant,
}

/// A position in one history: `(seq, 0)` on the embedded bus, the stream entry id `(ms, n)`
/// with Redis. Ordered as ingest was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    pub major: u64,
    pub minor: u64,
}

/// A record's position and its offset as clients see it (`"<epoch>:<major>-<minor>"`, kept
/// as a JSON string so every emit shares the same bytes).
#[derive(Debug, Clone)]
pub struct Stamp {
    pub position: Position,
    pub offset: Box<RawValue>,
}

impl Stamp {
    pub fn new(epoch: &str, position: Position) -> Stamp {
        let text = format!("\"{epoch}:{}-{}\"", position.major, position.minor);
        Stamp {
            position,
            // Digits, a colon, a dash and an epoch of hex digits need no escaping.
            offset: RawValue::from_string(text)
                .unwrap_or_else(|_| RawValue::from_string("\"\"".into()).expect("valid")),
        }
    }
}

impl LogRecord {
    /// Validate one JSON object from ingest (HTTP or a bus channel) and build the record; an
    /// entry without `id` gets a random one.
    pub fn from_value(value: Value) -> Result<LogRecord, FieldError> {
        LogRecord::from_value_with_id(value, || uuid::Uuid::new_v4().to_string())
    }

    /// [`LogRecord::from_value`], with `default_id` giving the id of an entry that has none.
    pub fn from_value_with_id(
        value: Value,
        default_id: impl FnOnce() -> String,
    ) -> Result<LogRecord, FieldError> {
        let Value::Object(mut obj) = value else {
            return Err(FieldError::new("(entry)", "must be a JSON object"));
        };
        let id = match obj.remove("id") {
            None | Some(Value::Null) => default_id(),
            Some(Value::String(s))
                if !s.is_empty() && s.len() <= MAX_ID_LEN && !s.chars().any(char::is_control) =>
            {
                s
            }
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => {
                return Err(FieldError::new(
                    "id",
                    format!(
                        "must be a non-empty string of at most {MAX_ID_LEN} bytes without control characters, or a number"
                    ),
                ));
            }
        };
        let device_id = match obj.remove("deviceId") {
            Some(Value::String(s))
                if !s.is_empty()
                    && s.len() <= MAX_DEVICE_ID_LEN
                    && !s.chars().any(char::is_control) =>
            {
                s
            }
            None | Some(Value::Null) => return Err(FieldError::new("deviceId", "is required")),
            Some(_) => {
                return Err(FieldError::new(
                    "deviceId",
                    format!(
                        "must be a non-empty string of at most {MAX_DEVICE_ID_LEN} bytes without control characters"
                    ),
                ));
            }
        };
        let message = match obj.remove("message") {
            Some(Value::String(s)) => s,
            None | Some(Value::Null) => return Err(FieldError::new("message", "is required")),
            Some(_) => return Err(FieldError::new("message", "must be a string")),
        };
        let level = match obj.remove("level") {
            None | Some(Value::Null) => Level::Info,
            Some(Value::String(s)) => Level::parse_alias(&s).ok_or_else(|| {
                FieldError::new(
                    "level",
                    format!("unknown level {s:?}; expected one of TRACE, DEBUG, INFO, WARN, ERROR, FATAL (or an alias such as warning, err, critical)"),
                )
            })?,
            Some(_) => return Err(FieldError::new("level", "must be a string")),
        };
        let timestamp = match obj.remove("timestamp") {
            None | Some(Value::Null) => now_rfc3339(),
            Some(Value::String(s)) => {
                time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| {
                        FieldError::new(
                            "timestamp",
                            format!(
                                "{s:?} is not an ISO-8601 date-time such as 2025-01-03T10:00:00Z"
                            ),
                        )
                    })?;
                s
            }
            // Epoch milliseconds, as JavaScript's `Date.now()` gives them.
            Some(Value::Number(n)) => epoch_ms_rfc3339(&n).ok_or_else(|| {
                FieldError::new(
                    "timestamp",
                    format!("{n} is not a time in epoch milliseconds between 1970 and 9999"),
                )
            })?,
            Some(_) => {
                return Err(FieldError::new(
                    "timestamp",
                    "must be an ISO-8601 string or epoch milliseconds",
                ));
            }
        };
        let tags = match obj.remove("tags") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                if items.len() > MAX_TAGS {
                    return Err(FieldError::new(
                        "tags",
                        format!("has {} tags; at most {MAX_TAGS} are allowed", items.len()),
                    ));
                }
                let mut tags = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    match item {
                        Value::String(s) if s.len() <= MAX_TAG_LEN => tags.push(s),
                        _ => {
                            return Err(FieldError::new(
                                format!("tags[{i}]"),
                                format!("must be a string of at most {MAX_TAG_LEN} bytes"),
                            ));
                        }
                    }
                }
                tags
            }
            Some(_) => return Err(FieldError::new("tags", "must be an array of strings")),
        };
        Ok(LogRecord::build(
            id, device_id, timestamp, level, message, tags, obj,
        ))
    }

    /// Assemble a record from validated parts, serializing it once.
    pub fn build(
        id: String,
        device_id: String,
        timestamp: String,
        level: Level,
        message: String,
        tags: Vec<String>,
        extra: Map<String, Value>,
    ) -> LogRecord {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            id: &'a str,
            device_id: &'a str,
            timestamp: &'a str,
            level: Level,
            message: &'a str,
            tags: &'a [String],
            #[serde(flatten)]
            extra: &'a Map<String, Value>,
        }
        let wire = Wire {
            id: &id,
            device_id: &device_id,
            timestamp: &timestamp,
            level,
            message: &message,
            tags: &tags,
            extra: &extra,
        };
        // Serializing plain strings, a map of JSON values and an enum cannot fail.
        let text = serde_json::to_string(&wire).unwrap_or_else(|_| "{}".to_owned());
        let json = RawValue::from_string(text).unwrap_or_else(|_| empty_object());
        let extra_json = serde_json::to_string(&extra).unwrap_or_else(|_| "{}".to_owned());
        LogRecord {
            id,
            device_id,
            timestamp,
            level,
            message,
            tags,
            extra_json,
            json,
            stamp: OnceLock::new(),
            received: std::time::Instant::now(),
        }
    }
}

/// Most entries in one request or bus message.
pub const MAX_ENTRIES_PER_REQUEST: usize = 10_000;
/// Longest device status text.
pub const MAX_STATUS_LEN: usize = 64;

/// Validate a body (HTTP) or message (bus) holding one entry or an array of entries. All or
/// nothing: the first bad entry is named (`[3].level`). `default_id(i)` gives the id of entry
/// `i` when it has none.
pub fn parse_entries(
    value: Value,
    mut default_id: impl FnMut(usize) -> String,
) -> Result<Vec<Arc<LogRecord>>, FieldError> {
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(FieldError::new("(body)", "the array holds no log entries"));
            }
            if items.len() > MAX_ENTRIES_PER_REQUEST {
                return Err(FieldError::new(
                    "(body)",
                    format!(
                        "{} entries; at most {MAX_ENTRIES_PER_REQUEST} per request",
                        items.len()
                    ),
                ));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    LogRecord::from_value_with_id(item, || default_id(i))
                        .map(Arc::new)
                        .map_err(|e| e.within(&format!("[{i}]")))
                })
                .collect()
        }
        obj @ Value::Object(_) => Ok(vec![Arc::new(LogRecord::from_value_with_id(obj, || {
            default_id(0)
        })?)]),
        _ => Err(FieldError::new(
            "(body)",
            "must be a log object or an array of them",
        )),
    }
}

/// A random id for an entry that came without one.
pub fn random_id(_: usize) -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Validate a device status update (HTTP or bus): device id and status within bounds.
pub fn device_status(device_id: String, status: Value) -> Result<DeviceStatus, FieldError> {
    if !(1..=MAX_DEVICE_ID_LEN).contains(&device_id.len())
        || device_id.chars().any(char::is_control)
    {
        return Err(FieldError::new(
            "deviceId",
            format!("must be 1 to {MAX_DEVICE_ID_LEN} bytes without control characters"),
        ));
    }
    match status {
        Value::String(s) if !s.is_empty() && s.len() <= MAX_STATUS_LEN => Ok(DeviceStatus {
            device_id,
            status: s,
        }),
        Value::Null => Err(FieldError::new("status", "is required")),
        _ => Err(FieldError::new(
            "status",
            format!("must be a string of 1 to {MAX_STATUS_LEN} bytes"),
        )),
    }
}

/// Epoch milliseconds as RFC 3339 (UTC, millisecond precision), if in range.
fn epoch_ms_rfc3339(n: &serde_json::Number) -> Option<String> {
    let ms = n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.is_finite() && f.fract() == 0.0)
            .map(|f| f as i64)
    })?;
    if !(0..=253_402_300_799_999).contains(&ms) {
        return None;
    }
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    at.format(RFC3339_MS).ok()
}

const RFC3339_MS: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
);

fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".to_owned()).expect("`{}` is valid JSON")
}

/// The current time as RFC 3339 with millisecond precision, UTC.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(RFC3339_MS)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_seed_example_and_normalizes_level() {
        let r = LogRecord::from_value(json!({
            "deviceId": "device-001", "timestamp": "2025-01-03T10:00:00Z",
            "level": "error", "message": "Test error log", "region": "eu"
        }))
        .unwrap();
        assert_eq!(r.level, Level::Error);
        let v: Value = serde_json::from_str(r.json.get()).unwrap();
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["region"], "eu");
        assert_eq!(v["deviceId"], "device-001");
        assert!(!v["id"].as_str().unwrap().is_empty());
        assert_eq!(r.extra_json, r#"{"region":"eu"}"#);
    }

    #[test]
    fn level_aliases_of_syslog_and_opentelemetry_are_accepted_and_emitted_as_the_six() {
        for (given, level) in [
            ("warning", Level::Warn),
            ("Warning", Level::Warn),
            ("err", Level::Error),
            ("CRITICAL", Level::Fatal),
            ("crit", Level::Fatal),
            ("emerg", Level::Fatal),
            ("fatal", Level::Fatal),
            ("notice", Level::Info),
            ("informational", Level::Info),
            ("WARN2", Level::Warn),
            ("error4", Level::Error),
            ("TRACE3", Level::Trace),
            ("verbose", Level::Trace),
        ] {
            let r = LogRecord::from_value(json!({
                "deviceId": "d", "message": "m", "level": given
            }))
            .unwrap_or_else(|e| panic!("{given}: {e:?}"));
            assert_eq!(r.level, level, "{given}");
            let v: Value = serde_json::from_str(r.json.get()).unwrap();
            assert_eq!(v["level"], level.as_str());
        }
        for unknown in ["warn5", "2", "", "loud", "infos"] {
            let e = LogRecord::from_value(json!({
                "deviceId": "d", "message": "m", "level": unknown
            }))
            .unwrap_err();
            assert_eq!(e.field, "level", "{unknown}");
        }
    }

    #[test]
    fn numbers_read_back_exactly_after_a_trip_through_the_bus() {
        // Found by the log_entry fuzzer: without serde_json's `float_roundtrip`, reading a
        // record's own JSON again (what every Redis stream reader does) could move a number by
        // one unit in its last digit.
        for text in [
            r#"{"deviceId":"d","message":"m","x":984888888888888888822}"#,
            r#"{"deviceId":"d","message":"m","x":9.848888888888889e20}"#,
            r#"{"deviceId":"d","message":"m","x":0.30000000000000004}"#,
        ] {
            let first = LogRecord::from_value(serde_json::from_str(text).unwrap()).unwrap();
            let again: Value = serde_json::from_str(first.json.get()).unwrap();
            let second = LogRecord::from_value(again).unwrap();
            assert_eq!(first.json.get(), second.json.get(), "{text}");
            let given: Value = serde_json::from_str(text).unwrap();
            let read: Value = serde_json::from_str(first.json.get()).unwrap();
            assert_eq!(given["x"], read["x"], "{text}");
        }
    }

    #[test]
    fn epoch_millisecond_timestamps_become_rfc3339() {
        let r = LogRecord::from_value(
            json!({"deviceId": "d", "message": "m", "timestamp": 1_735_898_400_123_i64}),
        )
        .unwrap();
        assert_eq!(r.timestamp, "2025-01-03T10:00:00.123Z");
    }

    #[test]
    fn bodies_are_all_or_nothing_and_ids_come_from_the_caller() {
        let ok = parse_entries(json!([{"deviceId": "d", "message": "a"}, {"deviceId": "d", "message": "b", "id": "x"}]), |i| format!("id-{i}")).unwrap();
        assert_eq!((ok[0].id.as_str(), ok[1].id.as_str()), ("id-0", "x"));
        let err = parse_entries(
            json!([{"deviceId": "d", "message": "a"}, {"deviceId": "d"}]),
            random_id,
        )
        .unwrap_err();
        assert_eq!(err.field, "[1].message");
        assert_eq!(
            parse_entries(json!([]), random_id).unwrap_err().field,
            "(body)"
        );
        assert_eq!(
            parse_entries(json!(3), random_id).unwrap_err().field,
            "(body)"
        );
        assert_eq!(
            device_status("d".into(), json!("online")).unwrap().status,
            "online"
        );
        assert_eq!(
            device_status("".into(), json!("x")).unwrap_err().field,
            "deviceId"
        );
        assert_eq!(
            device_status("d".into(), json!(1)).unwrap_err().field,
            "status"
        );
    }

    #[test]
    fn names_the_bad_field() {
        let cases = [
            (json!({"message": "m"}), "deviceId"),
            (json!({"deviceId": "d"}), "message"),
            (
                json!({"deviceId": "d", "message": "m", "level": "LOUD"}),
                "level",
            ),
            (
                json!({"deviceId": "d", "message": "m", "timestamp": "yesterday"}),
                "timestamp",
            ),
            (
                json!({"deviceId": "d", "message": "m", "tags": ["a", 1]}),
                "tags[1]",
            ),
            (json!({"deviceId": 7, "message": "m"}), "deviceId"),
            (json!({"deviceId": "a\nb", "message": "m"}), "deviceId"),
            (
                json!({"deviceId": "d", "id": "x\u{0}", "message": "m"}),
                "id",
            ),
            (json!([1]), "(entry)"),
            (
                json!({"deviceId": "d", "message": "m", "timestamp": -5}),
                "timestamp",
            ),
            (
                json!({"deviceId": "d", "message": "m", "timestamp": true}),
                "timestamp",
            ),
        ];
        for (input, field) in cases {
            let err = LogRecord::from_value(input.clone()).unwrap_err();
            assert_eq!(err.field, field, "{input}");
        }
    }
}
