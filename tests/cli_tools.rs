//! `logstream tail` and `logstream ship` as a person runs them: the real binary against a
//! real server, through the network.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::tool::{Tool, wait};
use common::{ADMIN_KEY, API_KEY, Server, eventually, log};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);

/// `logstream tail --server <server> --token <token>` and `args`.
fn run_tail(server: &Server, token: &str, args: &[&str]) -> Tool {
    Tool::start(
        &[&["tail", "--server", &server.url, "--token", token], args].concat(),
        false,
    )
}

/// `logstream ship` following `file` as `device`, its checkpoints in `state`.
fn ship_file(server: &Server, device: &str, state: &Path, file: &Path, extra: &[&str]) -> Tool {
    let mut args = vec![
        "ship",
        "--server",
        &server.url,
        "--api-key",
        API_KEY,
        "--device",
        device,
        "--batch-ms",
        "50",
        "--data-dir",
        state.to_str().unwrap(),
        file.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Tool::start(&args, false)
}

fn texts(logs: Vec<Value>) -> Vec<String> {
    logs.iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect()
}

fn append(file: &Path, text: &str) {
    std::fs::OpenOptions::new()
        .append(true)
        .open(file)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap()
}

/// The one checkpoint file `ship` keeps in `state`.
fn checkpoint_in(state: &Path) -> std::path::PathBuf {
    std::fs::read_dir(state.join("ship"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .unwrap()
}

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
    let tail = run_tail(
        &server,
        &token,
        &["-d", "d1", "-n", "2", "--output", "json"],
    );
    assert_eq!(messages(&tail.lines(2)), ["old-2", "old-3"]);
    server
        .ingest(json!([
            log("d2", "INFO", "other"),
            log("d1", "WARN", "live-1")
        ]))
        .await;
    let live: Value = serde_json::from_str(&tail.lines(1)[0]).unwrap();
    assert_eq!(live["message"], "live-1");
    assert!(
        live["offset"].is_string(),
        "JSON lines carry their offset: {live}"
    );

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
    // A live rate the tool cannot raise (it asks for the most the server grants).
    let server = Server::builder()
        .set("rate_limit", 3)
        .set("max_client_rate_limit", 3)
        .start();
    let token = Server::token("cli");
    let tail = run_tail(&server, &token, &["--timestamps"]);
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
    bad.assert_said("refused");
}

/// `tail` on a server with the seed's default rate (100/s): a burst of 400 in one request,
/// then `-n 1000` of them, print every line; JSON lines carry offsets `--since` takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_every_line_of_a_burst_and_of_history_at_the_default_rate() {
    let server = Server::start();
    let token = Server::token("cli");
    let live = run_tail(&server, &token, &["-d", "burst", "--output", "raw"]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let burst: Vec<Value> = (0..400)
        .map(|i| log("burst", "INFO", &format!("b{i}")))
        .collect();
    server.ingest(Value::Array(burst)).await;
    let lines = live.lines(400);
    assert_eq!(lines[399], "b399");
    assert!(!live.stderr().contains("dropped"), "{}", live.stderr());
    // Text and raw output ask for gzip batches, and the server compressed them.
    let metrics = server
        .get_text("/metrics", &[("x-api-key", ADMIN_KEY)])
        .await;
    let compressed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("logstream_gzip_batches_compressed_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(compressed >= 1, "{compressed}");
    assert!(live.interrupt().success());

    let history = run_tail(
        &server,
        &token,
        &["-d", "burst", "-n", "1000", "--output", "json"],
    );
    let lines: Vec<Value> = history
        .lines(400)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["message"], "b0");
    assert_eq!(lines[399]["message"], "b399");
    let offsets: Vec<&str> = lines
        .iter()
        .map(|l| l["offset"].as_str().unwrap())
        .collect();
    let mut distinct = offsets.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 400, "each entry its own offset");
    assert!(
        !history.stderr().contains("dropped"),
        "{}",
        history.stderr()
    );
    assert!(history.interrupt().success());

    // An offset from that output starts a new run right after its entry.
    let after = run_tail(
        &server,
        &token,
        &["-d", "burst", "--since", offsets[396], "--output", "raw"],
    );
    assert_eq!(after.lines(3), ["b397", "b398", "b399"]);
    assert!(after.interrupt().success());
}

/// The named filter `tail` follows is removed from the server: it exits non-zero, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_exits_with_the_message_when_its_filter_is_removed() {
    let dir = common::scratch_dir("tail-plugins");
    std::fs::copy(
        std::path::PathBuf::from(env!("LOGSTREAM_BUILT_PLUGINS")).join("regex.wasm"),
        dir.join("gone.wasm"),
    )
    .unwrap();
    let server = Server::builder()
        .env("LOGSTREAM_PLUGINS_DIR", dir.display())
        .start();
    let token = Server::token("cli");
    let follow_gone = [
        "--filter",
        "gone",
        "--params",
        r#"{"pattern": "^x"}"#,
        "--output",
        "raw",
    ];
    let mut tail = run_tail(&server, &token, &follow_gone);
    tokio::time::sleep(Duration::from_millis(700)).await;
    server
        .ingest(json!([log("d", "INFO", "y"), log("d", "INFO", "x1")]))
        .await;
    assert_eq!(tail.lines(1), ["x1"]);
    // The same, asked to fall back: it goes on with every log.
    let fallback = run_tail(
        &server,
        &token,
        &[&follow_gone[..], &["--fallback-all"]].concat(),
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    std::fs::remove_file(dir.join("gone.wasm")).unwrap();
    let status = wait(&mut tail.child, T);
    assert_eq!(status.code(), Some(1), "{}", tail.stderr());
    assert!(
        tail.stderr().contains("filter_removed") && tail.stderr().contains("gone"),
        "{}",
        tail.stderr()
    );
    // Logs of any device reach it now (a few tries: it subscribes again first).
    let deadline = std::time::Instant::now() + T;
    loop {
        server.ingest(json!([log("d", "INFO", "y-after")])).await;
        if fallback
            .stdout
            .recv_timeout(Duration::from_millis(500))
            .is_ok_and(|l| l == "y-after")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            fallback.stderr()
        );
    }
    fallback.assert_said("--fallback-all");
    assert!(fallback.interrupt().success());
}

/// On a terminal `tail` says where it connected, what it follows and the rate granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_on_a_terminal_says_where_it_connected_and_what_it_follows() {
    let server = Server::start();
    let token = Server::token("cli");
    // `script` gives the command a pseudo-terminal (util-linux).
    let command = format!(
        "{} tail --server {} --token {token} -d web-1 -l ERROR",
        env!("CARGO_BIN_EXE_logstream"),
        server.url
    );
    let mut tool = Tool::start_program("script", &["-qfec", &command, "/dev/null"]);
    let line = tool
        .lines_until(|l| l.contains("connected to"))
        .unwrap_or_else(|| panic!("{}", tool.stderr()));
    assert!(line.contains(&server.url), "{line}");
    assert!(line.contains("devices web-1 · levels ERROR"), "{line}");
    assert!(line.contains("up to 2000 logs/s"), "{line}");
    let _ = tool.child.kill();
    let _ = tool.child.wait();
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
    ship.assert_said("sending the batch again");
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

/// `ship` keeps its place in a followed file: run again, it sends only what is new; after a
/// crash between a batch's 202 and its checkpoint, it sends that batch again under the same
/// key, and the server answers it as a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ship_resumes_a_file_from_its_checkpoint_and_resends_a_batch_in_flight_once() {
    let server = Server::start();
    let mut c = server.client("watcher").await;
    c.subscribe(json!({ "deviceIds": ["web-1"] })).await;
    let dir = common::scratch_dir("ship-ckpt");
    let state = dir.join("state");
    let file = dir.join("app.log");
    std::fs::write(&file, "one\ntwo\n").unwrap();
    let ship = |from_start: bool| {
        let extra: &[&str] = if from_start { &["--from-start"] } else { &[] };
        ship_file(&server, "web-1", &state, &file, extra)
    };
    let first = ship(false);
    assert_eq!(texts(c.logs(2, T).await), ["one", "two"]);
    assert!(
        first
            .stderr()
            .contains("from its start; its place is kept in"),
        "{}",
        first.stderr()
    );
    assert!(first.interrupt().success());

    append(&file, "three\n");
    let second = ship(false);
    assert_eq!(texts(c.logs(1, T).await), ["three"]);
    second.assert_said("resuming");
    assert!(second.interrupt().success());
    assert!(
        c.drain("log:new", Duration::from_millis(300))
            .await
            .is_empty(),
        "nothing again"
    );

    // A batch in flight when ship died: its lines landed, its checkpoint says "pending".
    append(&file, "four\nfive\n");
    let (s, _) = server
        .post(
            "/api/logs",
            &[("x-api-key", API_KEY), ("idempotency-key", "in-flight-1")],
            &json!([log("web-1", "INFO", "four"), log("web-1", "INFO", "five")]).to_string(),
        )
        .await;
    assert_eq!(s, 202);
    assert_eq!(texts(c.logs(2, T).await), ["four", "five"]);
    let checkpoint = checkpoint_in(&state);
    let mut kept: Value = serde_json::from_slice(&std::fs::read(&checkpoint).unwrap()).unwrap();
    assert_eq!(kept["offset"], "one\ntwo\nthree\n".len());
    kept["pending"] =
        json!({ "until": std::fs::metadata(&file).unwrap().len(), "key": "in-flight-1" });
    std::fs::write(&checkpoint, kept.to_string()).unwrap();
    let third = ship(false);
    eventually(T, "the batch in flight sent again", || async {
        let now: Value = serde_json::from_slice(&std::fs::read(&checkpoint).unwrap()).unwrap();
        if now["pending"].is_null() && now["offset"] == kept["pending"]["until"] {
            Ok(())
        } else {
            Err(now.to_string())
        }
    })
    .await;
    assert!(
        c.drain("log:new", Duration::from_millis(300))
            .await
            .is_empty(),
        "four and five once"
    );
    append(&file, "six\n");
    assert_eq!(texts(c.logs(1, T).await), ["six"]);
    assert!(third.interrupt().success());

    // --from-start sends the whole file again, on request.
    let again = ship(true);
    assert_eq!(
        texts(c.logs(6, T).await),
        ["one", "two", "three", "four", "five", "six"]
    );
    again.assert_said("--from-start");
    assert!(again.interrupt().success());
}

/// The cases a checkpoint must not get wrong: a batch in flight that never reached the
/// server, a rotation and a copytruncate while ship was not running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ship_checkpoints_survive_a_lost_batch_a_rotation_and_a_copytruncate() {
    let server = Server::start();
    let mut c = server.client("watcher").await;
    c.subscribe(json!({ "deviceIds": ["web-2"] })).await;
    let dir = common::scratch_dir("ship-ckpt2");
    let state = dir.join("state");
    let file = dir.join("app.log");
    std::fs::write(&file, "one\n").unwrap();
    let ship = || ship_file(&server, "web-2", &state, &file, &[]);
    let append = |text: &str| append(&file, text);
    let first = ship();
    assert_eq!(texts(c.logs(1, T).await), ["one"]);
    assert!(first.interrupt().success());
    let checkpoint = checkpoint_in(&state);

    // A batch named in flight that never reached the server: sent now, once.
    append("two\nthree\n");
    let mut kept: Value = serde_json::from_slice(&std::fs::read(&checkpoint).unwrap()).unwrap();
    kept["pending"] =
        json!({ "until": std::fs::metadata(&file).unwrap().len(), "key": "never-sent" });
    std::fs::write(&checkpoint, kept.to_string()).unwrap();
    let second = ship();
    assert_eq!(texts(c.logs(2, T).await), ["two", "three"]);
    assert!(second.interrupt().success());

    // Rotated while ship was away, with lines the old file got last: those first.
    append("four\n");
    std::fs::rename(&file, dir.join("app.log.1")).unwrap();
    std::fs::write(&file, "five\n").unwrap();
    let third = ship();
    assert_eq!(texts(c.logs(2, T).await), ["four", "five"]);
    third.assert_said("was rotated; finishing");
    assert!(third.interrupt().success());

    // Truncated and written past the old offset again (copytruncate): from the start.
    std::fs::write(&file, "six six six six\n").unwrap();
    let fourth = ship();
    assert_eq!(texts(c.logs(1, T).await), ["six six six six"]);
    fourth.assert_said("changed before byte");
    assert!(fourth.interrupt().success());
    assert!(
        c.drain("log:new", Duration::from_millis(300))
            .await
            .is_empty(),
        "nothing twice"
    );
}
