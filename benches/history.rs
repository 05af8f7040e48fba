//! The history on disk (issue 23): what each `history_fsync` costs ingest, and what a full
//! history costs a restart, memory and a replay.
//!
//! `cargo bench --bench history -- [--part ingest|restart|all] [--clients 1000]
//!   [--seconds 10] [--posters 4] [--rate 2000] [--repeat 1]`
//!
//! `ingest`: for each of memory (`history_dir = ""`), `never`, `interval` and `always`, a
//! fresh release server. First `--posters` loops POST batches of 50 logs back to back for
//! `--seconds`, no client connected: the logs/s accepted and the server's CPU per log. Then
//! N raw WebSocket clients connect (`batch: true`, each watching one of 10 groups of 10
//! devices) and one poster sends a batch of 50 every 50 × 1000 / `--rate` ms: p50 / p99 from
//! the POST to a client reading the log (stamps in the logs), every expected delivery
//! counted.
//!
//! `restart`: a history of 100 000 logs of ~300 bytes (the default `history_max_logs`), then
//! 300 000 (bounds raised), on disk with `always` and in memory: the server's RSS at each
//! (what a kept log costs in memory past the cache), a replay of 10 000 logs older than the
//! cache (read from the files), and the time from a SIGKILL'd server's restart to
//! "listening".

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

mod support;
use support::{Server, cpu_seconds, median, now_us, percentile, rss_kb};

const KEYS: support::Keys = support::Keys {
    secret: "history-secret-0123456789abcdef",
    api_key: "history-api-key",
    admin_key: "history-admin-key",
};

struct Args {
    part: String,
    clients: usize,
    seconds: u64,
    posters: usize,
    rate: usize,
    repeat: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        part: "all".into(),
        clients: 1000,
        seconds: 10,
        posters: 4,
        rate: 2000,
        repeat: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--bench" {
            continue;
        }
        let v = args
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        let n = || v.parse::<usize>().expect("a number");
        match flag.as_str() {
            "--part" => a.part = v,
            "--clients" => a.clients = n(),
            "--seconds" => a.seconds = n() as u64,
            "--posters" => a.posters = n().max(1),
            "--rate" => a.rate = n().max(50),
            "--repeat" => a.repeat = n().max(1),
            _ => panic!("unknown flag {flag}"),
        }
    }
    a
}

/// Where the history is kept.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Memory,
    Never,
    Interval,
    Always,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::Memory, Mode::Never, Mode::Interval, Mode::Always];

    fn name(self) -> &'static str {
        match self {
            Mode::Memory => "memory",
            Mode::Never => "disk, never",
            Mode::Interval => "disk, interval (100 ms)",
            Mode::Always => "disk, always",
        }
    }
}

fn start(mode: Mode, data: &Path, extra: &[String]) -> (Server, Duration) {
    let env = vec![
        ("LOGSTREAM_DATA_DIR".to_owned(), data.display().to_string()),
        (
            "LOGSTREAM_MAX_CONNECTIONS_PER_USER".to_owned(),
            "100000".to_owned(),
        ),
        (
            "LOGSTREAM_MAX_UNAUTHENTICATED_PER_IP".to_owned(),
            "100000".to_owned(),
        ),
        (
            "LOGSTREAM_UNAUTHENTICATED_SESSIONS_PER_SECOND".to_owned(),
            "1000000".to_owned(),
        ),
        (
            "LOGSTREAM_MAX_UNAUTHENTICATED_SESSIONS".to_owned(),
            "100000".to_owned(),
        ),
    ];
    let mut sets = vec![
        "stats_interval_ms=3600000".to_owned(),
        "rate_limit=1000000".to_owned(),
        "replay_max_logs=1000000".to_owned(),
    ];
    sets.push(match mode {
        Mode::Memory => "history_dir=".to_owned(),
        Mode::Never => "history_fsync=never".to_owned(),
        Mode::Interval => "history_fsync=interval".to_owned(),
        Mode::Always => "history_fsync=always".to_owned(),
    });
    sets.extend(extra.iter().cloned());
    let started = Instant::now();
    let server = Server::start(env!("CARGO_BIN_EXE_logstream"), &KEYS, &env, &sets);
    (server, started.elapsed())
}

// ---------------------------------------------------------------------------------------
// Clients

#[derive(Default)]
struct Tally {
    delivered: AtomicU64,
    recording: AtomicBool,
    latencies_us: std::sync::Mutex<Vec<u64>>,
}

/// Every `"sentAtUs":N` in a frame.
fn stamps(frame: &str) -> impl Iterator<Item = u64> + '_ {
    frame.split("\"sentAtUs\":").skip(1).filter_map(|rest| {
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..end].parse().ok()
    })
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw client subscribed with `sub`, once `log:subscribed` came (and that frame).
async fn subscribed(url: &str, user: &str, sub: Value) -> (Ws, String) {
    let ws_url = format!(
        "{}/socket.io/?EIO=4&transport=websocket",
        url.replacen("http", "ws", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    let token = support::token(KEYS.secret, user);
    ws.send(Message::Text(
        format!("40{}", json!({ "token": token })).into(),
    ))
    .await
    .unwrap();
    loop {
        let Some(Ok(Message::Text(t))) = ws.next().await else {
            panic!("{user}: closed before subscribing");
        };
        if t == "2" {
            ws.send(Message::Text("3".into())).await.unwrap();
        } else if t.starts_with("40") {
            ws.send(Message::Text(
                format!("42{}", json!(["log:subscribe", sub])).into(),
            ))
            .await
            .unwrap();
        } else if t.starts_with("42[\"log:subscribed\"") {
            return (ws, t.as_str().to_owned());
        } else if t.starts_with("44") || t.starts_with("42[\"error\"") {
            panic!("{user}: {t}");
        }
    }
}

async fn follow(mut ws: Ws, tally: Arc<Tally>) {
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(t) = msg else { continue };
        if t == "2" {
            let _ = ws.send(Message::Text("3".into())).await;
        } else if t.starts_with("42[\"log:") {
            let now = now_us();
            let n = stamps(&t).count() as u64;
            tally.delivered.fetch_add(n, Ordering::Relaxed);
            if tally.recording.load(Ordering::Relaxed) {
                tally
                    .latencies_us
                    .lock()
                    .unwrap()
                    .extend(stamps(&t).map(|s| now.saturating_sub(s)));
            }
        }
    }
}

fn group(g: usize) -> Vec<String> {
    (g * 10..g * 10 + 10)
        .map(|d| format!("dev-{d:03}"))
        .collect()
}

/// A batch of 50 logs over the 100 devices, stamped now.
fn batch(k: &mut u64) -> Vec<Value> {
    let sent = now_us();
    (0..50)
        .map(|_| {
            *k += 1;
            json!({
                "deviceId": format!("dev-{:03}", (*k * 37) % 100),
                "level": "INFO",
                "message": format!("GET /api/v1/items/{k} 200 in {} ms from 10.0.0.{} user agent fleet-agent/2.4.1", *k % 900, *k % 250),
                "sentAtUs": sent,
            })
        })
        .collect()
}

async fn post(http: &reqwest::Client, url: &str, logs: &[Value]) -> bool {
    http.post(format!("{url}/api/logs"))
        .header("x-api-key", KEYS.api_key)
        .json(logs)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

// ---------------------------------------------------------------------------------------
// Ingest

struct IngestFigures {
    logs_per_s: f64,
    cpu_us_per_log: f64,
    p50_ms: f64,
    p99_ms: f64,
    missing: u64,
}

async fn ingest(mode: Mode, a: &Args) -> IngestFigures {
    let data = support::scratch_dir("history-ingest");
    let (server, _) = start(mode, &data, &[]);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    // Flat out.
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_seconds(server.pid());
    let t0 = Instant::now();
    let mut posters = Vec::new();
    for p in 0..a.posters {
        let (stop, accepted, http, url) = (
            stop.clone(),
            accepted.clone(),
            http.clone(),
            server.url.clone(),
        );
        posters.push(tokio::spawn(async move {
            let mut k = (p as u64) << 40;
            while !stop.load(Ordering::Relaxed) {
                let logs = batch(&mut k);
                if post(&http, &url, &logs).await {
                    accepted.fetch_add(50, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for p in posters {
        let _ = p.await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(server.pid()) - cpu0;
    let logs = accepted.load(Ordering::Relaxed);
    // Paced, for latency, with the clients connected (flat out, their fan-out rather than
    // the history would be measured).
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for c in 0..a.clients {
        let (ws, _) = subscribed(
            &server.url,
            &format!("c{c}"),
            json!({ "deviceIds": group(c % 10), "batch": true }),
        )
        .await;
        tasks.push(tokio::spawn(follow(ws, tally.clone())));
    }
    let before = tally.delivered.load(Ordering::Relaxed);
    tally.recording.store(true, Ordering::Relaxed);
    let every = Duration::from_micros(50 * 1_000_000 / a.rate as u64);
    let mut tick = tokio::time::interval(every);
    let mut k = 1u64 << 50;
    let mut sent = 0u64;
    let t1 = Instant::now();
    while t1.elapsed() < Duration::from_secs(a.seconds) {
        tick.tick().await;
        if post(&http, &server.url, &batch(&mut k)).await {
            sent += 50;
        }
    }
    let expected = before + sent * (a.clients as u64 / 10);
    let settle = Instant::now();
    while tally.delivered.load(Ordering::Relaxed) < expected
        && settle.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lat = std::mem::take(&mut *tally.latencies_us.lock().unwrap());
    lat.sort_unstable();
    for t in tasks {
        t.abort();
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
    IngestFigures {
        logs_per_s: logs as f64 / elapsed,
        cpu_us_per_log: cpu * 1e6 / logs.max(1) as f64,
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        missing: expected.saturating_sub(tally.delivered.load(Ordering::Relaxed)),
    }
}

// ---------------------------------------------------------------------------------------
// Restart, memory, replay

/// Add logs `from..from + n` of ~300 bytes over devices `r0`…`r4`, 1000 per request.
async fn fill(url: &str, from: usize, n: usize) {
    let http = reqwest::Client::new();
    let pad = "x".repeat(180);
    for chunk in (from..from + n).step_by(1000) {
        let logs: Vec<Value> = (chunk..(chunk + 1000).min(from + n))
            .map(|i| json!({ "deviceId": format!("r{}", i % 5), "message": format!("{i} {pad}") }))
            .collect();
        assert!(post(&http, url, &logs).await, "fill refused");
    }
}

/// The offset of the log at 1-based sequence number `seq` (the history's numbering).
fn offset(data: &Path, seq: u64) -> String {
    let epoch = std::fs::read_to_string(data.join("history").join("EPOCH")).unwrap();
    format!("{}:{seq}-0", epoch.trim())
}

/// The time for a client to receive the `n` logs of `r0` after `since`.
async fn replay(url: &str, since: &str, n: usize) -> Duration {
    let t0 = Instant::now();
    let (mut ws, ack) = subscribed(
        url,
        "replayer",
        json!({ "deviceIds": ["r0"], "since": since, "batch": true, "resume": true }),
    )
    .await;
    // `log:subscribed` comes after the replayed logs: everything is here by now.
    let took = t0.elapsed();
    assert!(
        ack.contains(&format!("\"replayed\":{n}")) && ack.contains("\"recovered\":true"),
        "{ack}"
    );
    let _ = ws.close(None).await;
    took
}

async fn restart_part() {
    const N: usize = 100_000;
    println!();
    println!(
        "restart, memory and replay: histories of {N} and {} logs of ~300 bytes (bounds raised to hold them)",
        3 * N
    );
    let bounds = [
        "history_max_logs=1000000".to_owned(),
        "history_max_bytes=1073741824".to_owned(),
    ];
    let mut rows = Vec::new();
    for mode in [Mode::Memory, Mode::Always] {
        let data = support::scratch_dir("history-restart");
        let (server, _) = start(mode, &data, &bounds);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let empty_kb = rss_kb(server.pid());
        fill(&server.url, 0, N).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let at_n_kb = rss_kb(server.pid());
        // 10 000 logs of r0 (a fifth of the history after position 50 000): read from the
        // files on disk (the cache holds the newest 10 000 of all devices).
        let replay_took = match mode {
            Mode::Memory => None,
            _ => Some(replay(&server.url, &offset(&data, (N - 50_000) as u64), 10_000).await),
        };
        fill(&server.url, N, 2 * N).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let at_3n_kb = rss_kb(server.pid());
        let marginal = (at_3n_kb.saturating_sub(at_n_kb) * 1024) as f64 / (2 * N) as f64;
        let mut restart = None;
        if mode != Mode::Memory {
            let mut server = server;
            server.kill();
            let (again, took) = start(mode, &data, &bounds);
            restart = Some(took);
            tokio::time::sleep(Duration::from_millis(500)).await;
            println!(
                "  restarted after SIGKILL with {} logs in {:.0} ms; RSS after the restart {} MB (empty start: {} MB)",
                3 * N,
                took.as_secs_f64() * 1000.0,
                rss_kb(again.pid()) / 1024,
                empty_kb / 1024
            );
        }
        rows.push((
            mode,
            empty_kb,
            at_n_kb,
            at_3n_kb,
            marginal,
            replay_took,
            restart,
        ));
        let _ = std::fs::remove_dir_all(&data);
    }
    println!(
        "| history | RSS empty | with 100 000 logs | with 300 000 | RSS per log past 100 000 | replay of 10 000 older than the cache | start with 300 000 logs after SIGKILL |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (mode, empty, at_n, at_3n, marginal, replay_took, restart) in rows {
        let ms = |d: Option<Duration>| {
            d.map_or("–".to_owned(), |d| {
                format!("{:.0} ms", d.as_secs_f64() * 1000.0)
            })
        };
        println!(
            "| {} | {} MB | {} MB | {} MB | {marginal:.0} bytes | {} | {} |",
            mode.name(),
            empty / 1024,
            at_n / 1024,
            at_3n / 1024,
            ms(replay_took),
            ms(restart)
        );
    }
}

fn main() {
    let a = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if a.part == "ingest" || a.part == "all" {
        println!(
            "ingest: {1} posters of batches of 50 for {2} s (no client), then {0} clients (batch: true, 10 groups of 10 devices) and {3} logs/s for {4} s",
            a.clients, a.posters, a.seconds, a.rate, a.seconds
        );
        let mut results: Vec<Vec<IngestFigures>> = Mode::ALL.iter().map(|_| Vec::new()).collect();
        for round in 0..a.repeat {
            for (i, mode) in Mode::ALL.iter().enumerate() {
                let f = rt.block_on(ingest(*mode, &a));
                println!(
                    "round {}: {:<24} {:>8.0} logs/s  {:>6.2} µs CPU/log  p50 {:.1} ms  p99 {:.1} ms  missing {}",
                    round + 1,
                    mode.name(),
                    f.logs_per_s,
                    f.cpu_us_per_log,
                    f.p50_ms,
                    f.p99_ms,
                    f.missing
                );
                results[i].push(f);
            }
        }
        let med = |i: usize, f: fn(&IngestFigures) -> f64| {
            median(results[i].iter().map(f).collect()).unwrap_or(f64::NAN)
        };
        println!();
        println!(
            "| history | ingest, logs/s (batches of 50) | server CPU per log | p50 at {} logs/s | p99 |",
            a.rate
        );
        println!("| --- | ---: | ---: | ---: | ---: |");
        for (i, mode) in Mode::ALL.iter().enumerate() {
            println!(
                "| {} | {:.0} | {:.2} µs | {:.1} ms | {:.1} ms |",
                mode.name(),
                med(i, |f| f.logs_per_s),
                med(i, |f| f.cpu_us_per_log),
                med(i, |f| f.p50_ms),
                med(i, |f| f.p99_ms)
            );
        }
    }
    if a.part == "restart" || a.part == "all" {
        rt.block_on(restart_part());
    }
}
