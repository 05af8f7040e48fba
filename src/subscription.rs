//! What a client asks for in `log:subscribe`, validated on the socket task before it reaches
//! the router.
//!
//! Two shapes are accepted:
//! - the seed's: `{ deviceIds, levels, tags, keywords, batch?, rateLimit? }`, which goes to
//!   the filter named `default` with the four seed fields as its params;
//! - the named one: `{ filter: "name", params: { ... }, batch?, rateLimit? }`.
//!
//! `batch` and `rateLimit` are the host's business (delivery), the rest is the filter's.

use serde_json::{Map, Value};

use crate::auth::Scope;
use crate::log_entry::FieldError;
use crate::protocol::{ClientError, Code};

pub const DEFAULT_FILTER: &str = "default";
/// Longest accepted params, as JSON text.
pub const MAX_PARAMS_BYTES: usize = 64 * 1024;

/// Most steps in one transform chain.
pub const MAX_TRANSFORMS: usize = 8;

pub use crate::protocol::TransformStep;

#[derive(Debug, Clone, PartialEq)]
pub struct SubscribeRequest {
    pub filter: String,
    /// A JSON object.
    pub params: Value,
    /// Transforms applied, in order, to what the filter matched.
    pub transform: Vec<TransformStep>,
    pub batch: bool,
    /// `log:batch` as the gzip of its array, a binary attachment (`encoding: "gzip"`; needs
    /// `batch: true`).
    pub gzip: bool,
    /// Logs per second this client wants at most (clamped to the server's limit).
    pub rate_limit: Option<u32>,
    /// Offsets with every event, and a session to resume (`resume`, or implied by
    /// `since` / `tail`).
    pub resume: bool,
    /// Replay what matched after this offset first.
    pub since: Option<String>,
    /// Replay the last this many matching logs first.
    pub tail: Option<usize>,
    /// The session this subscription is kept under (set by the server, not the client).
    pub session: Option<String>,
}

impl SubscribeRequest {
    /// Whether events carry offsets and a session is kept.
    pub fn resumable(&self) -> bool {
        self.resume || self.since.is_some() || self.tail.is_some()
    }

    /// Validate `value`; `tail_max` bounds `tail`.
    pub fn parse(value: Value, tail_max: usize) -> Result<SubscribeRequest, FieldError> {
        let mut obj = match value {
            Value::Null => Map::new(),
            Value::Object(obj) => obj,
            _ => return Err(FieldError::new("subscription", "must be an object")),
        };
        let batch = match obj.remove("batch") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(_) => return Err(FieldError::new("batch", "must be true or false")),
        };
        let gzip = match obj.remove("encoding") {
            None | Some(Value::Null) => false,
            Some(Value::String(e)) if e == "json" => false,
            Some(Value::String(e)) if e == "gzip" => {
                if !batch {
                    return Err(FieldError::new(
                        "encoding",
                        "\"gzip\" compresses log:batch: it needs batch: true",
                    ));
                }
                true
            }
            Some(_) => {
                return Err(FieldError::new(
                    "encoding",
                    "must be \"gzip\" (log:batch as a gzip binary attachment) or \"json\"",
                ));
            }
        };
        let rate_limit = match obj.remove("rateLimit") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(r) if r >= 1 => Some(u32::try_from(r).unwrap_or(u32::MAX)),
                _ => return Err(FieldError::new("rateLimit", "must be a whole number ≥ 1")),
            },
            Some(_) => return Err(FieldError::new("rateLimit", "must be a number")),
        };
        let resume = match obj.remove("resume") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(_) => return Err(FieldError::new("resume", "must be true or false")),
        };
        let since = match obj.remove("since") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if crate::history::is_offset(&s) => Some(s),
            Some(_) => {
                return Err(FieldError::new(
                    "since",
                    "must be an offset this server sent (the last argument of log:new)",
                ));
            }
        };
        let tail = match obj.remove("tail") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(t) if t >= 1 && t <= tail_max as u64 => Some(t as usize),
                _ => {
                    return Err(FieldError::new(
                        "tail",
                        format!("must be a whole number from 1 to {tail_max}"),
                    ));
                }
            },
            Some(_) => return Err(FieldError::new("tail", "must be a number")),
        };
        if since.is_some() && tail.is_some() {
            return Err(FieldError::new("tail", "give `since` or `tail`, not both"));
        }
        let transform = parse_transforms(obj.remove("transform"))?;
        let (filter, params) = match obj.remove("filter") {
            None | Some(Value::Null) => {
                if obj.contains_key("params") {
                    return Err(FieldError::new(
                        "params",
                        "needs `filter` to name the plugin",
                    ));
                }
                (DEFAULT_FILTER.to_owned(), Value::Object(obj))
            }
            Some(Value::String(name)) if valid_filter_name(&name) => {
                let params = match obj.remove("params") {
                    None | Some(Value::Null) => Value::Object(Map::new()),
                    Some(p @ Value::Object(_)) => p,
                    Some(_) => return Err(FieldError::new("params", "must be an object")),
                };
                if let Some(extra) = obj.keys().next() {
                    return Err(FieldError::new(
                        field_name(extra),
                        "unknown field; with `filter`, put filter options inside `params`",
                    ));
                }
                (name, params)
            }
            Some(_) => {
                return Err(FieldError::new(
                    "filter",
                    "must be a plugin name (letters, digits, '-', '_', at most 64)",
                ));
            }
        };
        if params.to_string().len() > MAX_PARAMS_BYTES {
            return Err(FieldError::new(
                "params",
                format!("larger than {MAX_PARAMS_BYTES} bytes"),
            ));
        }
        Ok(SubscribeRequest {
            filter,
            params,
            transform,
            batch,
            gzip,
            rate_limit,
            resume,
            since,
            tail,
            session: None,
        })
    }
}

/// Whether a subscription stays inside `scope`: a scope that grants nothing refuses every
/// subscription, and the default filter's explicit `deviceIds` must all be in scope (the
/// first one that is not is named). Everything else is narrowed by the host at delivery.
pub fn check_scope(filter: &str, params: &Value, scope: &Scope) -> Result<(), ClientError> {
    if scope.is_empty() {
        return Err(ClientError::new(
            Code::Forbidden,
            "your token grants no devices (an empty `devices` claim, or none and an empty default_device_scope on the server)",
        )
        .field("deviceIds"));
    }
    if filter != DEFAULT_FILTER {
        return Ok(());
    }
    let devices = params.get("deviceIds").and_then(Value::as_array);
    for device in devices.into_iter().flatten().filter_map(Value::as_str) {
        if !scope.matches(device) {
            return Err(ClientError::new(
                Code::Forbidden,
                format!(
                    "deviceIds: {device:?} is outside the devices your token may see ({})",
                    shown(scope)
                ),
            )
            .field("deviceIds"));
        }
    }
    Ok(())
}

/// How to name a client's field in an error: as given, or `""` for the empty name.
fn field_name(key: &str) -> String {
    if key.is_empty() {
        "\"\"".to_owned()
    } else {
        key.to_owned()
    }
}

/// A scope for a message: its first few patterns.
fn shown(scope: &Scope) -> String {
    let patterns = scope.patterns();
    let mut text = patterns
        .iter()
        .take(3)
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    if patterns.len() > 3 {
        text.push_str(&format!(" and {} more", patterns.len() - 3));
    }
    text
}

/// `transform`: a list of names or `{ name, params }` objects.
fn parse_transforms(value: Option<Value>) -> Result<Vec<TransformStep>, FieldError> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(Value::String(name)) => vec![Value::String(name)],
        Some(_) => {
            return Err(FieldError::new(
                "transform",
                "must be a list of transform names or { name, params } objects",
            ));
        }
    };
    if items.len() > MAX_TRANSFORMS {
        return Err(FieldError::new(
            "transform",
            format!("at most {MAX_TRANSFORMS} steps"),
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let field = format!("transform[{i}]");
            let (name, params) = match item {
                Value::String(name) => (name, Value::Object(Map::new())),
                Value::Object(mut step) => {
                    let name = match step.remove("name") {
                        Some(Value::String(n)) => n,
                        _ => {
                            return Err(FieldError::new(
                                format!("{field}.name"),
                                "is required: a transform name",
                            ));
                        }
                    };
                    let params = match step.remove("params") {
                        None | Some(Value::Null) => Value::Object(Map::new()),
                        Some(p @ Value::Object(_)) => p,
                        Some(_) => {
                            return Err(FieldError::new(
                                format!("{field}.params"),
                                "must be an object",
                            ));
                        }
                    };
                    if params.to_string().len() > MAX_PARAMS_BYTES {
                        return Err(FieldError::new(
                            format!("{field}.params"),
                            format!("larger than {MAX_PARAMS_BYTES} bytes"),
                        ));
                    }
                    if let Some(extra) = step.keys().next() {
                        return Err(FieldError::new(
                            format!("{field}.{extra}"),
                            "unknown field; expected name or params",
                        ));
                    }
                    (name, params)
                }
                _ => {
                    return Err(FieldError::new(
                        field,
                        "must be a transform name or { name, params }",
                    ));
                }
            };
            if !valid_filter_name(&name) {
                return Err(FieldError::new(
                    field,
                    "is not a plugin name (letters, digits, '-', '_', at most 64)",
                ));
            }
            Ok(TransformStep { name, params })
        })
        .collect()
}

/// Plugin names are file stems: `[A-Za-z0-9_-]{1,64}`.
pub fn valid_filter_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn seed_shape_goes_to_default() {
        let r = SubscribeRequest::parse(json!({"deviceIds": ["d1"], "batch": true}), 1000).unwrap();
        assert_eq!(r.filter, "default");
        assert_eq!(r.params, json!({"deviceIds": ["d1"]}));
        assert!(r.batch);
        let r = SubscribeRequest::parse(Value::Null, 1000).unwrap();
        assert_eq!(r.params, json!({}));
    }

    #[test]
    fn history_options() {
        let r =
            SubscribeRequest::parse(json!({"since": "1a:5-0", "deviceIds": ["d"]}), 1000).unwrap();
        assert_eq!(r.since.as_deref(), Some("1a:5-0"));
        assert!(r.resumable());
        assert_eq!(r.params, json!({"deviceIds": ["d"]}));
        let r = SubscribeRequest::parse(json!({"tail": 10}), 1000).unwrap();
        assert_eq!(r.tail, Some(10));
        assert!(
            !SubscribeRequest::parse(json!({}), 1000)
                .unwrap()
                .resumable()
        );
    }

    #[test]
    fn named_shape_and_errors() {
        let r = SubscribeRequest::parse(
            json!({"filter": "regex", "params": {"pattern": "x"}, "rateLimit": 5}),
            1000,
        )
        .unwrap();
        assert_eq!((r.filter.as_str(), r.rate_limit), ("regex", Some(5)));
        for (bad, field) in [
            (json!({"filter": "../x"}), "filter"),
            (json!({"filter": "a", "params": 3}), "params"),
            (json!({"filter": "a", "deviceIds": []}), "deviceIds"),
            (json!({"batch": "yes"}), "batch"),
            (json!({"rateLimit": 0}), "rateLimit"),
            (json!([1]), "subscription"),
            (json!({"filter": "a", "": null}), "\"\""),
            (
                json!({"transform": [{"name": "redact", "params": {"x": "y".repeat(70_000)}}]}),
                "transform[0].params",
            ),
            (json!({"transform": vec!["redact"; 9]}), "transform"),
            (
                json!({"transform": [{"name": "redact", "colour": 1}]}),
                "transform[0].colour",
            ),
            (json!({"transform": ["../x"]}), "transform[0]"),
            (json!({"since": "yesterday"}), "since"),
            (json!({"since": 5}), "since"),
            (json!({"tail": 0}), "tail"),
            (json!({"tail": 1001}), "tail"),
            (json!({"tail": 5, "since": "ab:1-0"}), "tail"),
            (json!({"resume": "yes"}), "resume"),
        ] {
            assert_eq!(
                SubscribeRequest::parse(bad.clone(), 1000)
                    .unwrap_err()
                    .field,
                field,
                "{bad}"
            );
        }
    }
}
