//! End-to-end fan-out benchmark: N WebSocket clients (each subscribed to one of D devices,
//! `batch: true`), logs POSTed to `/api/logs` in 20 ms ticks. Reports deliveries per second,
//! server CPU per delivered log (from /proc), p50/p99 latency from the POST to the client
//! reading the frame, and resident memory per connection.
//!
//! `cargo bench --bench fanout -- [--target logstream,logstream-no-stats,logstream-before,logstream-redis,logstream-redis-sharded,logstream-redis-pubsub,node,floor-socketioxide,floor-tungstenite | both | floors]
//!   [--mode batch|new] [--clients 1000] [--devices 100] [--rate 5000] [--seconds 10]
//!   [--replay N] [--set key=value ...] [--headroom] [--repeat N]`
//! `cargo bench --bench fanout -- --history-memory 100000`
//!
//! `--headroom`: instead of one rate, climb through rates (2 500 … 120 000 logs/s) and report
//! each target's highest rate held: ≥ 97% of the offered rate accepted, p99 ≤ 100 ms, and
//! every accepted log delivered to every client of its device, none reported dropped.
//!
//! `--repeat N`: measure the targets N times in alternation and end with each target's
//! medians (ratios taken against the floor of the same round): one run moves by up to 20%
//! on a shared machine.
//!
//! `--replay N`: before the window, N logs of a device nobody watches are ingested; in the
//! middle of the window one more client subscribes with `since` an offset just before them,
//! and the time until its N-th log arrives is reported beside the others' latency.
//! `--history-memory N`: RSS growth of a server holding N logs in history, per log.
//! `logstream-redis-pubsub` runs the binary named by `LOGSTREAM_PUBSUB_BIN` (a build of the
//! previous, pub/sub-only bus) the same way as `logstream-redis`.
//!
//! `floor-socketioxide` and `floor-tungstenite` are the transport floors of
//! `../shared/peers/floor` (built into `target/floors` on first use): the same fan-out and nothing else.
//! `logstream-before` runs `LOGSTREAM_BEFORE_BIN`, another build, for before/after rows.
//! `logstream-no-stats` is logstream with `system:stats` (every 5 s to every client) out of the
//! way: the floors' work and nothing more. "other frames /s" counts what clients received
//! besides logs (pings, `system:stats`, device status).
//! With a floor in the run, each row also shows its CPU per delivery as a ratio to the first
//! floor measured.
//!
//! `node` is the seed's design on Node.js + socket.io (`../shared/peers/node-seed`, copied to
//! a temporary directory and `npm ci`-ed), measured in the same run with the same clients.
//! The clients are raw engine.io v4 WebSocket clients (tokio-tungstenite) so the load
//! generator stays light; they speak the same protocol as socket.io-client.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

mod support;
use support::{cpu_seconds, median, now_us, percentile, rss_kb, stat_cpu_seconds};

const SECRET: &str = "bench-secret-0123456789abcdef";
const API_KEY: &str = "bench-api-key";

struct Args {
    target: String,
    /// `batch` (log:batch, as the seed's benchmark) or `new` (one log:new per log).
    mode: String,
    clients: usize,
    devices: usize,
    rate: usize,
    seconds: u64,
    /// `--set key=value` passed to logstream.
    sets: Vec<String>,
    /// Logs replayed to one extra client in the middle of the window (0 = none).
    replay: usize,
    /// Measure the memory of a history of this many logs instead (0 = no).
    history_memory: usize,
    /// Find each target's highest sustained ingest rate instead (see [`headroom`]).
    headroom: bool,
    /// Measure every target this many times, in alternation, and end with the medians.
    repeat: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        target: "both".into(),
        mode: "batch".into(),
        clients: 1000,
        devices: 100,
        rate: 5000,
        seconds: 10,
        sets: Vec::new(),
        replay: 0,
        history_memory: 0,
        headroom: false,
        repeat: 1,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--target" => a.target = v,
            "--mode" => a.mode = v,
            "--clients" => a.clients = v.parse().expect("--clients N"),
            "--devices" => a.devices = v.parse().expect("--devices N"),
            "--rate" => a.rate = v.parse().expect("--rate N"),
            "--seconds" => a.seconds = v.parse().expect("--seconds N"),
            "--set" => a.sets.push(v),
            "--replay" => a.replay = v.parse().expect("--replay N"),
            "--history-memory" => a.history_memory = v.parse().expect("--history-memory N"),
            "--repeat" => a.repeat = v.parse::<usize>().expect("--repeat N").max(1),
            "--headroom" => {
                a.headroom = true;
                i += 1;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

fn token(sub: &str) -> String {
    support::token(SECRET, sub)
}

/// utime + stime of the thread of `pid` named `name` (0 if none).
fn thread_cpu_seconds(pid: u32, name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    for task in tasks.filter_map(Result::ok) {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            return stat_cpu_seconds(&task.path().join("stat").display().to_string());
        }
    }
    0.0
}

struct Target {
    name: &'static str,
    /// Instances to spread clients and ingest over.
    urls: Vec<String>,
    /// Every process whose CPU and memory count (servers, and Redis when used).
    children: Vec<Child>,
}

impl Target {
    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_logstream(sets: &[String]) -> Target {
    let (child, url) = spawn_logstream(sets, &[]);
    Target {
        name: "logstream",
        urls: vec![url],
        children: vec![child],
    }
}

/// logstream with `system:stats` out of the way (once an hour instead of every 5 s to every
/// client): the same work as the floors, which send nothing but the logs. At 10 000 clients
/// the stats are 2 000 frames a second, a fifth of the frames of the 1000 logs/s load.
fn start_logstream_no_stats(sets: &[String]) -> Target {
    let mut sets = sets.to_vec();
    sets.push("stats_interval_ms=3600000".into());
    let (child, url) = spawn_logstream(&sets, &[]);
    Target {
        name: "logstream, no system:stats",
        urls: vec![url],
        children: vec![child],
    }
}

/// Another build of logstream (`LOGSTREAM_BEFORE_BIN`), for before/after rows in one run.
fn start_logstream_before(sets: &[String]) -> Target {
    let bin = std::env::var("LOGSTREAM_BEFORE_BIN")
        .expect("LOGSTREAM_BEFORE_BIN: a logstream binary of the version to compare with");
    let bin: &'static str = Box::leak(bin.into_boxed_str());
    let (child, url) = spawn_bin(bin, sets, &[]);
    Target {
        name: "logstream (before)",
        urls: vec![url],
        children: vec![child],
    }
}

/// A transport floor of `../shared/peers/floor` (built with `cargo build --release` into
/// `target/floors` on first use): the same fan-out and nothing else.
fn start_floor(name: &'static str) -> Target {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers/floor");
    // Built into this project's target directory: the peers' directory may be read-only.
    let target_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/floors");
    let bin = target_dir.join("release").join(name);
    if !bin.exists() {
        let ok = Command::new("cargo")
            .args(["build", "--release", "--locked", "--target-dir"])
            .arg(&target_dir)
            .current_dir(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "building the floors in {}", dir.display());
    }
    let port = free_port();
    let child = Command::new(&bin)
        .args(["--port", &port.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let url = format!("http://127.0.0.1:{port}");
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "{name} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Target {
        name,
        urls: vec![url],
        children: vec![child],
    }
}

/// Two logstream instances sharing one redis-server; clients and ingest alternate between
/// them. CPU and memory include Redis.
fn start_logstream_redis(sets: &[String]) -> Target {
    start_redis_pair(
        sets,
        env!("CARGO_BIN_EXE_logstream"),
        "logstream ×2 + redis (stream)",
    )
}

/// The same with the logs spread over 8 shards (`redis_stream_shards`): each instance reads
/// the shards of its clients' devices and merges them in order.
fn start_logstream_redis_sharded(sets: &[String]) -> Target {
    let mut sets = sets.to_vec();
    sets.push("redis_stream_shards=8".to_owned());
    start_redis_pair(
        &sets,
        env!("CARGO_BIN_EXE_logstream"),
        "logstream ×2 + redis (8 shards)",
    )
}

/// The same with another build (the pub/sub bus of before the Redis Stream).
fn start_logstream_redis_pubsub(sets: &[String]) -> Target {
    let bin = std::env::var("LOGSTREAM_PUBSUB_BIN")
        .expect("LOGSTREAM_PUBSUB_BIN: a logstream binary built from the pub/sub version");
    let bin: &'static str = Box::leak(bin.into_boxed_str());
    start_redis_pair(sets, bin, "logstream ×2 + redis (pub/sub, before)")
}

fn start_redis_pair(sets: &[String], bin: &str, name: &'static str) -> Target {
    let port = free_port();
    let redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("redis://127.0.0.1:{port}");
    let (a, url_a) = spawn_bin(bin, sets, &[("LOGSTREAM_REDIS_URL", &url)]);
    let (b, url_b) = spawn_bin(bin, sets, &[("LOGSTREAM_REDIS_URL", &url)]);
    std::thread::sleep(Duration::from_millis(500));
    Target {
        name,
        urls: vec![url_a, url_b],
        children: vec![a, b, redis],
    }
}

fn spawn_logstream(sets: &[String], env: &[(&str, &str)]) -> (Child, String) {
    spawn_bin(env!("CARGO_BIN_EXE_logstream"), sets, env)
}

fn spawn_bin(bin: &str, sets: &[String], env: &[(&str, &str)]) -> (Child, String) {
    use std::io::{BufRead, BufReader};
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--host", "127.0.0.1", "--port", "0"]);
    for kv in sets {
        cmd.arg("--set").arg(kv);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .env("LOGSTREAM_JWT_SECRET", SECRET)
        .env("LOGSTREAM_API_KEY", API_KEY)
        .env("LOGSTREAM_MAX_CONNECTIONS_PER_USER", "100000")
        // The load generator is one address opening thousands of connections at once.
        // (Builds that do not know a key warn about it and go on.)
        .env("LOGSTREAM_MAX_UNAUTHENTICATED_PER_IP", "100000")
        .env("LOGSTREAM_UNAUTHENTICATED_SESSIONS_PER_SECOND", "1000000")
        .env("LOGSTREAM_MAX_UNAUTHENTICATED_SESSIONS", "100000")
        .env("RUST_LOG", "warn")
        .env("LOGSTREAM_DATA_DIR", "")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start logstream");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().expect("logstream exited").unwrap();
        if let Some(u) = line.strip_prefix("logstream listening on ") {
            break u.trim().to_owned();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    (child, url)
}

fn start_node() -> Target {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers/node-seed");
    let dir = std::env::temp_dir().join("logstream-bench-node-seed");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["package.json", "package-lock.json", "server.js"] {
        let to = dir.join(f);
        let _ = std::fs::remove_file(&to);
        std::fs::copy(src.join(f), &to)
            .unwrap_or_else(|e| panic!("copy {f} from {}: {e}", src.display()));
    }
    if !dir.join("node_modules/socket.io").exists() {
        let ok = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "npm ci for the node-seed peer failed");
    }
    let port = free_port();
    let child = Command::new("node")
        .arg("server.js")
        .current_dir(&dir)
        .env("PORT", port.to_string())
        .env("JWT_SECRET", SECRET)
        .env("API_KEY", API_KEY)
        .stdout(Stdio::null())
        .spawn()
        .expect("start node peer");
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Target {
        name: "node-seed (socket.io 4.8.4)",
        urls: vec![url],
        children: vec![child],
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[derive(Default)]
struct Tally {
    /// Handshake progress per client, for diagnosing a client that never gets ready.
    stages: std::sync::Mutex<std::collections::HashMap<String, &'static str>>,
    delivered: AtomicU64,
    /// Logs received over the whole run (not only the window), and what the server said it
    /// dropped (`log:dropped` counts): for "nothing lost" in `--headroom`.
    received_all: AtomicU64,
    dropped: AtomicU64,
    /// Subscribes sent again because the first went unanswered for 5 s.
    resubscribed: AtomicU64,
    /// Frames other than logs received in the window: `system:stats`, pings, device status.
    /// The floors send only pings; this makes what else a server sends visible.
    other_frames: AtomicU64,
    recording: AtomicBool,
    latencies_us: std::sync::Mutex<Vec<u64>>,
}

/// Pull every `"sentAtUs":N` out of a frame without parsing the JSON.
fn sent_stamps(frame: &str) -> impl Iterator<Item = u64> + '_ {
    frame.split("\"sentAtUs\":").skip(1).filter_map(|rest| {
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..end].parse().ok()
    })
}

async fn run_client(
    url: String,
    sub: String,
    device: String,
    batch: bool,
    tally: Arc<Tally>,
    ready: tokio::sync::mpsc::Sender<()>,
) {
    let mut ws = support::engine_io_socket(&url).await;
    let mut subscribed = false;
    let mut acked = false;
    let mut subscribe_msg = String::new();
    let stage = |s: &'static str| {
        tally.stages.lock().unwrap().insert(sub.clone(), s);
    };
    stage("websocket open");
    ws.send(Message::Text(
        format!("40{}", json!({ "token": token(&sub) })).into(),
    ))
    .await
    .unwrap();
    loop {
        // A subscribe left unanswered for 5 s is sent again (and counted): socketioxide can
        // refuse an emit made between its CONNECT and marking the socket connected, which
        // loses the answer to a subscribe sent right after CONNECT (logstream waits for the
        // mark; the floor built on socketioxide does not).
        let next = if subscribed && !acked {
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                Ok(next) => next,
                Err(_) => {
                    tally.resubscribed.fetch_add(1, Ordering::Relaxed);
                    let _ = ws.send(Message::Text(subscribe_msg.clone().into())).await;
                    continue;
                }
            }
        } else {
            ws.next().await
        };
        let Some(msg) = next else { break };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                eprintln!("client {sub}: {e}");
                break;
            }
        };
        let Message::Text(text) = msg else { continue };
        let is_log = text.starts_with("42[\"log:batch\"") || text.starts_with("42[\"log:new\"");
        if !is_log && tally.recording.load(Ordering::Relaxed) {
            tally.other_frames.fetch_add(1, Ordering::Relaxed);
        }
        if text == "2" {
            let _ = ws.send(Message::Text("3".into())).await;
        } else if text.starts_with("40") && !subscribed {
            subscribed = true;
            stage("namespace connected");
            let sub = json!(["log:subscribe", { "deviceIds": [device], "batch": batch }]);
            subscribe_msg = format!("42{sub}");
            ws.send(Message::Text(subscribe_msg.clone().into()))
                .await
                .unwrap();
        } else if text.starts_with("42[\"log:subscribed\"") && !acked {
            acked = true;
            stage("subscribed");
            let _ = ready.send(()).await;
        } else if is_log {
            let now = now_us();
            tally
                .received_all
                .fetch_add(sent_stamps(&text).count() as u64, Ordering::Relaxed);
            if tally.recording.load(Ordering::Relaxed) {
                let mut lat = tally.latencies_us.lock().unwrap();
                let before = lat.len();
                lat.extend(sent_stamps(&text).map(|sent| now.saturating_sub(sent)));
                tally
                    .delivered
                    .fetch_add((lat.len() - before) as u64, Ordering::Relaxed);
            }
        } else if let Some(rest) = text.strip_prefix("42[\"log:dropped\",") {
            let count = serde_json::from_str::<Value>(rest.trim_end_matches(']'))
                .ok()
                .and_then(|d| d["count"].as_u64())
                .unwrap_or(1);
            tally.dropped.fetch_add(count, Ordering::Relaxed);
        } else if text.starts_with("42[\"error\"") {
            eprintln!("client {sub}: {text}");
        } else if text.starts_with("44") {
            panic!("connect refused: {text}");
        }
    }
}

/// A raw client: subscribe with `sub`, then hand every `log:new` frame (as JSON: event, entry,
/// offset) to `on_log` until it returns false.
async fn raw_subscribe(url: &str, user: &str, sub: Value, mut on_log: impl FnMut(Value) -> bool) {
    support::raw_subscription(url, &token(user), sub, |text| {
        if text.starts_with("42[\"log:new\"") {
            let v: Value = serde_json::from_str(&text[2..]).unwrap_or_default();
            return on_log(v);
        }
        true
    })
    .await;
}

async fn post_all(url: &str, logs: Vec<Value>) {
    let http = reqwest::Client::new();
    for chunk in logs.chunks(1000) {
        let r = http
            .post(format!("{url}/api/logs"))
            .header("x-api-key", API_KEY)
            .json(&chunk)
            .send()
            .await
            .expect("post");
        assert!(r.status().is_success(), "ingest refused: {}", r.status());
    }
}

/// Ingest `n` logs of device `replay` after a marker; returns the marker's offset.
async fn prepare_replay(url: &str, n: usize) -> String {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    let watcher = tokio::spawn({
        let url = url.to_owned();
        async move {
            raw_subscribe(
                &url,
                "replay-prep",
                json!({"deviceIds": ["replay"], "resume": true}),
                |v| {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(v[2].as_str().unwrap_or_default().to_owned());
                    }
                    false
                },
            )
            .await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    post_all(
        url,
        vec![json!({"deviceId": "replay", "message": "marker"})],
    )
    .await;
    let offset = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("marker")
        .unwrap();
    let _ = watcher.await;
    let logs = (0..n)
        .map(|i| json!({"deviceId": "replay", "message": format!("replayed {i}")}))
        .collect();
    post_all(url, logs).await;
    offset
}

/// Subscribe with `since` and time until the `n`-th log.
async fn time_replay(url: &str, since: &str, n: usize) -> Duration {
    let t0 = Instant::now();
    let mut got = 0;
    raw_subscribe(
        url,
        "replayer",
        json!({"deviceIds": ["replay"], "since": since}),
        |_| {
            got += 1;
            got < n
        },
    )
    .await;
    t0.elapsed()
}

/// RSS growth per log of a history holding `n` logs (typical 150-byte messages).
fn history_memory(n: usize, sets: &[String]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut sets = sets.to_vec();
    sets.push(format!("history_max_logs={n}"));
    let target = start_logstream(&sets);
    let pid = target.pids()[0];
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kb(pid);
    rt.block_on(async {
        let logs = (0..n)
            .map(|i| json!({"deviceId": format!("dev-{}", i % 100), "level": "INFO",
                "message": format!("GET /api/v1/items/{i} 200 in 12 ms from 10.0.0.{} user agent curl/8.5", i % 250),
                "tags": ["http", "api"]}))
            .collect();
        post_all(&target.urls[0], logs).await;
    });
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_kb(pid);
    println!(
        "history of {n} logs: RSS {} MB → {} MB, {:.0} bytes per log",
        before / 1024,
        after / 1024,
        (after.saturating_sub(before) as f64 * 1024.0) / n as f64
    );
}

/// One row of the table (without its last column), and the server CPU per delivered log in µs.
/// One target's figures under one load.
struct Measured {
    /// The table row (without the ratio to the floor).
    row: String,
    cpu_us: f64,
    p99_ms: f64,
    /// Logs per second the server accepted over the window.
    accepted_per_s: f64,
    /// Deliveries expected over the whole run (accepted logs × clients per device) that never
    /// arrived, after a 2 s grace at the end.
    missing: u64,
    /// What the server reported dropped (`log:dropped`).
    dropped: u64,
}

async fn measure(target: &Target, a: &Args) -> Result<Measured, String> {
    let pids = target.pids();
    let cpu_all = || pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let rss_all = || pids.iter().map(|p| rss_kb(*p)).sum::<u64>();
    let router_all = || {
        pids.iter()
            .map(|p| thread_cpu_seconds(*p, "logstream-route"))
            .sum::<f64>()
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_all();
    let tally = Arc::new(Tally::default());
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(a.clients);
    let mut clients = Vec::new();
    for i in 0..a.clients {
        clients.push(tokio::spawn(run_client(
            target.urls[i % target.urls.len()].clone(),
            format!("bench-{i}"),
            format!("dev-{}", i % a.devices),
            a.mode == "batch",
            tally.clone(),
            ready_tx.clone(),
        )));
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for i in 0..a.clients {
        if tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
            .await
            .is_err()
        {
            let stages = tally.stages.lock().unwrap();
            let stuck: Vec<_> = stages.iter().filter(|(_, s)| **s != "subscribed").collect();
            for c in &clients {
                c.abort();
            }
            // One server that cannot take the load does not end the run for the others.
            return Err(format!(
                "only {i} of {} clients subscribed within 60 s; stuck: {stuck:?}",
                a.clients
            ));
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = rss_all();
    let resubscribed = tally.resubscribed.load(Ordering::Relaxed);
    if resubscribed > 0 {
        println!(
            "({}: {resubscribed} subscribe(s) went unanswered for 5 s and were sent again)",
            target.name
        );
    }
    let replay_from = if a.replay > 0 {
        Some(prepare_replay(&target.urls[0], a.replay).await)
    } else {
        None
    };

    let http = reqwest::Client::new();
    let per_tick = (a.rate / 50).max(1);
    let stop = Arc::new(AtomicBool::new(false));
    let offered = Arc::new(AtomicU64::new(0));
    let poster = {
        let (urls, stop, offered, devices) = (
            target.urls.clone(),
            stop.clone(),
            offered.clone(),
            a.devices,
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let sent = now_us();
                let logs: Vec<Value> = (0..per_tick)
                    .map(|_| {
                        k += 1;
                        json!({ "deviceId": format!("dev-{}", k % devices as u64), "level": "INFO",
                                "message": format!("bench log {k}"), "sentAtUs": sent })
                    })
                    .collect();
                let url = &urls[(k / per_tick as u64) as usize % urls.len()];
                let r = http
                    .post(format!("{url}/api/logs"))
                    .header("x-api-key", API_KEY)
                    .json(&logs)
                    .send()
                    .await;
                if matches!(&r, Ok(resp) if resp.status().is_success()) {
                    offered.fetch_add(per_tick as u64, Ordering::Relaxed);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await; // warm-up
    let cpu0 = cpu_all();
    let router0 = router_all();
    let offered0 = offered.load(Ordering::Relaxed);
    tally.recording.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    let replay = replay_from.map(|since| {
        let (url, n, half) = (target.urls[0].clone(), a.replay, a.seconds / 2);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(half)).await;
            time_replay(&url, &since, n).await
        })
    });
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    tally.recording.store(false, Ordering::Relaxed);
    if let Some(replay) = replay {
        let took = replay.await.unwrap();
        println!(
            "replay of {} logs to one client: {:.0} ms to the last log",
            a.replay,
            took.as_secs_f64() * 1e3
        );
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_all() - cpu0;
    let router_cpu = router_all() - router0;
    let offered_n = offered.load(Ordering::Relaxed) - offered0;
    let rss_end = rss_all();
    stop.store(true, Ordering::Relaxed);
    let _ = poster.await;
    // Let what is in flight arrive before counting what never did.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let expected = offered.load(Ordering::Relaxed) * (a.clients / a.devices.max(1)) as u64;
    let missing = expected.saturating_sub(tally.received_all.load(Ordering::Relaxed));
    let dropped = tally.dropped.load(Ordering::Relaxed);
    let delivered = tally.delivered.load(Ordering::Relaxed);
    for c in &clients {
        c.abort();
    }
    let mut lat = std::mem::take(&mut *tally.latencies_us.lock().unwrap());
    lat.sort_unstable();
    let per_client_kb = rss_connected.saturating_sub(rss_before) as f64 / a.clients as f64;
    let router_part = if target.name.starts_with("logstream") {
        format!("{:.2} µs", router_cpu / delivered.max(1) as f64 * 1e6)
    } else {
        "n/a".into()
    };
    let cpu_us = cpu / delivered.max(1) as f64 * 1e6;
    let other = tally.other_frames.load(Ordering::Relaxed);
    let row = format!(
        "| {} | {:.0} | {:.0} | {:.0} | {:.2} µs | {router_part} | {:.1} / {:.1} ms | {:.1} KB | {:.0} MB / {:.0} MB |",
        target.name,
        offered_n as f64 / elapsed,
        delivered as f64 / elapsed,
        other as f64 / elapsed,
        cpu_us,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        per_client_kb,
        rss_connected as f64 / 1024.0,
        rss_end as f64 / 1024.0,
    );
    Ok(Measured {
        row,
        cpu_us,
        p99_ms: percentile(&lat, 0.99),
        accepted_per_s: offered_n as f64 / elapsed,
        missing,
        dropped,
    })
}

fn targets(a: &Args) -> Vec<&str> {
    match a.target.as_str() {
        "both" => vec!["logstream", "node"],
        "floors" => vec!["floor-tungstenite", "floor-socketioxide", "logstream"],
        t => t.split(',').collect(),
    }
}

fn start_target(name: &str, a: &Args) -> Target {
    match name {
        "node" => start_node(),
        "floor-socketioxide" => start_floor("floor-socketioxide"),
        "floor-tungstenite" => start_floor("floor-tungstenite"),
        "logstream-before" => start_logstream_before(&a.sets),
        "logstream-no-stats" => start_logstream_no_stats(&a.sets),
        "logstream-redis" => start_logstream_redis(&a.sets),
        "logstream-redis-sharded" => start_logstream_redis_sharded(&a.sets),
        "logstream-redis-pubsub" => start_logstream_redis_pubsub(&a.sets),
        _ => start_logstream(&a.sets),
    }
}

/// Rates tried by `--headroom`, in logs per second.
const HEADROOM_RATES: [usize; 10] = [
    2_500, 5_000, 10_000, 15_000, 20_000, 30_000, 40_000, 60_000, 80_000, 120_000,
];

/// `--headroom`: for each target, the highest of [`HEADROOM_RATES`] it holds for the window
/// (each rate on a freshly started server with freshly connected clients): the server
/// accepts at least 97% of the offered rate, p99 stays ≤ 100 ms, and every accepted log
/// reaches every client subscribed to its device (nothing missing, nothing reported
/// dropped). The first rate that fails ends the target's climb.
fn headroom(rt: &tokio::runtime::Runtime, a: &Args) {
    println!(
        "headroom: clients {}, devices {}, mode {}, {} s per rate",
        a.clients, a.devices, a.mode, a.seconds
    );
    println!(
        "| server | highest rate held (logs/s) | there: deliveries/s, CPU per delivery, p99 | next rate: why it failed |"
    );
    println!("| --- | ---: | --- | --- |");
    for t in targets(a) {
        let mut held: Option<(usize, String)> = None;
        let mut failed = "none of the rates tried failed".to_owned();
        for rate in HEADROOM_RATES {
            let step = Args {
                target: t.to_owned(),
                mode: a.mode.clone(),
                sets: a.sets.clone(),
                rate,
                ..*a
            };
            let target = start_target(t, &step);
            let outcome = rt.block_on(measure(&target, &step));
            drop(target);
            std::thread::sleep(Duration::from_secs(1));
            let m = match outcome {
                Ok(m) => m,
                Err(why) => {
                    failed = format!("{rate}: {why}");
                    break;
                }
            };
            eprintln!("{t} at {rate} logs/s: {}", m.row);
            let mut why = Vec::new();
            if m.accepted_per_s < rate as f64 * 0.97 {
                why.push(format!("accepted {:.0} logs/s", m.accepted_per_s));
            }
            if m.p99_ms > 100.0 {
                why.push(format!("p99 {:.1} ms", m.p99_ms));
            }
            if m.missing > 0 || m.dropped > 0 {
                why.push(format!(
                    "{} deliveries missing, {} reported dropped",
                    m.missing, m.dropped
                ));
            }
            if !why.is_empty() {
                failed = format!("{rate}: {}", why.join(", "));
                break;
            }
            let deliveries = m.row.split('|').nth(3).unwrap_or("").trim().to_owned();
            held = Some((
                rate,
                format!("{deliveries}, {:.2} µs, {:.1} ms", m.cpu_us, m.p99_ms),
            ));
        }
        let (rate, there) = held.map_or(("below 2500".to_owned(), String::new()), |(r, d)| {
            (r.to_string(), d)
        });
        println!("| {t} | {rate} | {there} | {failed} |");
    }
}

fn main() {
    let a = parse_args();
    if a.history_memory > 0 {
        history_memory(a.history_memory, &a.sets);
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    if a.headroom {
        headroom(&rt, &a);
        return;
    }
    println!(
        "clients {}, devices {}, offered {} logs/s, window {} s, mode {}",
        a.clients, a.devices, a.rate, a.seconds, a.mode
    );
    println!(
        "| server | logs in /s | deliveries /s | other frames /s | server CPU per delivered log | of which router thread | p50 / p99 latency | RSS per connection | RSS connected / at end | CPU vs floor |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    // Per target: (CPU per delivery, ratio to the run's floor, p99) of each round.
    let mut rounds: Vec<(String, Vec<Round>)> = Vec::new();
    for _ in 0..a.repeat {
        let mut floor: Option<f64> = None;
        for (i, t) in targets(&a).into_iter().enumerate() {
            let target = start_target(t, &a);
            if rounds.len() <= i {
                rounds.push((target.name.to_owned(), Vec::new()));
            }
            let Measured {
                row,
                cpu_us,
                p99_ms,
                ..
            } = match rt.block_on(measure(&target, &a)) {
                Ok(measured) => measured,
                Err(why) => {
                    println!("| {} | did not complete: {why} |", target.name);
                    drop(target);
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            if floor.is_none() && t.starts_with("floor") {
                floor = Some(cpu_us);
            }
            let ratio = floor.map(|f| cpu_us / f);
            println!(
                "{row} {} |",
                ratio.map_or("n/a".to_owned(), |r| format!("{r:.2}×"))
            );
            rounds[i].1.push((cpu_us, ratio, p99_ms));
            drop(target);
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    if a.repeat > 1 {
        print_medians(&rounds);
    }
}

/// One round's figures of one target: CPU per delivery (µs), its ratio to the round's floor,
/// p99 (ms).
type Round = (f64, Option<f64>, f64);

/// `--repeat`: the median of each figure over the rounds. On a shared 2-core machine one
/// run's CPU per delivery moves by up to 20%; each ratio is taken against the floor of the
/// same round before the median, so a slow round moves both sides.
fn print_medians(rounds: &[(String, Vec<Round>)]) {
    fn spread(v: &[f64]) -> String {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{lo:.2}–{hi:.2}")
    }
    println!();
    println!("medians over the rounds (range in brackets):");
    println!("| server | rounds | CPU per delivered log | CPU vs floor | p99 latency |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, runs) in rounds {
        let cpu: Vec<f64> = runs.iter().map(|r| r.0).collect();
        let ratios: Vec<f64> = runs.iter().filter_map(|r| r.1).collect();
        let p99: Vec<f64> = runs.iter().map(|r| r.2).collect();
        let ratio = match median(ratios.clone()) {
            Some(m) => format!("{m:.2}× ({}×)", spread(&ratios)),
            None => "n/a".into(),
        };
        println!(
            "| {name} | {} | {:.2} µs ({} µs) | {ratio} | {:.1} ms ({} ms) |",
            runs.len(),
            median(cpu.clone()).unwrap_or(f64::NAN),
            spread(&cpu),
            median(p99.clone()).unwrap_or(f64::NAN),
            spread(&p99),
        );
    }
}
