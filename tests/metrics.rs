//! `GET /metrics` after real traffic, parsed by the Prometheus project's own parser (Python
//! `prometheus_client`, from PyPI; `.ci/run` installs it): values moved as the traffic says.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{ADMIN_KEY, Server, log};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);

/// Every sample of the exposition at `server`, as parsed by prometheus_client.
fn scrape(server: &Server, key: &str) -> Vec<Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/parse_metrics.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(format!("{}/metrics", server.url))
        .arg(key)
        .output()
        .expect("python3 is needed for the metrics test");
    assert!(
        output.status.success(),
        "prometheus_client could not parse /metrics (pip install prometheus-client): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn sample(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| {
            s["name"] == name
                && labels
                    .iter()
                    .all(|(k, v)| s["labels"][*k].as_str() == Some(*v))
        })
        .and_then(|s| s["value"].as_f64())
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_with_prometheus_and_follow_the_traffic() {
    let server = Server::builder()
        .set("metrics_key", "scrape-me")
        .set("rate_limit", 5)
        .start();
    let before = scrape(&server, "scrape-me");
    assert_eq!(sample(&before, "logstream_connections", &[]), 0.0);
    assert_eq!(
        sample(
            &before,
            "logstream_logs_ingested_total",
            &[("source", "http")]
        ),
        0.0
    );

    let mut c = server.client("watcher").await;
    c.subscribe(json!({ "deviceIds": ["d"] })).await;
    // 12 logs at a rate limit of 5/s: 5 delivered, 7 dropped as rate_limit.
    let logs: Vec<Value> = (0..12).map(|i| log("d", "INFO", &i.to_string())).collect();
    server.ingest(Value::Array(logs)).await;
    assert_eq!(c.logs(5, T).await.len(), 5);
    let dropped = c.next("log:dropped").await;
    assert_eq!(dropped["count"], 7);

    let after = scrape(&server, "scrape-me");
    assert_eq!(sample(&after, "logstream_connections", &[]), 1.0);
    assert_eq!(
        sample(
            &after,
            "logstream_logs_ingested_total",
            &[("source", "http")]
        ),
        12.0
    );
    assert_eq!(sample(&after, "logstream_deliveries_total", &[]), 5.0);
    assert_eq!(
        sample(
            &after,
            "logstream_dropped_total",
            &[("reason", "rate_limit")]
        ),
        7.0
    );
    assert!(
        sample(
            &after,
            "logstream_plugin_calls_total",
            &[("plugin", "default")]
        ) >= 1.0
    );
    assert!(
        sample(
            &after,
            "logstream_plugin_call_seconds_count",
            &[("plugin", "default")]
        ) >= 1.0
    );
    assert_eq!(
        sample(&after, "logstream_plugin_enabled", &[("plugin", "default")]),
        1.0
    );
    assert!(sample(&after, "logstream_batch_size_count", &[]) >= 1.0);
    assert_eq!(
        sample(&after, "logstream_ingest_to_emit_seconds_count", &[]),
        12.0
    );
    assert_eq!(sample(&after, "logstream_history_logs", &[]), 12.0);
    assert_eq!(sample(&after, "logstream_bus_connected", &[]), 1.0);

    // Protected: no key, a wrong key are refused; the admin key works too.
    let (status, _) = server.get("/metrics", &[]).await;
    assert_eq!(status, 401);
    let (status, _) = server
        .get("/metrics", &[("authorization", "Bearer wrong")])
        .await;
    assert_eq!(status, 401);
    let admin = scrape(&server, &format!("admin:{ADMIN_KEY}"));
    assert!(admin.len() > 20, "the admin key reads the metrics too");
    let bearer = scrape(&server, &format!("bearer-admin:{ADMIN_KEY}"));
    assert!(bearer.len() > 20, "the admin key as a bearer token too");
}
