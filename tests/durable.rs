//! A durable single node: the embedded history on disk (`history_dir`), the real binary
//! killed, restarted on the same port and directory, its files cut and flipped, its disk
//! filled.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::tool::Tool;
use common::{API_KEY, Server, TestClient, eventually, log, scratch_dir};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server on `port` keeping its state in `data`, with `sets`.
fn start(port: u16, data: &Path, sets: &[(&str, &str)]) -> Server {
    let mut b = Server::builder()
        .args(&["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
        .env("LOGSTREAM_DATA_DIR", data.display())
        .capture_stderr();
    for (k, v) in sets {
        b = b.set(k, v);
    }
    b.start()
}

fn history_dir(data: &Path) -> PathBuf {
    data.join("history")
}

fn segments(data: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(history_dir(data))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs
}

fn messages(logs: &[Value]) -> Vec<String> {
    logs.iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect()
}

fn numbered(device: &str, from: usize, n: usize) -> Value {
    Value::Array(
        (from..from + n)
            .map(|i| log(device, "INFO", &format!("m{i}")))
            .collect(),
    )
}

/// Every log of `device` from the start of the history: a client with `since` the offset
/// before the first.
async fn everything(server: &Server, data: &Path, device: &str, n: usize) -> Vec<String> {
    let epoch = std::fs::read_to_string(history_dir(data).join("EPOCH")).unwrap();
    let mut c = TestClient::connect(&server.url, Some(&Server::token("reader")))
        .await
        .unwrap();
    let since = format!("{}:0-0", epoch.trim());
    let ack = c
        .subscribe(json!({ "deviceIds": [device], "since": since, "batch": true }))
        .await;
    assert_eq!(ack["recovered"], true, "{ack}");
    let got = messages(&c.logs(n, T).await);
    assert!(
        c.try_next_of(&["log:new", "log:batch"], Duration::from_millis(300))
            .await
            .is_none(),
        "more than {n} logs"
    );
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kills_under_load_lose_nothing_answered_and_tail_sees_each_log_once() {
    let data = scratch_dir("durable-kills");
    let port = free_port();
    let sets = [("replay_max_logs", "1000000"), ("rate_limit", "100000")];
    let mut server = start(port, &data, &sets);
    let url = server.url.clone();
    let epoch = std::fs::read_to_string(history_dir(&data).join("EPOCH")).unwrap();

    // The producer: 20 logs every 10 ms (~2000/s), each request with its Idempotency-Key,
    // sent again (the same) until it is answered 2xx.
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicUsize::new(0));
    let producer = {
        let (stop, accepted, url) = (stop.clone(), accepted.clone(), url.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap();
            let mut batch = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let logs = numbered("p", batch * 20, 20);
                loop {
                    let answer = http
                        .post(format!("{url}/api/logs"))
                        .header("x-api-key", API_KEY)
                        .header("idempotency-key", format!("batch-{batch}"))
                        .json(&logs)
                        .send()
                        .await;
                    if answer.is_ok_and(|r| r.status().is_success()) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                batch += 1;
                accepted.store(batch * 20, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    // The consumer: `logstream tail`, which resumes from the last offset it printed.
    let tail = Tool::start(
        &[
            "tail",
            "--server",
            &url,
            "--token",
            &Server::token("tail"),
            "-d",
            "p",
            "--since",
            &format!("{}:0-0", epoch.trim()),
            "--output",
            "raw",
        ],
        false,
    );
    eventually(T, "the producer is going", || async {
        if accepted.load(Ordering::Relaxed) >= 200 {
            Ok(())
        } else {
            Err(accepted.load(Ordering::Relaxed).to_string())
        }
    })
    .await;

    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..20 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(150 + rng % 450)).await;
        server.kill();
        server = start(port, &data, &sets);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    producer.await.unwrap();
    let total = accepted.load(Ordering::Relaxed);
    assert!(total >= 2000, "only {total} logs accepted");
    eprintln!("{total} logs accepted across 20 kills");
    let expected: Vec<String> = (0..total).map(|i| format!("m{i}")).collect();

    // Every answered log is in history once, in order (with its key, a retry after a crash
    // was not published twice).
    assert_eq!(everything(&server, &data, "p", total).await, expected);
    // tail printed each once, in order, and never said it missed any.
    let printed = tail.lines(total);
    assert_eq!(printed, expected);
    assert!(
        tail.stdout
            .recv_timeout(Duration::from_millis(500))
            .is_err(),
        "nothing printed twice"
    );
    let err = tail.stderr();
    assert!(!err.contains("some were missed"), "{err}");
    assert!(err.contains("nothing missed"), "it resumed: {err}");
    assert!(tail.interrupt().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_sessions_since_and_tail_find_everything() {
    let data = scratch_dir("durable-restart");
    let port = free_port();
    let mut server = start(port, &data, &[]);
    let token = Server::token("roamer");
    let mut c = TestClient::connect(&server.url, Some(&token))
        .await
        .unwrap();
    let ack = c
        .subscribe(json!({ "deviceIds": ["d"], "resume": true }))
        .await;
    let session = ack["session"].as_str().unwrap().to_owned();
    server.ingest(numbered("d", 0, 10)).await;
    let got = c.logs(10, T).await;
    let offset = c.offset_of(got.last().unwrap()).unwrap();
    c.disconnect().await;
    // Accepted right before the crash: answered 202, so on disk.
    server.ingest(numbered("d", 10, 5)).await;
    server.kill();

    let server = start(port, &data, &[]);
    server.ingest(numbered("d", 15, 5)).await;
    // The session is back, with what was missed.
    let auth = json!({ "token": token, "session": session, "offset": offset });
    let mut resumed = TestClient::connect_auth(&server.url, Some(auth))
        .await
        .unwrap();
    let event = resumed.next("log:subscribed").await;
    assert_eq!(event["recovered"], true, "{event}");
    assert_eq!(event["replayed"], 10, "{event}");
    assert_eq!(
        messages(&resumed.logs(10, T).await),
        (10..20).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    // `tail` backfills across the restart.
    let mut fresh = TestClient::connect(&server.url, Some(&Server::token("x")))
        .await
        .unwrap();
    let ack = fresh
        .subscribe(json!({ "deviceIds": ["d"], "tail": 12 }))
        .await;
    assert_eq!(ack["replayed"], 12, "{ack}");
    assert_eq!(
        messages(&fresh.logs(12, T).await),
        (8..20).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    let (_, health) = server.get("/api/ws/health", &[]).await;
    assert_eq!(health["data"]["bus"]["history"], "disk", "{health}");
    assert_eq!(health["data"]["bus"]["state"], "ok", "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_and_a_damaged_older_segment_is_never_replayed_wrong() {
    let data = scratch_dir("durable-torn");
    let port = free_port();
    // Ten logs per segment (an eighth of history_max_logs).
    let sets = [("history_max_logs", "80")];
    let mut server = start(port, &data, &sets);
    for i in 0..5 {
        server.ingest(numbered("d", i * 5, 5)).await;
    }
    server.ingest(numbered("d", 25, 2)).await;
    server.terminate(T).unwrap();
    let segs = segments(&data);
    assert_eq!(segs.len(), 3, "{segs:?}");

    // A crash in the middle of the newest segment's last write.
    let newest = segs.last().unwrap();
    let len = std::fs::metadata(newest).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(newest)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    let server = start(port, &data, &sets);
    let warned = server.stderr().join("\n");
    assert!(
        warned.contains("torn") && warned.contains(&newest.display().to_string()),
        "{warned}"
    );
    // The cut write was the last (two logs): 25 remain, and new logs follow.
    server.ingest(numbered("d", 100, 2)).await;
    let mut want: Vec<String> = (0..25).map(|i| format!("m{i}")).collect();
    want.extend(["m100".to_owned(), "m101".to_owned()]);
    assert_eq!(everything(&server, &data, "d", 27).await, want);
    let mut server = server;
    server.terminate(T).unwrap();

    // Flipped bytes in the oldest segment's second frame.
    let oldest = &segments(&data)[0];
    let mut bytes = std::fs::read(oldest).unwrap();
    let at = bytes.len() * 3 / 4;
    bytes[at] ^= 0x5a;
    std::fs::write(oldest, &bytes).unwrap();
    let server = start(port, &data, &sets);
    let warned = server.stderr().join("\n");
    assert!(warned.contains("damaged segment"), "{warned}");
    let epoch = std::fs::read_to_string(history_dir(&data).join("EPOCH")).unwrap();
    let mut c = TestClient::connect(&server.url, Some(&Server::token("r")))
        .await
        .unwrap();
    // From the start: the damaged part cannot be replayed, and that is said.
    let ack = c
        .subscribe(json!({ "deviceIds": ["d"], "since": format!("{}:0-0", epoch.trim()) }))
        .await;
    assert_eq!(ack["recovered"], false, "{ack}");
    // From after the damaged segment: exact.
    let ack = c
        .subscribe(json!({ "deviceIds": ["d"], "since": format!("{}:10-0", epoch.trim()) }))
        .await;
    assert_eq!(ack["recovered"], true, "{ack}");
    let got = messages(&c.logs(17, T).await);
    assert_eq!(got[0], "m10");
    assert_eq!(got.last().unwrap(), "m101");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_and_nothing_answered_202_is_lost() {
    // A 2 MiB filesystem of the server's own (a tmpfs in a mount namespace of an unprivileged
    // user namespace), half of it taken by a file the test removes later.
    let data = scratch_dir("durable-full");
    let script = scratch_dir("durable-full-script").join("in-small-fs.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nset -e\nmount -t tmpfs -o size=2m none \"$DATA\"\nhead -c 1048576 /dev/zero > \"$DATA/filler\"\nexec \"$@\"\n",
    )
    .unwrap();
    let port = free_port();
    let bin = env!("CARGO_BIN_EXE_logstream");
    let server = Server::builder()
        .program("unshare")
        .args(&["-r", "-m", "sh", &script.display().to_string(), bin])
        .args_more(&["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
        .env("DATA", data.display())
        .env("LOGSTREAM_DATA_DIR", data.display())
        .capture_stderr()
        .start();
    let big = "x".repeat(20_000);
    let mut answered = Vec::new();
    let mut refused = None;
    for i in 0..200 {
        let body = json!([{ "deviceId": "d", "message": format!("{i} {big}") }]).to_string();
        let (status, answer) = server
            .post("/api/logs", &[("x-api-key", API_KEY)], &body)
            .await;
        match status {
            202 => answered.push(i),
            503 => {
                refused = Some(answer);
                break;
            }
            other => panic!("{other}: {answer}"),
        }
    }
    let refused = refused.expect("the disk filled within 4 MB of logs");
    assert_eq!(refused["error"]["code"], "history_unavailable", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("No space left"),
        "{refused}"
    );
    let (_, health) = server.get("/api/ws/health", &[]).await;
    assert_eq!(health["data"]["bus"]["state"], "failing", "{health}");
    assert_eq!(health["data"]["healthy"], false, "{health}");
    assert!(!answered.is_empty());

    // Space comes back (the filler goes, through the server's view of its filesystem).
    std::fs::remove_file(format!(
        "/proc/{}/root{}/filler",
        server.pid(),
        data.display()
    ))
    .unwrap();
    let body = json!([{ "deviceId": "d", "message": "after" }]).to_string();
    let (status, answer) = server
        .post("/api/logs", &[("x-api-key", API_KEY)], &body)
        .await;
    assert_eq!(status, 202, "{answer}");
    let (_, health) = server.get("/api/ws/health", &[]).await;
    assert_eq!(health["data"]["bus"]["state"], "ok", "{health}");

    // Everything answered 202 is there, once, and nothing refused.
    let epoch = std::fs::read_to_string(format!(
        "/proc/{}/root{}/history/EPOCH",
        server.pid(),
        data.display()
    ))
    .unwrap();
    let mut c = TestClient::connect(&server.url, Some(&Server::token("r")))
        .await
        .unwrap();
    let ack = c
        .subscribe(
            json!({ "deviceIds": ["d"], "since": format!("{}:0-0", epoch.trim()), "batch": true }),
        )
        .await;
    assert_eq!(ack["recovered"], true, "{ack}");
    let got: Vec<String> = messages(&c.logs(answered.len() + 1, T).await)
        .into_iter()
        .map(|m| m.split(' ').next().unwrap().to_owned())
        .collect();
    let mut want: Vec<String> = answered.iter().map(|i| i.to_string()).collect();
    want.push("after".into());
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_segments_go_whole_and_memory_stays_flat_while_the_history_fills() {
    let data = scratch_dir("durable-bounds");
    let port = free_port();
    let max = 24 << 20;
    let server = start(port, &data, &[("history_max_bytes", &max.to_string())]);
    let line = "y".repeat(900);
    let ingest = |from: usize, n: usize| {
        let url = server.url.clone();
        let line = line.clone();
        async move {
            let http = reqwest::Client::new();
            for chunk in (from..from + n).step_by(100) {
                let logs: Vec<Value> = (chunk..chunk + 100)
                    .map(|i| log("b", "INFO", &format!("{i} {line}")))
                    .collect();
                common::post_accepted(&http, &url, &logs).await;
            }
        }
    };
    // A third of the bound, then the bound twice over.
    ingest(0, 8_000).await;
    let (rss_third, _) = server.memory();
    ingest(8_000, 40_000).await;
    let (rss_full, _) = server.memory();
    let on_disk: u64 = segments(&data)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        on_disk <= max as u64 + (4 << 20),
        "{on_disk} bytes on disk, bound {max}"
    );
    assert!(on_disk >= max as u64 / 2, "{on_disk}");
    assert!(
        segments(&data)[0].file_name().unwrap().to_str().unwrap() > "00000000000000000001.seg",
        "the oldest went"
    );
    // The cache in front of the disk is bounded (16 MiB of logs); the disk holds the rest.
    assert!(
        rss_full < rss_third + (20 << 20),
        "RSS {rss_third} → {rss_full} while the history grew by {} MB on disk",
        on_disk >> 20
    );
}
