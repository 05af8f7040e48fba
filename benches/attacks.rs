//! Attacks by ordinary clients (the breaks of issue 21), each against freshly started servers,
//! so that a build can be measured before and after a fix.
//!
//! `cargo bench --bench attacks -- --attack sessions|resume|idempotency [--bin PATH]
//!   [--seconds N] [--redis] [--loops N] [--concurrent-duplicates] [--max-rss-mb N]
//!   [--env KEY=VALUE ...]`
//!
//! `--bin` is the server binary: by default the logstream built with this bench, or another
//! build (e.g. `/tmp/logstream-before`) for the "before" row. Each attack starts its own
//! servers (`serve` on 127.0.0.1 and a free port, the repository's `plugins/`, keys from the
//! environment, every other setting at its default) and prints one markdown table: a header
//! and one row. RSS is the server's VmRSS, sampled every 200 ms: when the attack starts, its
//! peak, and 2 s after the attack ends. An attack stops early once the server's RSS passes
//! `--max-rss-mb` (default 8192), so that a build without a bound does not take the machine
//! down; the row says so.
//!
//! - `sessions`: engine.io sessions opened without a token. Eight keep-alive HTTP/1.1
//!   connections from 127.0.0.1 send `GET /socket.io/?EIO=4&transport=polling` back to back
//!   for `--seconds` (15), reconnecting when a connection is closed. A 200 whose body starts
//!   with `0{"sid"` is a session created; any other answer, or a dropped connection, is a
//!   refusal. Meanwhile a witness from 127.0.0.2 holds an authenticated WebSocket subscribed
//!   to device `w`, and a log for `w` carrying its send time is POSTed every 20 ms (from
//!   127.0.0.2 too). The latency from POST to witness is reported for the 5 s before the
//!   attack and during it, with the logs the witness never received.
//! - `resume`: resumable sessions, unbounded per user. One user (one `sub`) runs `--loops`
//!   (8) loops for `--seconds` (20): connect, `log:subscribe` with `resume: true` and ~60 KB
//!   of params (the seed shape at its item limits: 100 keywords, 100 tags and 40 device ids of
//!   250 bytes, under `max_subscription_bytes`), wait for `log:subscribed` and its `session`,
//!   close. Reports the distinct session ids received and the refusals by code. Eight live
//!   subscriptions of 60 KB weigh more than one user's may together
//!   (`max_user_subscription_bytes`, 256 KB): some subscribes are refused
//!   `subscription_too_costly` while the connections before them are still open, which is that
//!   bound working; what it does not bound is the sessions left behind. With `--redis` the
//!   server keeps its sessions in a Redis started for the run, whose `used_memory` and
//!   `DBSIZE` are reported too.
//! - `idempotency` (always with Redis): instances A and B share a Redis. Batches of 50 logs,
//!   each batch with its own `Idempotency-Key` (named in every log's message), are POSTed to
//!   A, 32 at a time; after `--seconds` (2) A is SIGKILLed. Every key not answered 2xx is then
//!   sent to B again until it is, for at most 30 s. Reports the answers (409, 202
//!   `duplicate: true`, 202 published, others), the time from the kill until every key had a
//!   2xx, and, from the Redis stream, the keys whose logs landed more than once or never.
//!   `--concurrent-duplicates`: instead, 50 rounds each send one key and body to A and B at
//!   the same moment; reports their answers and how many copies of each batch landed.
//!
//! The harness shares the machine with the server: the attackers run on one runtime thread,
//! the witness on a thread of its own so that a busy attacker does not delay its reads.
//! Linux gives a connection *to* 127.0.0.2 the source address 127.0.0.1 (the loopback route's
//! `src`), so the witness binds 127.0.0.2 as its source address itself.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

mod support;
use support::{Server, now_us, percentile, rss_kb};

const SECRET: &str = "attack-secret-0123456789abcdef";
const API_KEY: &str = "attack-api-key";
const ADMIN_KEY: &str = "attack-admin-key";
const KEYS: support::Keys = support::Keys {
    secret: SECRET,
    api_key: API_KEY,
    admin_key: ADMIN_KEY,
};
/// Where the witness and its producer connect from: not the attacker's address (127.0.0.1),
/// so per-address limits aimed at the attacker do not reach them.
const WITNESS_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// Connections opening engine.io sessions in `sessions`.
const POLLERS: usize = 8;
/// Logs per request in `idempotency`, and requests in flight.
const BATCH: usize = 50;
const IN_FLIGHT: usize = 32;
/// How long keys are retried against B after A is killed.
const RETRY_FOR: Duration = Duration::from_secs(30);
/// The Redis stream of `idempotency`, named explicitly so that any build uses the same.
const STREAM: &str = "logstream:attack";
/// How long after an attack ends its RSS "end" is read.
const SETTLE: Duration = Duration::from_secs(2);

/// `--env KEY=VALUE` (repeatable): more environment for every server started, e.g. a
/// `LOGSTREAM_*` key to measure one bound with another out of the way.
static EXTRA_ENV: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

struct Args {
    attack: String,
    bin: String,
    /// The attack's main duration (its default when absent; see the module doc).
    seconds: Option<u64>,
    redis: bool,
    /// Concurrent loops of `resume`.
    loops: usize,
    concurrent_duplicates: bool,
    max_rss_kb: u64,
}

fn parse_args() -> Args {
    let mut a = Args {
        attack: String::new(),
        bin: env!("CARGO_BIN_EXE_logstream").into(),
        seconds: None,
        redis: false,
        loops: 8,
        concurrent_duplicates: false,
        max_rss_kb: 8192 * 1024,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--attack" => a.attack = value(),
            "--bin" => a.bin = value(),
            "--seconds" => a.seconds = Some(value().parse().expect("--seconds N")),
            "--loops" => a.loops = value().parse().expect("--loops N"),
            "--max-rss-mb" => {
                a.max_rss_kb = value().parse::<u64>().expect("--max-rss-mb N") * 1024;
            }
            "--env" => {
                let kv = value();
                let (k, v) = kv.split_once('=').expect("--env KEY=VALUE");
                EXTRA_ENV.lock().unwrap().push((k.to_owned(), v.to_owned()));
            }
            "--redis" => a.redis = true,
            "--concurrent-duplicates" => a.concurrent_duplicates = true,
            // Cargo adds `--bench`.
            _ => {}
        }
    }
    a
}

fn main() {
    let a = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    println!("attack `{}` against {}", a.attack, a.bin);
    match a.attack.as_str() {
        "sessions" => rt.block_on(sessions(&a)),
        "resume" => rt.block_on(resume(&a)),
        "idempotency" if a.concurrent_duplicates => rt.block_on(concurrent_duplicates(&a)),
        "idempotency" => rt.block_on(idempotency(&a)),
        other => {
            eprintln!("--attack sessions|resume|idempotency (got {other:?})");
            std::process::exit(2);
        }
    }
}

// ---------------------------------------------------------------------------------------
// sessions

async fn sessions(a: &Args) {
    let seconds = a.seconds.unwrap_or(15);
    let server = start_server(&a.bin, &[], &[]);
    let witness = Witness::start(server.addr);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline_from = now_us();
    tokio::time::sleep(Duration::from_secs(5)).await;

    let rss = RssWatch::start(vec![server.pid()], a.max_rss_kb);
    let attack_from = now_us();
    let until = Instant::now() + Duration::from_secs(seconds);
    let created = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(Tally::default());
    let pollers: Vec<_> = (0..POLLERS)
        .map(|_| {
            tokio::spawn(open_sessions(
                server.url.clone(),
                until,
                rss.capped(),
                created.clone(),
                refused.clone(),
            ))
        })
        .collect();
    for p in pollers {
        p.await.unwrap();
    }
    let attack_to = now_us();
    let took = (attack_to - attack_from) as f64 / 1e6;
    tokio::time::sleep(SETTLE).await;
    let rss = rss.finish();
    let witness = witness.stop();
    let created = created.load(Ordering::Relaxed);

    println!(
        "| attack | binary | done | sessions created | refused | RSS start / peak / end | witness p50 / p99 before | witness p50 / p99 during | witness logs lost during | witness reconnects |"
    );
    println!("| --- | --- | --- | ---: | --- | --- | --- | --- | ---: | ---: |");
    println!(
        "| sessions | {} | {POLLERS} keep-alive connections, polling handshakes without a token for {took:.1} s | {created} ({:.0}/s) | {} ({refused}) | {rss} | {} | {} | {} | {} |",
        a.bin,
        created as f64 / took,
        refused.total(),
        witness.latency(baseline_from, attack_from),
        witness.latency(attack_from, attack_to),
        witness.lost(attack_from, attack_to),
        witness.reconnects.load(Ordering::Relaxed),
    );
}

/// One attacker connection: polling handshakes back to back until `until`.
async fn open_sessions(
    url: String,
    until: Instant,
    capped: Arc<AtomicBool>,
    created: Arc<AtomicU64>,
    refused: Arc<Tally>,
) {
    // One idle connection at most, used by one request at a time: a keep-alive connection,
    // replaced when the server closes it.
    let http = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!("{url}/socket.io/?EIO=4&transport=polling");
    while Instant::now() < until && !capped.load(Ordering::Relaxed) {
        match http.get(&url).send().await {
            Ok(r) => {
                let status = r.status();
                let body = r.bytes().await.unwrap_or_default();
                if status == 200 && body.starts_with(b"0{\"sid\"") {
                    created.fetch_add(1, Ordering::Relaxed);
                } else {
                    refused.add(&format!("status {}", status.as_u16()));
                }
            }
            Err(e) => refused.add(transport_error(&e)),
        }
    }
}

/// An ordinary subscriber from another address, and the producer of the logs it waits for,
/// on a thread of their own.
struct Witness {
    shared: Arc<WitnessLog>,
    thread: std::thread::JoinHandle<()>,
}

#[derive(Default)]
struct WitnessLog {
    /// (sent at µs, latency µs) of every log the witness received.
    received: Mutex<Vec<(u64, u64)>>,
    /// Sent at (µs) of every log the server accepted.
    accepted: Mutex<Vec<u64>>,
    /// Times the witness's connection ended and it connected again.
    reconnects: AtomicU64,
    stop: AtomicBool,
}

impl Witness {
    /// Start, and return once the witness is subscribed.
    fn start(server: SocketAddr) -> Witness {
        let shared = Arc::new(WitnessLog::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let log = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            // The subscriber ends with the runtime, when the producer stops.
            rt.block_on(async move {
                tokio::spawn(watch(server, log.clone(), ready_tx));
                produce(server, log).await;
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the witness did not subscribe within 30 s");
        Witness { shared, thread }
    }

    fn stop(self) -> Arc<WitnessLog> {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        self.shared
    }
}

impl WitnessLog {
    /// p50 / p99 latency of the logs sent in `[from, to)`.
    fn latency(&self, from: u64, to: u64) -> String {
        let mut lat: Vec<u64> = self
            .received
            .lock()
            .unwrap()
            .iter()
            .filter(|(sent, _)| (from..to).contains(sent))
            .map(|(_, lat)| *lat)
            .collect();
        lat.sort_unstable();
        format!(
            "{:.1} / {:.1} ms",
            percentile(&lat, 0.50),
            percentile(&lat, 0.99)
        )
    }

    /// Logs sent in `[from, to)` that the server accepted and the witness never received.
    fn lost(&self, from: u64, to: u64) -> usize {
        let in_window = |sent: &u64| (from..to).contains(sent);
        let accepted = self
            .accepted
            .lock()
            .unwrap()
            .iter()
            .filter(|s| in_window(s))
            .count();
        let received = (self.received.lock().unwrap().iter())
            .filter(|(s, _)| in_window(s))
            .count();
        accepted.saturating_sub(received)
    }
}

/// The witness's subscriber: subscribed to `w`, reconnecting whenever its connection ends.
async fn watch(server: SocketAddr, log: Arc<WitnessLog>, ready: std::sync::mpsc::Sender<()>) {
    let token = token("witness");
    loop {
        if let Err(why) = follow(server, &token, &log, &ready).await {
            eprintln!("witness: {why}; connecting again");
        }
        log.reconnects.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn follow(
    server: SocketAddr,
    token: &str,
    log: &WitnessLog,
    ready: &std::sync::mpsc::Sender<()>,
) -> Result<(), String> {
    let mut ws = connect(server, Some(WITNESS_ADDR), token).await?;
    emit(&mut ws, "log:subscribe", json!({ "deviceIds": ["w"] })).await?;
    loop {
        let frame = next_frame(&mut ws).await?;
        if frame.starts_with("42[\"log:subscribed\"") {
            let _ = ready.send(());
        } else if frame.starts_with("42[\"log:new\"") {
            let now = now_us();
            if let Some(sent) = sent_stamp(&frame) {
                (log.received.lock().unwrap()).push((sent, now.saturating_sub(sent)));
            }
        }
    }
}

/// The witness's producer: one log for `w` every 20 ms, each POST on a task of its own so
/// that a slow answer does not delay the next log.
async fn produce(server: SocketAddr, log: Arc<WitnessLog>) {
    let http = reqwest::Client::builder()
        .local_address(WITNESS_ADDR)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("http://{server}/api/logs");
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while !log.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let (http, url, log) = (http.clone(), url.clone(), log.clone());
        tokio::spawn(async move {
            let sent = now_us();
            let entry = json!({ "deviceId": "w", "level": "INFO", "message": format!("witness sentAtUs={sent}") });
            let answer = http
                .post(url)
                .header("x-api-key", API_KEY)
                .json(&entry)
                .send()
                .await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                log.accepted.lock().unwrap().push(sent);
            }
        });
    }
}

/// The send time a witness log carries in its message.
fn sent_stamp(frame: &str) -> Option<u64> {
    let rest = frame.split_once("sentAtUs=")?.1;
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

// ---------------------------------------------------------------------------------------
// resume

async fn resume(a: &Args) {
    let seconds = a.seconds.unwrap_or(20);
    let redis = a.redis.then(Redis::start);
    let env: Vec<(&str, String)> = redis
        .iter()
        .map(|r| ("LOGSTREAM_REDIS_URL", r.url.clone()))
        .collect();
    let server = start_server(&a.bin, &env, &[]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let redis_before = match &redis {
        Some(r) => Some(r.memory().await),
        None => None,
    };
    let token = token("attacker");
    let weight = subscription("size").to_string().len();

    let rss = RssWatch::start(vec![server.pid()], a.max_rss_kb);
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(seconds);
    let sessions = Arc::new(Mutex::new(HashSet::new()));
    let refused = Arc::new(Tally::default());
    let loops: Vec<_> = (0..a.loops)
        .map(|i| {
            tokio::spawn(leave_sessions(
                LoopCtx {
                    server: server.addr,
                    token: token.clone(),
                    until,
                    capped: rss.capped(),
                    sessions: sessions.clone(),
                    refused: refused.clone(),
                },
                i,
            ))
        })
        .collect();
    for l in loops {
        l.await.unwrap();
    }
    let took = t0.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let rss = rss.finish();
    let created = sessions.lock().unwrap().len();
    let store = match (&redis, redis_before) {
        (Some(r), Some((used_before, _))) => {
            let (used_after, keys) = r.memory().await;
            format!(
                "redis: used_memory {} → {} MB, DBSIZE {keys}",
                used_before / (1 << 20),
                used_after / (1 << 20)
            )
        }
        _ => "memory".into(),
    };

    println!(
        "| attack | binary | done | sessions created | refused | RSS start / peak / end | session store |"
    );
    println!("| --- | --- | --- | ---: | --- | --- | --- |");
    println!(
        "| resume | {} | one user, {} loops for {took:.1} s: connect, subscribe with resume and a {:.1} KB subscription, close | {created} ({:.0}/s) | {} ({refused}) | {rss} | {store} |",
        a.bin,
        a.loops,
        weight as f64 / 1024.0,
        created as f64 / took,
        refused.total(),
    );
}

/// What every loop of `resume` shares.
struct LoopCtx {
    server: SocketAddr,
    token: String,
    until: Instant,
    capped: Arc<AtomicBool>,
    /// Distinct session ids received.
    sessions: Arc<Mutex<HashSet<String>>>,
    refused: Arc<Tally>,
}

/// One loop of `resume`: subscribe with a session and go, again and again.
async fn leave_sessions(ctx: LoopCtx, id: usize) {
    let mut n = 0u64;
    while Instant::now() < ctx.until && !ctx.capped.load(Ordering::Relaxed) {
        n += 1;
        match subscribe_and_leave(&ctx, subscription(&format!("{id}-{n}"))).await {
            Ok(session) => {
                ctx.sessions.lock().unwrap().insert(session);
            }
            Err(why) => ctx.refused.add(&why),
        }
    }
}

/// Connect, subscribe with `sub`, close: the session id `log:subscribed` carried.
async fn subscribe_and_leave(ctx: &LoopCtx, sub: Value) -> Result<String, String> {
    let mut ws = connect(ctx.server, None, &ctx.token).await?;
    emit(&mut ws, "log:subscribe", sub).await?;
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let frame = next_frame(&mut ws).await?;
            if frame.starts_with("42[\"log:subscribed\"") || frame.starts_with("42[\"error\"") {
                return Ok::<_, String>(frame);
            }
        }
    })
    .await
    .map_err(|_| "no answer to log:subscribe within 10 s".to_owned())??;
    let _ = ws.close(None).await;
    let answer: Value = serde_json::from_str(&answer[2..]).unwrap_or_default();
    match (answer[0].as_str(), answer[1]["session"].as_str()) {
        (Some("log:subscribed"), Some(session)) => Ok(session.to_owned()),
        (Some("log:subscribed"), None) => Err("log:subscribed without a session".into()),
        _ => Err(format!(
            "error {}",
            answer[1]["code"].as_str().unwrap_or("without a code")
        )),
    }
}

/// A resumable subscription of about 60 KB in the seed's shape, every item 250 bytes and
/// unique to `tag` (nothing the server could share between sessions).
fn subscription(tag: &str) -> Value {
    let items = |kind: &str, n: usize| -> Vec<String> {
        (0..n)
            .map(|i| format!("{kind}-{tag}-{i}-{}", "x".repeat(250)))
            .map(|s| s[..250].to_owned())
            .collect()
    };
    json!({
        "resume": true,
        "deviceIds": items("device", 40),
        "tags": items("tag", 100),
        "keywords": items("keyword", 100),
    })
}

// ---------------------------------------------------------------------------------------
// idempotency

/// Redis and instances A and B on it.
struct Pair {
    // Dropped in this order: the servers before their Redis.
    a: Server,
    b: Server,
    redis: Redis,
}

impl Pair {
    async fn start(bin: &str) -> Pair {
        let redis = Redis::start();
        let env = [("LOGSTREAM_REDIS_URL", redis.url.clone())];
        // The stream keeps everything the attack sends (its MAXLEN is history_max_logs).
        let sets = [
            "history_max_logs=1000000".to_owned(),
            format!("redis_stream={STREAM}"),
        ];
        let a = start_server(bin, &env, &sets);
        let b = start_server(bin, &env, &sets);
        tokio::time::sleep(Duration::from_millis(500)).await;
        Pair { a, b, redis }
    }
}

async fn idempotency(a: &Args) {
    let kill_after = Duration::from_secs(a.seconds.unwrap_or(2));
    let mut pair = Pair::start(&a.bin).await;
    let rss = RssWatch::start(vec![pair.a.pid(), pair.b.pid()], a.max_rss_kb);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    let killed = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let first = Arc::new(Mutex::new(Vec::new()));
    let producers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (http, url, killed, next, first) = (
                http.clone(),
                pair.a.url.clone(),
                killed.clone(),
                next.clone(),
                first.clone(),
            );
            tokio::spawn(async move {
                while !killed.load(Ordering::Relaxed) {
                    let key = format!("k{}", next.fetch_add(1, Ordering::Relaxed));
                    let answer = post_batch(&http, &url, &key).await;
                    first.lock().unwrap().push((key, answer));
                }
            })
        })
        .collect();
    tokio::time::sleep(kill_after).await;
    pair.a.kill();
    killed.store(true, Ordering::Relaxed);
    let killed_at = Instant::now();
    for p in producers {
        p.await.unwrap();
    }
    let first = std::mem::take(&mut *first.lock().unwrap());

    let at_a = Tally::default();
    let mut answered = HashSet::new();
    let mut pending = Vec::new();
    for (key, answer) in &first {
        at_a.add(&answer.label());
        if answer.ok() {
            answered.insert(key.clone());
        } else {
            pending.push(key.clone());
        }
    }
    let retried = pending.len();
    let at_b = Tally::default();
    let mut all_answered_after = None;
    while !pending.is_empty() && killed_at.elapsed() < RETRY_FOR {
        let answers: Vec<(String, Answer)> = futures_util::stream::iter(pending.drain(..))
            .map(|key| {
                let (http, url) = (&http, pair.b.url.clone());
                async move {
                    let answer = post_batch(http, &url, &key).await;
                    (key, answer)
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        for (key, answer) in answers {
            at_b.add(&answer.label());
            if answer.ok() {
                answered.insert(key);
            } else {
                pending.push(key);
            }
        }
        if pending.is_empty() {
            all_answered_after = Some(killed_at.elapsed());
        } else {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    tokio::time::sleep(SETTLE).await;
    let rss = rss.finish();
    let (xlen, landed) = landed(&pair.redis).await;
    let copies = |key: &str| landed.get(key).copied().unwrap_or(0);
    let twice: Vec<&String> = first
        .iter()
        .map(|(k, _)| k)
        .filter(|k| copies(k) > BATCH as u64)
        .collect();
    let extra: u64 = twice.iter().map(|k| copies(k) - BATCH as u64).sum();
    let never: Vec<&String> = (first.iter().map(|(k, _)| k))
        .filter(|k| copies(k) == 0)
        .collect();
    let never_but_answered = never.iter().filter(|k| answered.contains(**k)).count();
    let partial = (first.iter().map(|(k, _)| k))
        .filter(|k| copies(k) % BATCH as u64 != 0)
        .count();
    let every_key = match all_answered_after {
        Some(t) => format!("{:.1} s after the kill", t.as_secs_f64()),
        // A key refused until the end whose logs are in the stream: its first attempt
        // landed, and its retries can never be told so.
        None => format!(
            "not within {} s: {} keys never answered 2xx, {} of them landed",
            RETRY_FOR.as_secs(),
            pending.len(),
            pending.iter().filter(|k| copies(k) > 0).count()
        ),
    };

    println!(
        "| attack | binary | done | keys sent to A | A's answers | retried at B | B's answers | every key 2xx | keys landed more than once (extra logs) | keys never landed (answered 2xx) | partial batches | stream XLEN | RSS A+B start / peak / end |"
    );
    println!(
        "| --- | --- | --- | ---: | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | --- |"
    );
    println!(
        "| idempotency | {} | batches of {BATCH} logs, {IN_FLIGHT} in flight to A, A SIGKILLed after {} s, keys not answered 2xx retried at B | {} | {at_a} | {retried} | {at_b} | {every_key} | {} ({extra}) | {} ({never_but_answered}) | {partial} | {xlen} | {rss} |",
        a.bin,
        kill_after.as_secs(),
        first.len(),
        twice.len(),
        never.len(),
    );
}

async fn concurrent_duplicates(a: &Args) {
    const ROUNDS: usize = 50;
    let pair = Pair::start(&a.bin).await;
    let rss = RssWatch::start(vec![pair.a.pid(), pair.b.pid()], a.max_rss_kb);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let (url_a, url_b) = (pair.a.url.clone(), pair.b.url.clone());
    let answers = Tally::default();
    for round in 0..ROUNDS {
        let key = format!("dup{round}");
        let (x, y) = tokio::join!(
            post_batch(&http, &url_a, &key),
            post_batch(&http, &url_b, &key)
        );
        answers.add(&x.label());
        answers.add(&y.label());
    }
    tokio::time::sleep(SETTLE).await;
    let rss = rss.finish();
    let (_, landed) = landed(&pair.redis).await;
    let copies = Tally::default();
    for round in 0..ROUNDS {
        let logs = landed.get(&format!("dup{round}")).copied().unwrap_or(0);
        copies.add(&match (logs / BATCH as u64, logs % BATCH as u64) {
            (n, 0) => format!("{n}×"),
            _ => format!("{logs} logs (partial)"),
        });
    }

    println!(
        "| attack | binary | done | answers | copies landed per key | RSS A+B start / peak / end |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "| idempotency --concurrent-duplicates | {} | {ROUNDS} rounds: the same key and {BATCH}-log body to A and B at once | {answers} | {copies} | {rss} |",
        a.bin,
    );
}

/// How a batch POST was answered.
enum Answer {
    Published,
    Duplicate,
    Conflict,
    /// Another status, or no answer (connection refused, dropped, timed out).
    Other(String),
}

impl Answer {
    fn ok(&self) -> bool {
        matches!(self, Answer::Published | Answer::Duplicate)
    }

    fn label(&self) -> String {
        match self {
            Answer::Published => "202 published".into(),
            Answer::Duplicate => "202 duplicate".into(),
            Answer::Conflict => "409".into(),
            Answer::Other(why) => why.clone(),
        }
    }
}

/// POST `BATCH` logs naming `key` in their message, with `key` as `Idempotency-Key`.
async fn post_batch(http: &reqwest::Client, url: &str, key: &str) -> Answer {
    let logs: Vec<Value> = (0..BATCH)
        .map(|i| json!({ "deviceId": "idem", "level": "INFO", "message": format!("idem {key} {i}") }))
        .collect();
    let sent = http
        .post(format!("{url}/api/logs"))
        .header("x-api-key", API_KEY)
        .header("idempotency-key", key)
        .json(&logs)
        .send()
        .await;
    let r = match sent {
        Ok(r) => r,
        Err(e) => return Answer::Other(transport_error(&e).into()),
    };
    let status = r.status();
    let body: Value = r.json().await.unwrap_or_default();
    match status.as_u16() {
        200..=299 if body["duplicate"] == true => Answer::Duplicate,
        200..=299 => Answer::Published,
        409 => Answer::Conflict,
        s => Answer::Other(format!("status {s}")),
    }
}

/// The stream's length, and how many logs of each key it holds.
async fn landed(redis: &Redis) -> (u64, HashMap<String, u64>) {
    let mut conn = redis.connection().await;
    let xlen: u64 = redis::cmd("XLEN")
        .arg(STREAM)
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    let mut per_key = HashMap::new();
    let mut from = "-".to_owned();
    loop {
        let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(STREAM)
            .arg(&from)
            .arg("+")
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut conn)
            .await
            .expect("XRANGE");
        let Some((last, _)) = entries.last() else {
            break;
        };
        from = format!("({last}");
        // Each entry is field, value, …: the value is the log as JSON.
        for (_, fields) in &entries {
            for value in fields.iter().skip(1).step_by(2) {
                let entry: Value = serde_json::from_str(value).unwrap_or_default();
                let key = entry["message"]
                    .as_str()
                    .and_then(|m| m.strip_prefix("idem "))
                    .and_then(|rest| rest.split(' ').next());
                if let Some(key) = key {
                    *per_key.entry(key.to_owned()).or_default() += 1;
                }
            }
        }
    }
    (xlen, per_key)
}

// ---------------------------------------------------------------------------------------
// Servers, Redis, memory

/// A logstream process, killed when dropped.
/// `bin serve` with the attack's keys, `env`, `--env` from the command line and `sets`.
fn start_server(bin: &str, env: &[(&str, String)], sets: &[String]) -> Server {
    let mut all: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    all.extend(EXTRA_ENV.lock().unwrap().iter().cloned());
    Server::start(bin, &KEYS, &all, sets)
}

/// A redis-server on a free port, without persistence, killed when dropped.
struct Redis {
    child: Child,
    url: String,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        }
    }

    async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis")
    }

    /// `used_memory` (bytes) and `DBSIZE`.
    async fn memory(&self) -> (u64, u64) {
        let mut conn = self.connection().await;
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await
            .expect("INFO memory");
        let used = info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let keys: u64 = redis::cmd("DBSIZE")
            .query_async(&mut conn)
            .await
            .expect("DBSIZE");
        (used, keys)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The summed VmRSS of some processes (0 for one that has exited), sampled every 200 ms on a
/// thread of its own; past `cap_kb` it raises [`RssWatch::capped`].
struct RssWatch {
    pids: Vec<u32>,
    start_kb: u64,
    peak_kb: Arc<AtomicU64>,
    capped: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl RssWatch {
    fn start(pids: Vec<u32>, cap_kb: u64) -> RssWatch {
        let sum = |pids: &[u32]| pids.iter().map(|p| rss_kb(*p)).sum::<u64>();
        let start_kb = sum(&pids);
        let peak_kb = Arc::new(AtomicU64::new(start_kb));
        let capped = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (pids, peak_kb, capped, stop) =
                (pids.clone(), peak_kb.clone(), capped.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let now = sum(&pids);
                    peak_kb.fetch_max(now, Ordering::Relaxed);
                    if now > cap_kb {
                        capped.store(true, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        });
        RssWatch {
            pids,
            start_kb,
            peak_kb,
            capped,
            stop,
            thread,
        }
    }

    /// Raised once the RSS has passed the cap: attacks stop.
    fn capped(&self) -> Arc<AtomicBool> {
        self.capped.clone()
    }

    /// "start / peak / end MB", the end read now.
    fn finish(self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        let end = self.pids.iter().map(|p| rss_kb(*p)).sum::<u64>();
        let peak = self.peak_kb.load(Ordering::Relaxed).max(end);
        format!(
            "{} / {} / {} MB{}",
            self.start_kb / 1024,
            peak / 1024,
            end / 1024,
            if self.capped.load(Ordering::Relaxed) {
                " (stopped at --max-rss-mb)"
            } else {
                ""
            }
        )
    }
}

// ---------------------------------------------------------------------------------------
// Clients

type Ws = WebSocketStream<TcpStream>;

/// A raw engine.io v4 WebSocket (the protocol socket.io-client speaks), from `from` if
/// given, joined to the namespace with `token`.
async fn connect(server: SocketAddr, from: Option<IpAddr>, token: &str) -> Result<Ws, String> {
    let stream = match from {
        Some(from) => {
            let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
            socket
                .bind(SocketAddr::new(from, 0))
                .map_err(|e| format!("bind {from}: {e}"))?;
            socket.connect(server).await
        }
        None => TcpStream::connect(server).await,
    }
    .map_err(|e| format!("tcp connect: {}", e.kind()))?;
    let url = format!("ws://{server}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .map_err(|e| format!("websocket handshake: {e}"))?;
    send(&mut ws, format!("40{}", json!({ "token": token }))).await?;
    loop {
        let frame = next_frame(&mut ws).await?;
        if frame.starts_with("40") {
            return Ok(ws);
        }
        if let Some(refusal) = frame.strip_prefix("44") {
            let why = serde_json::from_str::<Value>(refusal)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| refusal.to_owned());
            return Err(format!("connect_error: {why}"));
        }
    }
}

/// The next text frame, answering pings on the way.
async fn next_frame(ws: &mut Ws) -> Result<String, String> {
    loop {
        match ws.next().await {
            None | Some(Ok(Message::Close(_))) => return Err("closed by the server".into()),
            Some(Err(e)) => return Err(format!("websocket: {e}")),
            Some(Ok(Message::Text(text))) if text == "2" => send(ws, "3".into()).await?,
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(_)) => {}
        }
    }
}

async fn send(ws: &mut Ws, text: String) -> Result<(), String> {
    ws.send(Message::Text(text.into()))
        .await
        .map_err(|e| format!("send: {e}"))
}

async fn emit(ws: &mut Ws, event: &str, data: Value) -> Result<(), String> {
    send(ws, format!("42{}", json!([event, data]))).await
}

fn transport_error(e: &reqwest::Error) -> &'static str {
    if e.is_connect() {
        "connect failed"
    } else if e.is_timeout() {
        "timed out"
    } else {
        "connection dropped"
    }
}

fn token(sub: &str) -> String {
    support::token(SECRET, sub)
}

// ---------------------------------------------------------------------------------------
// Figures

/// Counts by kind, shown as `kind: n, …`.
#[derive(Default)]
struct Tally(Mutex<BTreeMap<String, u64>>);

impl Tally {
    fn add(&self, kind: &str) {
        *self.0.lock().unwrap().entry(kind.to_owned()).or_default() += 1;
    }

    fn total(&self) -> u64 {
        self.0.lock().unwrap().values().sum()
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let counts = self.0.lock().unwrap();
        if counts.is_empty() {
            return f.write_str("none");
        }
        let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        f.write_str(&parts.join(", "))
    }
}
