//! `logstream tail` and `logstream ship` as a person runs them: the real binary against a
//! real server, through the network.

mod common;

use std::io::Write;
use std::time::Duration;

use common::tool::{Tool, wait};
use common::{ADMIN_KEY, API_KEY, Server, eventually, log};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);

fn messages(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["message"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follows_filters_and_resumes_after_a_disconnect_without_a_gap() {
    let server = Server::builder().set("rate_limit", 100_000).start();
    // History to start from: the last two of these.
    server
        .ingest(json!([
            log("d1", "INFO", "old-1"),
            log("d1", "INFO", "old-2"),
            log("d1", "INFO", "old-3")
        ]))
        .await;
    let token = Server::token("cli");
    let tail = Tool::start(
        &[
            "tail",
            "--server",
            &server.url,
            "--token",
            &token,
            "-d",
            "d1",
            "-n",
            "2",
            "--output",
            "json",
        ],
        false,
    );
    assert_eq!(messages(&tail.lines(2)), ["old-2", "old-3"]);
    server
        .ingest(json!([
            log("d2", "INFO", "other"),
            log("d1", "WARN", "live-1")
        ]))
        .await;
    assert_eq!(messages(&tail.lines(1)), ["live-1"]);
    // It asked for gzip batches, and the server compressed them.
    let metrics = server
        .get_text("/metrics", &[("x-api-key", ADMIN_KEY)])
        .await;
    let compressed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("logstream_gzip_batches_compressed_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(compressed >= 2, "backfill and live batch: {compressed}");

    // The server drops the connection; logs arrive while tail is away.
    let (_, conns) = server
        .get("/api/ws/connections", &[("x-api-key", ADMIN_KEY)])
        .await;
    let id = conns["data"]["connections"][0]["id"]
        .as_str()
        .or_else(|| conns["data"][0]["id"].as_str())
        .unwrap_or_else(|| panic!("{conns}"))
        .to_owned();
    let (status, _) = server
        .delete(
            &format!("/api/ws/connections/{id}"),
            &[("x-api-key", ADMIN_KEY)],
        )
        .await;
    assert_eq!(status, 200);
    server
        .ingest(json!([
            log("d1", "INFO", "away-1"),
            log("d1", "INFO", "away-2")
        ]))
        .await;
    assert_eq!(messages(&tail.lines(2)), ["away-1", "away-2"]);
    server.ingest(json!([log("d1", "INFO", "after")])).await;
    assert_eq!(messages(&tail.lines(1)), ["after"]);
    eventually(Duration::from_secs(5), "tail says it resumed", || async {
        let err = tail.stderr();
        if err.contains("nothing missed") {
            Ok(())
        } else {
            Err(err)
        }
    })
    .await;
    assert!(tail.stdout.try_recv().is_err(), "no duplicates");
    assert!(tail.interrupt().success(), "Ctrl-C ends it cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_text_and_reports_drops_and_fails_on_a_bad_token() {
    let server = Server::builder().set("rate_limit", 3).start();
    let token = Server::token("cli");
    let tail = Tool::start(
        &[
            "tail",
            "--server",
            &server.url,
            "--token",
            &token,
            "--timestamps",
        ],
        false,
    );
    // Give it time to subscribe (nothing to replay), then 5 logs at 3/s: 2 dropped.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let logs: Vec<Value> = (0..5)
        .map(|i| log("dev", "ERROR", &format!("m{i}")))
        .collect();
    server.ingest(Value::Array(logs)).await;
    let lines = tail.lines(3);
    assert!(lines[0].ends_with("dev ERROR m0"), "{lines:?}");
    assert!(lines[0].starts_with("20"), "a timestamp first: {lines:?}");
    assert!(!lines[0].contains('\x1b'), "no colours into a pipe");
    eventually(Duration::from_secs(5), "the drop is reported", || async {
        let err = tail.stderr();
        if err.contains("2 logs dropped: rate limit") {
            Ok(())
        } else {
            Err(err)
        }
    })
    .await;
    assert!(tail.interrupt().success());

    let mut bad = Tool::start(&["tail", "--server", &server.url, "--token", "nope"], false);
    let status = wait(&mut bad.child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(2), "auth failure: {}", bad.stderr());
    assert!(bad.stderr().contains("refused"), "{}", bad.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ship_sends_stdin_in_batches_with_levels_and_tags() {
    let server = Server::builder().set("rate_limit", 100_000).start();
    let mut c = server.client("watcher").await;
    c.subscribe(json!({ "deviceIds": ["web-1"] })).await;
    let mut ship = Tool::start(
        &[
            "ship",
            "--server",
            &server.url,
            "--api-key",
            API_KEY,
            "--device",
            "web-1",
            "--level-from",
            r"\b(INFO|WARN|ERROR)\b",
            "--tag",
            "nginx",
            "--batch-lines",
            "100",
        ],
        true,
    );
    {
        let mut stdin = ship.child.stdin.take().unwrap();
        for i in 0..1000 {
            let level = if i % 10 == 0 { "ERROR" } else { "INFO" };
            writeln!(stdin, "{level} request {i}").unwrap();
        }
        // Closing stdin ends the input: ship sends what is left and exits.
    }
    let status = wait(&mut ship.child, Duration::from_secs(30));
    assert!(status.success(), "{}", ship.stderr());
    let logs = c.logs(1000, T).await;
    for (i, l) in logs.iter().enumerate() {
        assert_eq!(
            l["message"],
            format!("{} request {i}", if i % 10 == 0 { "ERROR" } else { "INFO" })
        );
        assert_eq!(l["level"], if i % 10 == 0 { "ERROR" } else { "INFO" });
        assert_eq!(l["tags"], json!(["nginx"]));
    }
    let extra = c.drain("log:new", Duration::from_millis(300)).await;
    assert!(extra.is_empty(), "nothing twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ship_follows_a_file_across_rotation_and_waits_for_the_server() {
    let dir = common::scratch_dir("ship");
    let file = dir.join("app.log");
    std::fs::write(&file, "one\ntwo\n").unwrap();
    // The server is not up yet: ship keeps its lines and retries.
    let port = common::redis::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let ship = Tool::start(
        &[
            "ship",
            "--server",
            &url,
            "--api-key",
            API_KEY,
            "--device",
            "f",
            "--batch-ms",
            "50",
            file.to_str().unwrap(),
        ],
        false,
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let server = Server::builder()
        .args(&["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
        .set("rate_limit", 100_000)
        .start();
    let mut c = server.client("watcher").await;
    c.subscribe(json!({ "deviceIds": ["f"], "tail": 10 })).await;
    let got = c.logs(2, T).await;
    assert_eq!(
        got.iter()
            .map(|l| l["message"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["one", "two"]
    );

    // Appended lines, then a rotation (the file moved away, a new one in its place).
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    writeln!(f, "three").unwrap();
    drop(f);
    let got = c.logs(1, T).await;
    assert_eq!(got[0]["message"], "three");
    std::fs::rename(&file, dir.join("app.log.1")).unwrap();
    std::fs::write(&file, "four\nfive\n").unwrap();
    let got = c.logs(2, T).await;
    assert_eq!(
        got.iter()
            .map(|l| l["message"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["four", "five"]
    );
    assert!(
        ship.stderr().contains("sending the batch again"),
        "{}",
        ship.stderr()
    );
    assert!(ship.interrupt().success());
    let extra = c.drain("log:new", Duration::from_millis(300)).await;
    assert!(extra.is_empty(), "nothing twice: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_again_with_its_idempotency_key_is_published_once() {
    let server = Server::start();
    let mut c = server.client("watcher").await;
    c.subscribe(json!({})).await;
    let body = json!([log("d", "INFO", "once")]).to_string();
    let headers = [("x-api-key", API_KEY), ("idempotency-key", "batch-1")];
    let (s1, a1) = server.post("/api/logs", &headers, &body).await;
    let (s2, a2) = server.post("/api/logs", &headers, &body).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(a1["duplicate"], Value::Null);
    assert_eq!(a2["duplicate"], true, "{a2}");
    assert_eq!(c.logs(1, T).await[0]["message"], "once");
    let extra = c.drain("log:new", Duration::from_millis(300)).await;
    assert!(extra.is_empty(), "published once: {extra:?}");
    let (s, e) = server
        .post(
            "/api/logs",
            &[
                ("x-api-key", API_KEY),
                ("idempotency-key", "bad key with spaces"),
            ],
            &body,
        )
        .await;
    assert_eq!(s, 400, "{e}");
}
