//! The log entry: validated once at ingest, serialized to JSON once, shared by every delivery.
//!
//! A [`LogRecord`] is immutable after ingest and travels through the pipeline behind an `Arc`.
//! Its `json` field holds the exact bytes every client receives, so fan-out to N clients costs
//! N copies of bytes, never N serializations.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, value::RawValue};

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
}

impl LogRecord {
    /// Validate one JSON object from ingest (HTTP or a bus channel) and build the record.
    pub fn from_value(value: Value) -> Result<LogRecord, FieldError> {
        let Value::Object(mut obj) = value else {
            return Err(FieldError::new("(entry)", "must be a JSON object"));
        };
        let id = match obj.remove("id") {
            None | Some(Value::Null) => uuid::Uuid::new_v4().to_string(),
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_ID_LEN => s,
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => {
                return Err(FieldError::new(
                    "id",
                    format!("must be a non-empty string of at most {MAX_ID_LEN} bytes or a number"),
                ));
            }
        };
        let device_id = match obj.remove("deviceId") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_DEVICE_ID_LEN => s,
            None | Some(Value::Null) => return Err(FieldError::new("deviceId", "is required")),
            Some(_) => {
                return Err(FieldError::new(
                    "deviceId",
                    format!("must be a non-empty string of at most {MAX_DEVICE_ID_LEN} bytes"),
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
            Some(Value::String(s)) => Level::parse(&s).ok_or_else(|| {
                FieldError::new(
                    "level",
                    format!("unknown level {s:?}; expected one of TRACE, DEBUG, INFO, WARN, ERROR, FATAL"),
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
            Some(_) => return Err(FieldError::new("timestamp", "must be an ISO-8601 string")),
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
        }
    }
}

fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".to_owned()).expect("`{}` is valid JSON")
}

/// The current time as RFC 3339 with millisecond precision, UTC.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    now.format(&fmt)
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
            (json!([1]), "(entry)"),
        ];
        for (input, field) in cases {
            let err = LogRecord::from_value(input.clone()).unwrap_err();
            assert_eq!(err.field, field, "{input}");
        }
    }
}
