//! OTLP log ingest (`POST /v1/logs`): a real OpenTelemetry SDK exporter (Python
//! `opentelemetry-sdk` + `opentelemetry-exporter-otlp-proto-http`, from PyPI; `.ci/run`
//! installs them) ships logs, and a Socket.IO client receives the mapped entries. OTLP/JSON
//! and partial success are checked with plain HTTP, as a Collector would send them.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{API_KEY, Server};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);

/// Run the OpenTelemetry SDK's exporter script against `server` (`gzip`: compressed).
async fn export_with_the_sdk(server: &Server, gzip: bool) -> std::process::Output {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/otlp_export.py");
    let url = server.url.clone();
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("python3");
        cmd.arg(script).args([&url, API_KEY]);
        if gzip {
            cmd.arg("gzip");
        }
        cmd.output().expect("python3 is needed for the OTLP test")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opentelemetry_sdk_exporter_with_gzip_is_accepted() {
    let server = Server::start();
    let mut c = server.client("watcher").await;
    c.subscribe(json!({ "deviceIds": ["otel-device-gzip"] }))
        .await;
    let output = export_with_the_sdk(&server, true).await;
    assert!(
        output.status.success(),
        "the gzip exporter failed (before: 415): {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let logs = c.logs(3, T).await;
    assert!(logs.iter().any(|l| l["message"] == "disk full"), "{logs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opentelemetry_sdk_exporter_ships_logs_that_clients_receive() {
    let server = Server::start();
    let mut c = server.client("watcher").await;
    c.subscribe(json!({ "deviceIds": ["otel-device-1"] })).await;
    let output = export_with_the_sdk(&server, false).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the OpenTelemetry exporter failed (pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-http): {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let logs = c.logs(3, T).await;
    let by_message = |m: &str| logs.iter().find(|l| l["message"] == m).cloned().unwrap();
    let placed = by_message("order placed");
    assert_eq!(placed["deviceId"], "otel-device-1");
    assert_eq!(placed["level"], "INFO");
    assert_eq!(placed["order_id"], 42);
    assert_eq!(placed["resource"]["service.name"], "checkout");
    assert!(
        placed["timestamp"].as_str().unwrap().starts_with("20"),
        "{placed}"
    );
    let slow = by_message("payment slow");
    assert_eq!(slow["level"], "WARN");
    assert_eq!(slow["tags"], json!(["payments", "latency"]));
    let full = by_message("disk full");
    assert_eq!(full["level"], "ERROR");
    assert_eq!(full["path"], "/var");

    let (_, metrics) = server
        .get("/api/ws/stats", &[("x-api-key", common::ADMIN_KEY)])
        .await;
    assert!(metrics["data"]["logsIn"].as_u64() >= Some(3), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_json_is_accepted_with_partial_success_for_records_it_cannot_map() {
    let server = Server::start();
    let mut c = server.client("watcher").await;
    c.subscribe(json!({})).await;
    let body = json!({
        "resourceLogs": [
            {
                "resource": { "attributes": [
                    { "key": "host.name", "value": { "stringValue": "edge-7" } }
                ] },
                "scopeLogs": [{ "logRecords": [{
                    "timeUnixNano": "1735898400123000000",
                    "severityText": "warn",
                    "body": { "stringValue": "fan speed low" },
                    "attributes": [{ "key": "rpm", "value": { "intValue": "900" } }],
                    "traceId": "5b8efff798038103d269b633813fc60c"
                }] }]
            },
            {
                "resource": { "attributes": [] },
                "scopeLogs": [{ "logRecords": [{ "body": { "stringValue": "who am I" } }] }]
            }
        ]
    });
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/v1/logs", server.url))
        .header("x-api-key", API_KEY)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(
        answer["partialSuccess"]["rejectedLogRecords"], 1,
        "{answer}"
    );
    assert!(
        answer["partialSuccess"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("no device"),
        "{answer}"
    );
    let got = c.logs(1, T).await;
    assert_eq!(got[0]["deviceId"], "edge-7");
    assert_eq!(got[0]["level"], "WARN");
    assert_eq!(got[0]["message"], "fan speed low");
    assert_eq!(got[0]["rpm"], 900);
    assert_eq!(got[0]["traceId"], "5b8efff798038103d269b633813fc60c");
    assert_eq!(got[0]["timestamp"], "2025-01-03T10:00:00.123Z");

    // Refused whole: no key, another content type, undecodable protobuf.
    let post = |ct: &'static str, key: Option<&'static str>, body: Vec<u8>| {
        let mut req = http
            .post(format!("{}/v1/logs", server.url))
            .header("content-type", ct)
            .body(body);
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        req.send()
    };
    let r = post("application/json", None, b"{}".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = post("text/plain", Some(API_KEY), b"hello".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    let r = post("application/x-protobuf", Some(API_KEY), vec![0xff; 64])
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
}

#[test]
fn the_readmes_collector_configuration_parses_and_forwards_logs_here() {
    let readme = include_str!("../README.md");
    let start = readme
        .find("```yaml\n# An OpenTelemetry Collector")
        .expect("the Collector YAML in the README");
    let yaml = &readme[start + "```yaml\n".len()..];
    let yaml = &yaml[..yaml.find("```").unwrap()];
    let check = r#"
import sys, yaml
c = yaml.safe_load(sys.stdin)
exporter = c["exporters"]["otlphttp/logstream"]
assert exporter["logs_endpoint"].endswith("/v1/logs"), exporter
assert exporter["headers"]["Authorization"].startswith("Bearer "), exporter
assert "compression" not in exporter or exporter["compression"] in ("gzip", "zstd", "none")
logs = c["service"]["pipelines"]["logs"]
assert logs["exporters"] == ["otlphttp/logstream"], logs
for r in logs["receivers"]: assert r in c["receivers"], r
for p in logs["processors"]: assert p in c["processors"], p
print("ok")
"#;
    let mut child = Command::new("python3")
        .args(["-c", check])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with PyYAML");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
