//! `POST /v1/logs`: OpenTelemetry logs over OTLP/HTTP, in protobuf or JSON, so an existing
//! OpenTelemetry SDK or Collector can ship to logstream without custom code.
//!
//! Mapping of one OTLP log record to a log entry (then validated like any other entry):
//! - `deviceId`: the first of the resource attributes named by `otlp_device_attributes`
//!   (default `device.id`, `host.name`, `service.name`) that is a non-empty string;
//! - `level`: from `severity_number` (1–4 TRACE, 5–8 DEBUG, 9–12 INFO, 13–16 WARN, 17–20
//!   ERROR, 21–24 FATAL), else from `severity_text`, else INFO;
//! - `message`: the body (a string as is, any other value as its JSON text);
//! - `timestamp`: `time_unix_nano`, else `observed_time_unix_nano`, else now;
//! - `tags`: the log attribute named by `otlp_tags_attribute` (a string array, or one string);
//! - the other log attributes as pass-through fields (a name that is a core field gets the
//!   prefix `otel.`), the resource's attributes as `resource`, and `traceId` / `spanId` /
//!   `eventName` when present.
//!
//! Records that cannot be mapped or validated, or that a scoped key may not write, are
//! rejected one by one and counted in the OTLP partial-success answer; the others are
//! published. A full router or a bus that is down answers 503, which OTLP exporters retry.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord as OtlpRecord;
use prost::Message;
use serde_json::{Map, Value};

use crate::api::auth::Ingester;
use crate::api::error::AppError;
use crate::app::HttpState;
use crate::log_entry::{LogRecord, MAX_ENTRIES_PER_REQUEST};
use crate::protocol::Code;

/// How the request was encoded (the answer is encoded the same way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn of(headers: &HeaderMap) -> Result<Encoding, AppError> {
        let (content_type, essence) = super::media_type(headers);
        match essence.as_str() {
            "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
            "application/json" => Ok(Encoding::Json),
            _ => Err(AppError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Code::BadBody,
                format!(
                    "OTLP/HTTP bodies are application/x-protobuf or application/json, not {content_type:?}"
                ),
            )),
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// Where mapped fields come from (`otlp_device_attributes`, `otlp_tags_attribute`).
pub struct Mapping<'a> {
    pub device_attributes: &'a [String],
    pub tags_attribute: &'a str,
}

/// A resource's attributes are copied into each of its records as `resource`; past this size
/// they are left out (one request must not multiply into many copies of a large resource).
const MAX_RESOURCE_JSON: usize = 8 << 10;

/// Names a pass-through attribute may not take as is.
const CORE_FIELDS: [&str; 6] = ["id", "deviceId", "timestamp", "level", "message", "tags"];

pub async fn post_logs(
    who: Ingester,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(app): State<HttpState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let encoding = Encoding::of(&headers)?;
    let body = super::decode::request_body(&app, &headers, body)?;
    let request = match encoding {
        Encoding::Protobuf => ExportLogsServiceRequest::decode(body.as_ref()).map_err(|e| {
            AppError::new(
                StatusCode::BAD_REQUEST,
                Code::BadBody,
                format!("not an OTLP ExportLogsServiceRequest: {e}"),
            )
        })?,
        Encoding::Json => serde_json::from_slice(&body).map_err(|e| {
            AppError::new(
                StatusCode::BAD_REQUEST,
                Code::InvalidJson,
                format!("not an OTLP/JSON ExportLogsServiceRequest: {e}"),
            )
        })?,
    };
    let mapping = Mapping {
        device_attributes: &app.config.ingest.otlp_device_attributes,
        tags_attribute: &app.config.ingest.otlp_tags_attribute,
    };
    // What the accepted entries may weigh together, whatever the records share.
    let budget = app.config.ingest.max_body_bytes.saturating_mul(4);
    let (records, rejected, first_error) = map_request(request, &mapping, &who, budget);
    if rejected > 0 {
        tracing::info!(target: "audit", key = %who.name, %peer, rejected, error = first_error.as_deref().unwrap_or(""), "OTLP records rejected");
    }
    if !records.is_empty() {
        super::accept::accept(&app, super::accept::Source::Otlp, records, None)
            .await
            .map_err(AppError::unavailable)?;
    }
    let answer = ExportLogsServiceResponse {
        partial_success: (rejected > 0).then(|| ExportLogsPartialSuccess {
            rejected_log_records: rejected as i64,
            error_message: first_error.unwrap_or_default(),
        }),
    };
    let bytes = match encoding {
        Encoding::Protobuf => answer.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(&answer).unwrap_or_else(|_| b"{}".to_vec()),
    };
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, encoding.content_type())],
        bytes,
    )
        .into_response())
}

/// Map and validate every record: the accepted ones, how many were rejected, and the first
/// reason.
fn map_request(
    request: ExportLogsServiceRequest,
    mapping: &Mapping,
    who: &Ingester,
    budget: usize,
) -> (Vec<Arc<LogRecord>>, usize, Option<String>) {
    let mut records = Vec::new();
    let mut weight = 0usize;
    let mut rejected = 0usize;
    let mut first_error = None;
    let mut reject = |why: String| {
        rejected += 1;
        if first_error.is_none() {
            first_error = Some(why);
        }
    };
    for resource_logs in request.resource_logs {
        let resource = resource_logs
            .resource
            .map(|r| r.attributes)
            .unwrap_or_default();
        let device = mapping.device_attributes.iter().find_map(|name| {
            resource.iter().find_map(|kv| match kv_value(kv, name) {
                Some(any_value::Value::StringValue(s)) if !s.is_empty() => Some(s.clone()),
                _ => None,
            })
        });
        let mut resource_json = attributes_json(&resource);
        if resource_json.to_string().len() > MAX_RESOURCE_JSON {
            resource_json = Value::String(format!(
                "(resource attributes over {MAX_RESOURCE_JSON} bytes, left out)"
            ));
        }
        for scope_logs in resource_logs.scope_logs {
            for record in scope_logs.log_records {
                if records.len() >= MAX_ENTRIES_PER_REQUEST {
                    reject(format!(
                        "more than {MAX_ENTRIES_PER_REQUEST} log records in one request"
                    ));
                    continue;
                }
                let Some(device) = &device else {
                    reject(format!(
                        "no device: the resource has none of the attributes {:?}",
                        mapping.device_attributes
                    ));
                    continue;
                };
                if let Some(scope) = &who.scope
                    && !scope.matches(device)
                {
                    reject(format!(
                        "{device:?} is outside the devices the key `{}` may write",
                        who.name
                    ));
                    continue;
                }
                if weight > budget {
                    reject(format!(
                        "the request's entries weigh more than {budget} bytes (4 × max_body_bytes)"
                    ));
                    continue;
                }
                let entry = map_record(record, device, &resource_json, mapping);
                match LogRecord::from_value(entry) {
                    Ok(r) => {
                        weight += r.json.get().len() + r.extra_json.len();
                        records.push(Arc::new(r));
                    }
                    Err(e) => reject(e.to_string()),
                }
            }
        }
    }
    (records, rejected, first_error)
}

fn kv_value<'a>(kv: &'a KeyValue, name: &str) -> Option<&'a any_value::Value> {
    (kv.key == name)
        .then(|| kv.value.as_ref().and_then(|v| v.value.as_ref()))
        .flatten()
}

/// One OTLP record as a log entry (validated afterwards like any entry).
fn map_record(record: OtlpRecord, device: &str, resource: &Value, mapping: &Mapping) -> Value {
    let mut entry = Map::new();
    entry.insert("deviceId".into(), Value::String(device.to_owned()));
    entry.insert("level".into(), Value::String(level(&record).into()));
    let message = match record.body.and_then(|b| b.value) {
        Some(any_value::Value::StringValue(s)) => s,
        Some(other) => any_json(&other).to_string(),
        None => String::new(),
    };
    entry.insert("message".into(), Value::String(message));
    let nanos = if record.time_unix_nano > 0 {
        record.time_unix_nano
    } else {
        record.observed_time_unix_nano
    };
    if nanos > 0 {
        entry.insert("timestamp".into(), Value::from(nanos / 1_000_000));
    }
    for kv in &record.attributes {
        let value = kv
            .value
            .as_ref()
            .and_then(|v| v.value.as_ref())
            .map_or(Value::Null, any_json);
        if kv.key == mapping.tags_attribute {
            let tags = match value {
                Value::Array(items) => Value::Array(items),
                Value::String(s) => Value::Array(vec![Value::String(s)]),
                other => other,
            };
            entry.insert("tags".into(), tags);
            continue;
        }
        let name = if CORE_FIELDS.contains(&kv.key.as_str()) {
            format!("otel.{}", kv.key)
        } else {
            kv.key.clone()
        };
        entry.insert(name, value);
    }
    if !record.trace_id.is_empty() {
        entry.insert("traceId".into(), Value::String(hex(&record.trace_id)));
    }
    if !record.span_id.is_empty() {
        entry.insert("spanId".into(), Value::String(hex(&record.span_id)));
    }
    if !record.event_name.is_empty() {
        entry.insert("eventName".into(), Value::String(record.event_name));
    }
    if !resource.as_object().is_some_and(|o| o.is_empty()) {
        entry.insert("resource".into(), resource.clone());
    }
    Value::Object(entry)
}

/// The level of a record: its severity number's range, else its severity text.
fn level(record: &OtlpRecord) -> &'static str {
    match record.severity_number {
        1..=4 => "TRACE",
        5..=8 => "DEBUG",
        9..=12 => "INFO",
        13..=16 => "WARN",
        17..=20 => "ERROR",
        21..=24 => "FATAL",
        _ => crate::log_entry::Level::parse_alias(&record.severity_text)
            .map_or("INFO", crate::log_entry::Level::as_str),
    }
}

fn attributes_json(attributes: &[KeyValue]) -> Value {
    Value::Object(
        attributes
            .iter()
            .map(|kv| {
                let v = kv
                    .value
                    .as_ref()
                    .and_then(|v| v.value.as_ref())
                    .map_or(Value::Null, any_json);
                (kv.key.clone(), v)
            })
            .collect(),
    )
}

/// An OTLP value as JSON (bytes as hex). Nesting is bounded by the decoders (prost's and
/// serde_json's recursion limits), so this recursion is too.
fn any_json(value: &any_value::Value) -> Value {
    use any_value::Value as V;
    match value {
        V::StringValue(s) => Value::String(s.clone()),
        V::BoolValue(b) => Value::Bool(*b),
        V::IntValue(i) => Value::from(*i),
        V::DoubleValue(d) => serde_json::Number::from_f64(*d).map_or(Value::Null, Value::Number),
        V::ArrayValue(a) => Value::Array(
            a.values
                .iter()
                .map(|v: &AnyValue| v.value.as_ref().map_or(Value::Null, any_json))
                .collect(),
        ),
        V::KvlistValue(kv) => attributes_json(&kv.values),
        V::BytesValue(b) => Value::String(hex(b)),
        #[allow(unreachable_patterns)]
        _ => Value::Null,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn request(resource: Vec<KeyValue>, records: Vec<OtlpRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: resource,
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn anyone() -> Ingester {
        Ingester {
            name: "api_key".into(),
            scope: None,
        }
    }

    const DEFAULTS: [&str; 3] = ["device.id", "host.name", "service.name"];

    fn mapping(names: &[String]) -> Mapping<'_> {
        Mapping {
            device_attributes: names,
            tags_attribute: "tags",
        }
    }

    #[test]
    fn records_map_to_entries() {
        let names: Vec<String> = DEFAULTS.iter().map(|s| s.to_string()).collect();
        let record = OtlpRecord {
            time_unix_nano: 1_700_000_000_123_000_000,
            severity_number: 17,
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue("disk full".into())),
            }),
            attributes: vec![
                kv("tags", any_value::Value::StringValue("storage".into())),
                kv("level", any_value::Value::IntValue(3)),
                kv("path", any_value::Value::StringValue("/var".into())),
            ],
            trace_id: vec![0xab; 16],
            ..Default::default()
        };
        let req = request(
            vec![
                kv("service.name", any_value::Value::StringValue("svc".into())),
                kv("host.name", any_value::Value::StringValue("host-7".into())),
            ],
            vec![record],
        );
        let (records, rejected, _) = map_request(req, &mapping(&names), &anyone(), usize::MAX);
        assert_eq!(rejected, 0);
        let v: Value = serde_json::from_str(records[0].json.get()).unwrap();
        assert_eq!(v["deviceId"], "host-7", "host.name before service.name");
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["message"], "disk full");
        assert_eq!(v["tags"], serde_json::json!(["storage"]));
        assert_eq!(v["otel.level"], 3, "a core name is prefixed");
        assert_eq!(v["path"], "/var");
        assert_eq!(v["traceId"], "ab".repeat(16));
        assert_eq!(v["resource"]["service.name"], "svc");
    }

    #[test]
    fn a_large_resource_shared_by_many_records_does_not_multiply() {
        let names: Vec<String> = DEFAULTS.iter().map(|s| s.to_string()).collect();
        let big = "r".repeat(100_000);
        let records: Vec<OtlpRecord> = (0..1000).map(|_| OtlpRecord::default()).collect();
        let req = request(
            vec![
                kv("device.id", any_value::Value::StringValue("d".into())),
                kv("blob", any_value::Value::StringValue(big)),
            ],
            records,
        );
        let budget = 1 << 20;
        let (records, rejected, _) = map_request(req, &mapping(&names), &anyone(), budget);
        let weight: usize = records
            .iter()
            .map(|r| r.json.get().len() + r.extra_json.len())
            .sum();
        assert!(weight <= budget + (64 << 10), "{weight} bytes kept");
        assert_eq!(records.len() + rejected, 1000);
        assert!(
            !records[0].json.get().contains("rrrr"),
            "the large resource is left out"
        );
    }

    #[test]
    fn records_without_a_device_or_outside_a_keys_scope_are_rejected_alone() {
        let names: Vec<String> = DEFAULTS.iter().map(|s| s.to_string()).collect();
        let body = |s: &str| OtlpRecord {
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(s.into())),
            }),
            ..Default::default()
        };
        let mut req = request(vec![], vec![body("lost")]);
        req.resource_logs.extend(
            request(
                vec![kv(
                    "device.id",
                    any_value::Value::StringValue("plant-b/1".into()),
                )],
                vec![body("other plant")],
            )
            .resource_logs,
        );
        req.resource_logs.extend(
            request(
                vec![kv(
                    "device.id",
                    any_value::Value::StringValue("plant-a/1".into()),
                )],
                vec![body("ours")],
            )
            .resource_logs,
        );
        let scoped = Ingester {
            name: "plant-a".into(),
            scope: Some(std::sync::Arc::new(
                crate::auth::Scope::parse(&["plant-a/*".into()]).unwrap(),
            )),
        };
        let (records, rejected, first) = map_request(req, &mapping(&names), &scoped, usize::MAX);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].message, "ours");
        assert_eq!(rejected, 2);
        assert!(first.unwrap().contains("no device"));
    }
}
