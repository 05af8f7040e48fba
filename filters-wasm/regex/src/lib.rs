//! The `regex` example filter, written with `logstream-filter-sdk`: one `parse` and one
//! `matches`.
//!
//! Params: `{ pattern: "...", field?: "message" | "deviceId" | "level" | "tags" | "id" |
//! "timestamp", caseInsensitive?: bool }`. A log matches when the pattern matches the field
//! (for `tags`, any tag). A bad pattern is refused with the regex engine's own explanation.

use logstream_filter_sdk::{Level, LogEntry, SimpleFilter, export_filter};
use regex::{Regex, RegexBuilder};
use serde_json::Value;

const MAX_PATTERN_LEN: usize = 1024;

#[derive(Clone, Copy)]
enum Field {
    Message,
    DeviceId,
    Level,
    Tags,
    Id,
    Timestamp,
}

struct Params {
    regex: Regex,
    field: Field,
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Trace => "TRACE",
        Level::Debug => "DEBUG",
        Level::Info => "INFO",
        Level::Warn => "WARN",
        Level::Error => "ERROR",
        Level::Fatal => "FATAL",
    }
}

struct RegexFilter;

impl SimpleFilter for RegexFilter {
    type Params = Params;

    fn parse(params: &str) -> Result<Params, String> {
        let value: Value = serde_json::from_str(params).map_err(|e| format!("params: not JSON: {e}"))?;
        let obj = value.as_object().ok_or("params: must be an object")?;
        let mut pattern = None;
        let mut field = Field::Message;
        let mut case_insensitive = false;
        for (key, value) in obj {
            match (key.as_str(), value) {
                ("pattern", Value::String(p)) if !p.is_empty() && p.len() <= MAX_PATTERN_LEN => {
                    pattern = Some(p.clone())
                }
                ("pattern", _) => {
                    return Err(format!("pattern: must be a non-empty string of at most {MAX_PATTERN_LEN} bytes"));
                }
                ("field", Value::String(f)) => {
                    field = match f.as_str() {
                        "message" => Field::Message,
                        "deviceId" => Field::DeviceId,
                        "level" => Field::Level,
                        "tags" => Field::Tags,
                        "id" => Field::Id,
                        "timestamp" => Field::Timestamp,
                        other => {
                            return Err(format!(
                                "field: unknown field {other:?}; expected message, deviceId, level, tags, id or timestamp"
                            ));
                        }
                    }
                }
                ("field", _) => return Err("field: must be a string".into()),
                ("caseInsensitive", Value::Bool(b)) => case_insensitive = *b,
                ("caseInsensitive", _) => return Err("caseInsensitive: must be true or false".into()),
                (other, _) => {
                    return Err(format!("{other}: unknown field; expected pattern, field or caseInsensitive"));
                }
            }
        }
        let pattern = pattern.ok_or("pattern: is required")?;
        let regex = RegexBuilder::new(&pattern)
            .case_insensitive(case_insensitive)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| format!("pattern: invalid regular expression: {e}"))?;
        Ok(Params { regex, field })
    }

    fn matches(p: &Params, log: &LogEntry) -> bool {
        match p.field {
            Field::Message => p.regex.is_match(&log.message),
            Field::DeviceId => p.regex.is_match(&log.device_id),
            Field::Level => p.regex.is_match(level_name(log.level)),
            Field::Tags => log.tags.iter().any(|t| p.regex.is_match(t)),
            Field::Id => p.regex.is_match(&log.id),
            Field::Timestamp => p.regex.is_match(&log.timestamp),
        }
    }
}

export_filter!(RegexFilter);
