//! End-to-end tests of WebAssembly filter plugins: named filters, plugin validation errors,
//! shared registrations, bad plugin files, and a misbehaving plugin (infinite loop,
//! allocation bomb, trap, log flood) that must not hurt anyone else.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{ADMIN_KEY, Server, eventually, log};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(400);

/// A fresh plugins directory with the given built plugins and extra raw files.
fn plugins_dir(built: &[&str], extra: &[(&str, &[u8])]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "logstream-plugins-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for name in built {
        let from = PathBuf::from(env!("LOGSTREAM_BUILT_PLUGINS")).join(format!("{name}.wasm"));
        std::fs::copy(&from, dir.join(format!("{name}.wasm"))).unwrap();
    }
    for (file, bytes) in extra {
        std::fs::write(dir.join(file), bytes).unwrap();
    }
    dir
}

fn server_with(dir: &std::path::Path) -> common::ServerBuilder {
    Server::builder().env("LOGSTREAM_PLUGINS_DIR", dir.display())
}

async fn plugins(server: &Server) -> Value {
    let (s, body) = server
        .get("/api/plugins", &[("x-api-key", ADMIN_KEY)])
        .await;
    assert_eq!(s, 200, "{body}");
    body["data"].clone()
}

fn plugin<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no plugin {name} in {list}"))
}

fn messages(logs: &[Value]) -> Vec<String> {
    logs.iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_are_listed_and_bad_files_are_skipped_with_a_reason() {
    // An empty component: valid, but exports no filter.
    let empty_component: &[u8] = b"\0asm\x0d\x00\x01\x00";
    let core_module: &[u8] = b"\0asm\x01\x00\x00\x00";
    let dir = plugins_dir(
        &["regex", "misbehave"],
        &[
            ("garbage.wasm", b"this is not wasm"),
            ("empty.wasm", empty_component),
            ("core.wasm", core_module),
            ("bad name.wasm", b"\0asm"),
            ("notes.txt", b"ignored"),
        ],
    );
    let server = server_with(&dir).start();
    let list = plugins(&server).await;
    // The shipped filters speak 0.2.0 (the batch as one text); the fixture is built for
    // 0.1.0 and still loads.
    for (name, interface) in [
        ("default", "logstream:plugin@0.2.0"),
        ("regex", "logstream:plugin@0.2.0"),
        ("misbehave", "logstream:plugin@0.1.0"),
    ] {
        let p = plugin(&list, name);
        assert_eq!(p["status"], "active");
        assert_eq!(p["interface"], interface, "{name}");
    }
    assert_eq!(plugin(&list, "default")["source"], "built-in");
    let rejected = list["rejected"].as_array().unwrap();
    let reason = |file: &str| {
        rejected
            .iter()
            .find(|r| r["file"].as_str().unwrap().ends_with(file))
            .unwrap_or_else(|| panic!("{file} not rejected: {list}"))["reason"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(reason("garbage.wasm").contains("not a WebAssembly file"));
    assert!(
        reason("empty.wasm").contains("does not implement world `filter-plugin`"),
        "{}",
        reason("empty.wasm")
    );
    assert!(
        reason("core.wasm").contains("not a valid WebAssembly component"),
        "{}",
        reason("core.wasm")
    );
    assert!(reason("bad name.wasm").contains("plugin name"));
    assert_eq!(rejected.len(), 4, "notes.txt is not a plugin: {list}");
    // The server serves regardless.
    let mut c = server.client("u").await;
    c.subscribe(json!({})).await;
    server.ingest(log("d", "INFO", "fine")).await;
    assert_eq!(messages(&c.logs(1, T).await), ["fine"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_filter_unknown_filter_and_plugin_validation() {
    let dir = plugins_dir(&["regex"], &[]);
    let server = server_with(&dir).start();
    let mut c = server.client("u").await;
    let ack = c
        .subscribe(json!({ "filter": "regex", "params": { "pattern": "^disk (full|failed)$", "caseInsensitive": true } }))
        .await;
    assert_eq!(
        (ack["filter"].as_str(), ack["success"].as_bool()),
        (Some("regex"), Some(true))
    );
    server
        .ingest(json!([
            log("a", "INFO", "DISK FULL"),
            log("b", "INFO", "disk ok"),
            log("c", "ERROR", "disk failed"),
        ]))
        .await;
    assert_eq!(messages(&c.logs(2, T).await), ["DISK FULL", "disk failed"]);

    c.emit(
        "log:subscribe",
        json!({ "filter": "regex", "params": { "pattern": "(unclosed" } }),
    )
    .await;
    let err = c.next("error").await;
    assert_eq!(err["code"], "invalid_params");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("pattern: invalid regular expression"),
        "{err}"
    );
    c.emit(
        "log:subscribe",
        json!({ "filter": "regex", "params": { "pattern": "x", "field": "colour" } }),
    )
    .await;
    assert!(
        c.next("error").await["message"]
            .as_str()
            .unwrap()
            .contains("field: unknown field")
    );
    c.emit("log:subscribe", json!({ "filter": "nosuch", "params": {} }))
        .await;
    let err = c.next("error").await;
    assert_eq!(err["code"], "unknown_filter");
    assert!(
        err["message"].as_str().unwrap().contains("default, regex"),
        "{err}"
    );
    // The regex subscription is still in force.
    server
        .ingest(json!([
            log("a", "INFO", "disk full"),
            log("a", "INFO", "cpu")
        ]))
        .await;
    assert_eq!(messages(&c.logs(1, T).await), ["disk full"]);
    assert!(c.drain("log:new", QUIET).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_subscriptions_share_one_registration() {
    let server = Server::start();
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut c = server.client(&format!("u{i}")).await;
        c.subscribe(json!({ "deviceIds": ["d"], "levels": ["ERROR"] }))
            .await;
        clients.push(c);
    }
    let mut other = server.client("v").await;
    other.subscribe(json!({ "deviceIds": ["e"] })).await;
    assert_eq!(
        plugin(&plugins(&server).await, "default")["subscriptions"],
        2
    );
    let calls_before = plugin(&plugins(&server).await, "default")["calls"]
        .as_u64()
        .unwrap();
    server
        .ingest(json!([log("d", "ERROR", "x"), log("e", "INFO", "y")]))
        .await;
    for c in &mut clients {
        assert_eq!(messages(&c.logs(1, T).await), ["x"]);
    }
    assert_eq!(messages(&other.logs(1, T).await), ["y"]);
    // One call per batch for all of them.
    let calls_after = plugin(&plugins(&server).await, "default")["calls"]
        .as_u64()
        .unwrap();
    assert_eq!(
        calls_after - calls_before,
        1,
        "one evaluate call for the batch, for every subscription"
    );
    for c in clients {
        c.disconnect().await;
    }
    eventually(
        Duration::from_secs(3),
        "the shared registration goes when its last client leaves",
        || async {
            let count = plugin(&plugins(&server).await, "default")["subscriptions"].clone();
            if count == 1 {
                Ok(())
            } else {
                Err(count.to_string())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_plugin_is_contained_restarted_then_disabled() {
    let dir = plugins_dir(&["misbehave"], &[]);
    let server = server_with(&dir)
        .set("plugin_timeout_ms", 50)
        .set("plugin_memory_mb", 32)
        .set("plugin_max_failures", 3)
        .set("rate_limit", 100_000)
        .start();
    let mut good = server.client("good").await;
    good.subscribe(json!({ "deviceIds": ["d"] })).await;
    let mut bad = server.client("bad").await;
    bad.subscribe(json!({ "filter": "misbehave" })).await;
    let err = {
        bad.emit(
            "log:subscribe",
            json!({ "filter": "misbehave", "params": { "reject": "no thanks" } }),
        )
        .await;
        bad.next("error").await
    };
    assert!(
        err["message"].as_str().unwrap().contains("no thanks"),
        "{err}"
    );

    let mut expected_good = Vec::new();
    let mut step = 0;
    let mut send = async |server: &Server, bad_message: &str, expected_good: &mut Vec<String>| {
        step += 1;
        let ok = format!("ok-{step}");
        expected_good.push(ok.clone());
        server
            .ingest(json!([
                log("d", "INFO", &ok),
                log("x", "INFO", bad_message)
            ]))
            .await;
    };

    // Healthy: the misbehave subscriber sees everything.
    send(&server, "fine", &mut expected_good).await;
    assert_eq!(bad.logs(2, T).await.len(), 2);

    // Infinite loop: stopped by the CPU deadline, reported, instance restarted.
    send(&server, "loop", &mut expected_good).await;
    let e = bad.next("error").await;
    assert_eq!(e["code"], "plugin_failed", "{e}");
    assert!(e["message"].as_str().unwrap().contains("CPU budget"), "{e}");
    // Restarted with the subscription re-registered: works again (and resets the count).
    send(&server, "fine", &mut expected_good).await;
    assert_eq!(
        bad.logs(2, T).await.len(),
        2,
        "the restarted instance kept the subscription"
    );

    // Three failures in a row: allocation bomb, trap, loop.
    send(&server, "alloc", &mut expected_good).await;
    assert_eq!(bad.next("error").await["code"], "plugin_failed");
    send(&server, "trap", &mut expected_good).await;
    assert_eq!(bad.next("error").await["code"], "plugin_failed");
    send(&server, "loop", &mut expected_good).await;
    let e = bad.next("error").await;
    assert_eq!(e["code"], "filter_disabled", "{e}");

    // The good client got every one of its logs, in order, throughout.
    let got = good.logs(expected_good.len(), T).await;
    assert_eq!(messages(&got), expected_good);

    bad.emit("log:subscribe", json!({ "filter": "misbehave" }))
        .await;
    let e = bad.next("error").await;
    assert_eq!(e["code"], "filter_unavailable");
    assert!(e["message"].as_str().unwrap().contains("disabled"), "{e}");

    let p = plugins(&server).await;
    let m = plugin(&p, "misbehave");
    assert_eq!(m["status"], "disabled");
    assert_eq!(m["failures"], 4);
    assert!(m["restarts"].as_u64().unwrap() >= 3, "{m}");
    assert_eq!(m["subscriptions"], 0);
    assert_eq!(plugin(&p, "default")["status"], "active");
    // A disabled plugin is a problem the health check reports, until it is enabled again.
    let (_, health) = server.get("/api/ws/health", &[]).await;
    assert_eq!(health["data"]["healthy"], false, "{health}");
    assert!(
        health["data"]["problems"][0]
            .as_str()
            .unwrap()
            .contains("misbehave"),
        "{health}"
    );
    let admin = [("x-api-key", ADMIN_KEY)];
    let (s, body) = server
        .post("/api/plugins/misbehave/enable", &admin, "")
        .await;
    assert_eq!(
        (s, body["data"]["wasDisabled"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    assert_eq!(
        server.post("/api/plugins/nope/enable", &admin, "").await.0,
        404
    );
    let (_, health) = server.get("/api/ws/health", &[]).await;
    assert_eq!(health["data"]["healthy"], true, "{health}");
    bad.subscribe(json!({ "filter": "misbehave" })).await;
    send(&server, "fine", &mut expected_good).await;
    assert_eq!(bad.logs(2, T).await.len(), 2, "serves again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_logging_is_rate_limited() {
    let dir = plugins_dir(&["misbehave"], &[]);
    let server = server_with(&dir).set("plugin_log_per_second", 20).start();
    let mut c = server.client("u").await;
    c.subscribe(json!({ "filter": "misbehave" })).await;
    server.ingest(log("d", "INFO", "log")).await;
    assert_eq!(c.logs(1, T).await.len(), 1);
    let dropped = plugin(&plugins(&server).await, "misbehave")["logLinesDropped"]
        .as_u64()
        .unwrap();
    assert!(
        (970..=990).contains(&dropped),
        "1000 lines at 20/s burst: {dropped} dropped"
    );
}

fn built(name: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(env!("LOGSTREAM_BUILT_PLUGINS")).join(format!("{name}.wasm")))
        .unwrap()
}

/// Write `bytes` as `dir/file` the safe way: a temporary name, then a rename.
fn put(dir: &std::path::Path, file: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{file}.partial"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

/// Poll `GET /api/plugins` until `pred` holds (hot reload settles in ~0.5 s).
async fn wait_plugins(server: &Server, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    eventually(Duration::from_secs(15), what, || async {
        let list = plugins(server).await;
        if pred(&list) {
            Ok(list)
        } else {
            Err(list.to_string())
        }
    })
    .await
}

fn find<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_adds_replaces_refuses_and_removes() {
    let dir = plugins_dir(&[], &[]);
    let server = server_with(&dir).set("rate_limit", 100_000).start();
    let (regex, misbehave, default) = (built("regex"), built("misbehave"), built("default"));

    // Added while running.
    put(&dir, "live.wasm", &regex);
    wait_plugins(&server, "live loaded", |l| find(l, "live").is_some()).await;
    let mut c = server.client("u").await;
    c.subscribe(json!({ "filter": "live", "params": { "pattern": "^a" } }))
        .await;
    server
        .ingest(json!([log("d", "INFO", "a1"), log("d", "INFO", "b1")]))
        .await;
    assert_eq!(messages(&c.logs(1, T).await), ["a1"]);

    // Replaced: the subscription moves to the new version (which matches everything).
    put(&dir, "live.wasm", &misbehave);
    wait_plugins(&server, "misbehave as live", |l| {
        find(l, "live").is_some_and(|p| p["sizeBytes"] == misbehave.len())
    })
    .await;
    server
        .ingest(json!([log("d", "INFO", "a2"), log("d", "INFO", "b2")]))
        .await;
    assert_eq!(messages(&c.logs(2, T).await), ["a2", "b2"]);

    // A version that refuses the live params is not switched in.
    put(&dir, "live.wasm", &default);
    let l = wait_plugins(&server, "reload error", |l| {
        find(l, "live").is_some_and(|p| p["reloadError"].is_string())
    })
    .await;
    let p = find(&l, "live").unwrap();
    assert!(
        p["reloadError"]
            .as_str()
            .unwrap()
            .contains("refuses a live subscription"),
        "{p}"
    );
    assert_eq!(
        p["sizeBytes"],
        misbehave.len(),
        "old version still in service"
    );
    server.ingest(json!([log("d", "INFO", "b3")])).await;
    assert_eq!(messages(&c.logs(1, T).await), ["b3"]);

    // Half-written file (no rename): not a valid component, old version stays; once
    // complete it loads.
    std::fs::write(dir.join("live.wasm"), &regex[..regex.len() / 3]).unwrap();
    wait_plugins(&server, "truncated refused", |l| {
        find(l, "live").is_some_and(|p| {
            p["reloadError"]
                .as_str()
                .is_some_and(|e| e.contains("not a valid"))
        })
    })
    .await;
    std::fs::write(dir.join("live.wasm"), &regex).unwrap();
    wait_plugins(&server, "regex back", |l| {
        find(l, "live").is_some_and(|p| p["sizeBytes"] == regex.len() && p["reloadError"].is_null())
    })
    .await;
    server
        .ingest(json!([log("d", "INFO", "b4"), log("d", "INFO", "a4")]))
        .await;
    assert_eq!(messages(&c.logs(1, T).await), ["a4"]);

    // Removed: subscribers are told and the filter is gone.
    std::fs::remove_file(dir.join("live.wasm")).unwrap();
    let e = c.next("error").await;
    assert_eq!(
        (e["code"].as_str(), e["filter"].as_str()),
        (Some("filter_removed"), Some("live")),
        "{e}"
    );
    wait_plugins(&server, "live gone", |l| find(l, "live").is_none()).await;
    c.emit("log:subscribe", json!({ "filter": "live" })).await;
    assert_eq!(c.next("error").await["code"], "unknown_filter");
    assert!(c.drain("log:new", QUIET).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_plugin_under_load_loses_and_duplicates_nothing() {
    let (regex, misbehave) = (built("regex"), built("misbehave"));
    let dir = plugins_dir(&[], &[("flip.wasm", &regex)]);
    let server = server_with(&dir).set("rate_limit", 1_000_000).start();
    let mut c = server.client("u").await;
    // Both versions pass every log for these params.
    c.subscribe(json!({ "filter": "flip", "params": { "pattern": "." } }))
        .await;

    let total = 2000;
    let url = server.url.clone();
    let poster = common::post_numbered(url, "d", total, Duration::from_millis(15));
    let mut swaps = 0;
    for round in 0..6 {
        let bytes = if round % 2 == 0 { &misbehave } else { &regex };
        put(&dir, "flip.wasm", bytes);
        wait_plugins(&server, "swap", |l| {
            find(l, "flip").is_some_and(|p| p["sizeBytes"] == bytes.len())
        })
        .await;
        swaps += 1;
        if poster.is_finished() {
            break;
        }
    }
    poster.await.unwrap();
    assert!(swaps >= 3, "only {swaps} swaps happened while logs flowed");
    let got = c.logs(total, Duration::from_secs(30)).await;
    let seq: Vec<usize> = got
        .iter()
        .map(|l| l["message"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        seq,
        (0..total).collect::<Vec<_>>(),
        "every log once, in order, across {swaps} swaps"
    );
    assert!(c.drain("log:new", QUIET).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transforms_apply_per_subscription_after_filtering() {
    let dir = plugins_dir(&["regex", "redact"], &[]);
    let server = server_with(&dir).start();
    let list = plugins(&server).await;
    assert_eq!(plugin(&list, "redact")["kind"], "transform");
    assert_eq!(plugin(&list, "regex")["kind"], "filter");

    let mut all = server.client("a").await;
    let ack = all
        .subscribe(json!({ "deviceIds": ["d"], "transform": ["redact"] }))
        .await;
    assert_eq!(
        ack["transform"],
        json!([{ "name": "redact", "params": {} }])
    );
    let mut keep_emails = server.client("b").await;
    keep_emails
        .subscribe(json!({ "deviceIds": ["d"], "transform": [{ "name": "redact", "params": { "emails": false } }] }))
        .await;
    let mut plain = server.client("c").await;
    plain.subscribe(json!({ "deviceIds": ["d"] })).await;
    let mut named = server.client("d").await;
    named
        .subscribe(
            json!({ "filter": "regex", "params": { "pattern": "login" }, "transform": ["redact"] }),
        )
        .await;

    let raw = "login alice@example.com from 10.0.0.7 password=hunter2 ok";
    let mut entry = log("d", "WARN", raw);
    entry["region"] = json!("eu");
    entry["id"] = json!("log-1");
    server
        .ingest(json!([entry, log("d", "INFO", "no secrets here")]))
        .await;

    let redacted = "login [email] from [ipv4] password=[redacted] ok";
    let got = all.logs(2, T).await;
    assert_eq!(messages(&got), [redacted, "no secrets here"]);
    assert_eq!(
        (
            got[0]["id"].as_str(),
            got[0]["region"].as_str(),
            got[0]["level"].as_str()
        ),
        (Some("log-1"), Some("eu"), Some("WARN"))
    );
    assert_eq!(
        messages(&keep_emails.logs(2, T).await),
        [
            "login alice@example.com from [ipv4] password=[redacted] ok",
            "no secrets here"
        ]
    );
    assert_eq!(messages(&plain.logs(2, T).await), [raw, "no secrets here"]);
    assert_eq!(messages(&named.logs(1, T).await), [redacted]);

    for (sub, code, text) in [
        (
            json!({ "transform": ["nosuch"] }),
            "unknown_transform",
            "loaded transforms: redact",
        ),
        (
            json!({ "transform": [{ "name": "redact", "params": { "emails": "no" } }] }),
            "invalid_transform",
            "emails: must be true or false",
        ),
        (
            json!({ "transform": ["regex"] }),
            "unknown_transform",
            "unknown transform `regex`",
        ),
        (
            json!({ "filter": "redact" }),
            "unknown_filter",
            "unknown filter `redact`",
        ),
        (
            json!({ "transform": [{ "params": {} }] }),
            "invalid_subscription",
            "transform[0].name",
        ),
    ] {
        plain.emit("log:subscribe", sub.clone()).await;
        let e = plain.next("error").await;
        assert_eq!(e["code"], code, "{sub} -> {e}");
        assert!(
            e["message"].as_str().unwrap().contains(text),
            "{sub} -> {e}"
        );
    }
    // Still subscribed as before.
    server.ingest(log("d", "INFO", "after")).await;
    assert_eq!(messages(&plain.logs(1, T).await), ["after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_plugin_answer_is_a_failure_not_a_delivery() {
    let dir = plugins_dir(&["misbehave"], &[]);
    // misbehave answers every index for every subscription: a call on 50 logs = 212 bytes.
    // The 100 logs are one evaluation batch (`evaluation_batch_max_logs` is 256), but a
    // plugin is called on at most `batch_max_logs` (50) at a time: two calls, both over.
    let server = server_with(&dir)
        .set("plugin_max_output_bytes", 200)
        .set("rate_limit", 100_000)
        .start();
    let mut c = server.client("u").await;
    c.subscribe(json!({ "filter": "misbehave" })).await;
    let logs: Vec<Value> = (0..100).map(|i| log("d", "INFO", &i.to_string())).collect();
    server.ingest(Value::Array(logs)).await;
    let e = c.next("error").await;
    assert_eq!(e["code"], "plugin_failed", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("plugin_max_output_bytes"),
        "{e}"
    );
    assert!(
        c.drain("log:new", QUIET).await.is_empty(),
        "nothing from the oversized answer"
    );
    // Small batches stay under the limit and are delivered.
    server.ingest(log("d", "INFO", "small")).await;
    assert_eq!(messages(&c.logs(1, T).await), ["small"]);
    let p = plugins(&server).await;
    assert_eq!(
        plugin(&p, "misbehave")["badOutput"],
        2,
        "both calls of 50 were over"
    );
    assert_eq!(
        plugin(&p, "misbehave")["status"],
        "active",
        "two failures, then a success: not disabled"
    );
}

/// An operator disables a plugin through the API: its subscribers are told
/// (`filter_disabled`) and lose their subscription; enabled again, it serves; the built-in
/// filter cannot be disabled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_disables_and_enables_a_plugin() {
    let dir = plugins_dir(&["regex"], &[]);
    let server = server_with(&dir).start();
    let mut c = server.client("u").await;
    c.subscribe(json!({ "filter": "regex", "params": { "pattern": "^a" } }))
        .await;
    let admin = [("x-api-key", ADMIN_KEY)];
    let (s, body) = server.post("/api/plugins/regex/disable", &admin, "").await;
    assert_eq!(
        (s, &body["data"]["wasServing"]),
        (200, &json!(true)),
        "{body}"
    );
    let e = c.next("error").await;
    assert_eq!(
        (e["code"].as_str(), e["filter"].as_str()),
        (Some("filter_disabled"), Some("regex")),
        "{e}"
    );
    assert!(
        e["message"].as_str().unwrap().contains("by an operator"),
        "{e}"
    );
    let list = plugins(&server).await;
    assert_eq!(
        find(&list, "regex").unwrap()["status"],
        "disabled",
        "{list}"
    );
    server
        .ingest(json!([log("d", "INFO", "a-while-disabled")]))
        .await;
    assert!(
        c.drain("log:new", QUIET).await.is_empty(),
        "its subscription ended"
    );

    let (s, _) = server.post("/api/plugins/regex/enable", &admin, "").await;
    assert_eq!(s, 200);
    c.subscribe(json!({ "filter": "regex", "params": { "pattern": "^a" } }))
        .await;
    server.ingest(json!([log("d", "INFO", "a-again")])).await;
    assert_eq!(messages(&c.logs(1, T).await), ["a-again"]);

    let (s, body) = server
        .post("/api/plugins/default/disable", &admin, "")
        .await;
    assert_eq!(s, 403, "{body}");
    let (s, _) = server.post("/api/plugins/nope/disable", &admin, "").await;
    assert_eq!(s, 404);
    let (s, _) = server.post("/api/plugins/regex/disable", &[], "").await;
    assert_eq!(s, 401);
}
