//! Compression on the HTTP hops: request bodies in gzip, deflate or zstd (as the
//! OpenTelemetry Collector sends them), bounded by what they decode to; answers, page assets
//! and long-polling bodies compressed for clients that accept it.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{API_KEY, Server};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::json;

const T: Duration = Duration::from_secs(15);

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// POST `body` to `path` with these headers and the ingest key: (status, body text).
async fn post(
    server: &Server,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", server.url))
        .header("x-api-key", API_KEY)
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    match req.send().await {
        Ok(resp) => (
            resp.status().as_u16(),
            resp.text().await.unwrap_or_default(),
        ),
        // A body refused before it was all sent: the server answers and closes.
        Err(e) => (0, e.to_string()),
    }
}

fn string(s: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(s.into())),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_protobuf_body_as_the_collector_sends_it_is_accepted() {
    let server = Server::start();
    let mut c = server.client("watcher").await;
    c.subscribe(json!({ "deviceIds": ["collector-host"] }))
        .await;
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "host.name".into(),
                    value: string("collector-host"),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: (0..3)
                    .map(|i| LogRecord {
                        severity_number: 17,
                        body: string(&format!("from the collector {i}")),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let (status, body) = post(
        &server,
        "/v1/logs",
        &[
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "gzip"),
        ],
        gzip(&request.encode_to_vec()),
    )
    .await;
    assert_eq!(status, 200, "before: 415 `send uncompressed OTLP`: {body}");
    let logs = c.logs(3, T).await;
    assert_eq!(logs[2]["message"], "from the collector 2");
    assert_eq!(logs[0]["level"], "ERROR");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_json_is_decoded_and_unknown_encodings_are_named() {
    let server = Server::start();
    let mut c = server.client("watcher").await;
    c.subscribe(json!({ "deviceIds": ["d"] })).await;
    let json_body =
        |m: &str| serde_json::to_vec(&json!([{"deviceId": "d", "message": m}])).unwrap();
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    zlib.write_all(&json_body("deflate")).unwrap();
    for (coding, body) in [
        ("gzip", gzip(&json_body("gzip"))),
        ("deflate", zlib.finish().unwrap()),
        (
            "zstd",
            zstd::stream::encode_all(&json_body("zstd")[..], 3).unwrap(),
        ),
    ] {
        let (status, answer) = post(
            &server,
            "/api/logs",
            &[
                ("content-type", "application/json"),
                ("content-encoding", coding),
            ],
            body,
        )
        .await;
        assert_eq!(status, 202, "{coding}: {answer}");
    }
    let got: Vec<String> = c
        .logs(3, T)
        .await
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, ["gzip", "deflate", "zstd"]);
    // Device status too.
    let (status, _) = post(
        &server,
        "/api/devices/d/status",
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        gzip(br#"{"status":"online"}"#),
    )
    .await;
    assert_eq!(status, 202);
    let (status, answer) = post(
        &server,
        "/api/logs",
        &[
            ("content-type", "application/json"),
            ("content-encoding", "br"),
        ],
        b"whatever".to_vec(),
    )
    .await;
    assert_eq!(status, 415, "{answer}");
    assert!(answer.contains("gzip, deflate, zstd"), "{answer}");
    let (status, answer) = post(
        &server,
        "/api/logs",
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        b"not gzip at all".to_vec(),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    let metrics = server
        .get_text("/metrics", &[("x-api-key", common::ADMIN_KEY)])
        .await;
    for reason in ["unsupported_encoding", "corrupt"] {
        assert!(
            metrics.contains(&format!(
                "logstream_ingest_decode_refused_total{{reason=\"{reason}\"}} 1"
            )),
            "{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bombs_are_refused_within_max_body_bytes_of_memory() {
    let server = Server::start();
    // 100 MiB of zeros, about 100 KB compressed; gzip members concatenate.
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(&vec![0u8; 100 << 20]).unwrap();
    let member = e.finish().unwrap();
    let (_, peak_before) = server.memory();
    // Under max_body_bytes (1 MB) compressed, 900 MiB decoded: decoding stops at 1 MB.
    let bomb = member.repeat(9);
    assert!(bomb.len() < 1_000_000, "{}", bomb.len());
    let headers = [
        ("content-type", "application/json"),
        ("content-encoding", "gzip"),
    ];
    let (status, answer) = post(&server, "/api/logs", &headers, bomb).await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer.contains("decodes to more than max_body_bytes"),
        "{answer}"
    );
    // 10 GiB decoded, 10 MB compressed: refused before it is decoded.
    let (status, answer) = post(&server, "/api/logs", &headers, member.repeat(100)).await;
    assert!(status == 413 || status == 0, "{status} {answer}");
    let (_, peak_after) = server.memory();
    let grown = peak_after.saturating_sub(peak_before) as f64 / (1 << 20) as f64;
    println!("gzip bombs of 900 MiB and 10 GiB: peak RSS grew {grown:.1} MB");
    assert!(grown < 16.0, "peak RSS grew {grown:.1} MB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_and_assets_are_compressed_for_clients_that_accept_it() {
    let server = Server::start();
    let url = server.url.clone();
    let curl = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-s", "--compressed", "-D", "-", &format!("{url}/app.js")])
            .output()
            .expect("curl")
    })
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&curl.stdout).to_lowercase();
    assert!(
        out.contains("content-encoding: gzip") || out.contains("content-encoding: br"),
        "{}",
        &out[..out.len().min(600)]
    );
    assert!(out.contains("socket"), "curl decoded the script");
    // Small answers are sent as they are.
    let small = reqwest::Client::new()
        .get(format!("{}/api/ws/health", server.url))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert!(small.headers().get("content-encoding").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polling_bodies_are_compressed() {
    let server = Server::start();
    let http = reqwest::Client::new();
    let base = format!("{}/socket.io/?EIO=4&transport=polling", server.url);
    let open = http.get(&base).send().await.unwrap().text().await.unwrap();
    let handshake: serde_json::Value = serde_json::from_str(&open[1..]).unwrap();
    let url = format!("{base}&sid={}", handshake["sid"].as_str().unwrap());
    let post = |packet: String| {
        let (http, url) = (http.clone(), url.clone());
        async move { http.post(&url).body(packet).send().await.unwrap() }
    };
    // Poll until a packet containing `what` comes (pings are answered).
    let poll_for = |what: &'static str| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            for _ in 0..10 {
                let body = http.get(&url).send().await.unwrap().text().await.unwrap();
                if body.split('\u{1e}').any(|p| p == "2") {
                    http.post(&url).body("3").send().await.unwrap();
                }
                if body.contains(what) {
                    return;
                }
            }
            panic!("no {what}");
        }
    };
    post(format!("40{}", json!({ "token": Server::token("poller") }))).await;
    poll_for("40{").await;
    post(format!(
        "42{}",
        json!(["log:subscribe", {"deviceIds": ["d"]}])
    ))
    .await;
    poll_for("log:subscribed").await;
    let logs: Vec<serde_json::Value> = (0..20)
        .map(|i| json!({"deviceId": "d", "message": format!("{i:03} {}", "x".repeat(200))}))
        .collect();
    server.ingest(json!(logs)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reply = http
        .get(&url)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(
        reply
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap()),
        Some("gzip")
    );
    let compressed = reply.bytes().await.unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&compressed[..]),
        &mut text,
    )
    .unwrap();
    assert!(text.contains("019 xxx"), "{}", &text[..text.len().min(300)]);
    assert!(
        compressed.len() * 3 < text.len(),
        "{} of {}",
        compressed.len(),
        text.len()
    );
}
