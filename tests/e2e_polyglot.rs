//! Filters written in Python (componentize-py) and JavaScript (componentize-js), built from
//! `examples/filters/` by its build script, loaded by the server and driven end to end.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{Server, log};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);

fn messages(logs: &[Value]) -> Vec<String> {
    logs.iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect()
}

/// Build both examples once per test binary into target/polyglot-plugins.
fn build_examples() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = root.join("target/polyglot-plugins");
    let status = Command::new("bash")
        .arg(root.join("examples/filters/build.sh"))
        .arg(&out)
        .status()
        .expect("bash");
    assert!(
        status.success(),
        "examples/filters/build.sh failed (it needs python3 with pip and Node.js with npm; .ci/run installs them)"
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_filters_work_end_to_end() {
    let dir = tokio::task::spawn_blocking(build_examples).await.unwrap();
    for (file, min) in [
        ("min-level.wasm", 1_000_000u64),
        ("field-equals.wasm", 1_000_000),
    ] {
        let size = std::fs::metadata(dir.join(file)).unwrap().len();
        assert!(size > min, "{file} is only {size} bytes");
        // Compile into the cache first (tens of seconds for these sizes on a busy machine),
        // so the server starts in its usual time.
        let _ = Command::new(env!("CARGO_BIN_EXE_logstream"))
            .args(["plugin", "check"])
            .arg(dir.join(file))
            .env("RUST_LOG", "error")
            .output();
    }
    let server = Server::builder()
        .env("LOGSTREAM_PLUGINS_DIR", dir.display())
        .start();
    let (_, plugins) = server
        .get("/api/plugins", &[("x-api-key", common::ADMIN_KEY)])
        .await;
    let names: Vec<&str> = plugins["data"]["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"min-level") && names.contains(&"field-equals"),
        "{plugins}"
    );

    let mut py = server.client("py").await;
    py.subscribe(json!({ "filter": "min-level", "params": { "minLevel": "warn", "devicePrefix": "sensor-" } }))
        .await;
    let mut js = server.client("js").await;
    js.subscribe(
        json!({ "filter": "field-equals", "params": { "field": "region", "value": "eu" } }),
    )
    .await;

    // Each plugin's own validation message reaches the client; the subscription stays.
    py.emit(
        "log:subscribe",
        json!({ "filter": "min-level", "params": { "minLevel": "LOUD" } }),
    )
    .await;
    let e = py.next("error").await;
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("minLevel: unknown level"),
        "{e}"
    );
    js.emit(
        "log:subscribe",
        json!({ "filter": "field-equals", "params": { "field": 3 } }),
    )
    .await;
    let e = js.next("error").await;
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("field: must be a non-empty string"),
        "{e}"
    );

    let entry = |device: &str, level: &str, message: &str, region: &str| {
        let mut l = log(device, level, message);
        l["region"] = json!(region);
        l
    };
    server
        .ingest(json!([
            entry("sensor-1", "ERROR", "m1", "eu"),
            entry("sensor-1", "INFO", "m2", "eu"),
            entry("pump-1", "FATAL", "m3", "us"),
            entry("sensor-2", "warn", "m4", "us"),
        ]))
        .await;
    assert_eq!(messages(&py.logs(2, T).await), ["m1", "m4"]);
    assert_eq!(messages(&js.logs(2, T).await), ["m1", "m2"]);
    for c in [&mut py, &mut js] {
        assert!(
            c.drain("log:new", Duration::from_millis(400))
                .await
                .is_empty()
        );
    }
}
