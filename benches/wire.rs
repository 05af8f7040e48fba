//! What a log costs on a real network (issue 22): the bytes on the wire per delivered log as
//! `log:new`, `log:batch` and gzip batches, the server's CPU per delivery for each, the same
//! over TLS (WSS against WS), and TLS handshakes per second.
//!
//! `cargo bench --bench wire -- [--runs new,batch,gzip,batch+tls,gzip+tls] [--clients 1000]
//!   [--devices 100] [--per-client 10] [--rate 1000] [--seconds 10] [--repeat 3] [--distinct]`
//! `cargo bench --bench wire -- --handshakes [--seconds 10] [--concurrency 32]`
//!
//! Each run starts a fresh release server (`system:stats` out of the way, so the bytes are the
//! logs' and the pings'), connects N raw Engine.IO WebSocket clients, and has each subscribe
//! to `--per-client` devices: by default a group of them shared by a tenth of the clients (a
//! dashboard per site), with `--distinct` a set of its own (nothing to share). Logs are
//! realistic lines (mixed device kinds and levels, messages of 80–300 bytes with repeated
//! structure: access lines, readings, reconnects, job reports, panics), POSTed in 20 ms ticks.
//! Bytes are counted under the WebSocket (and under TLS, for `+tls`): what the clients' TCP
//! sockets read, from the first log to the last delivery. Every delivery expected (accepted
//! logs × clients of their device) must arrive.
//!
//! `--handshakes`: `--concurrency` loops connect (TCP, TLS, WebSocket upgrade, Socket.IO
//! connect with a token answered) and close, for `--seconds`; over WS, over WSS with full
//! handshakes, and over WSS resuming TLS sessions (what a reconnect storm of known clients
//! does); the server's CPU per handshake beside the rate.

use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

mod support;
use support::{Server, cpu_seconds, median};

const KEYS: support::Keys = support::Keys {
    secret: "wire-secret-0123456789abcdef",
    api_key: "wire-api-key",
    admin_key: "wire-admin-key",
};

struct Args {
    runs: Vec<Run>,
    clients: usize,
    devices: usize,
    per_client: usize,
    rate: usize,
    seconds: u64,
    repeat: usize,
    distinct: bool,
    handshakes: bool,
    concurrency: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    New,
    Batch,
    Gzip,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Run {
    mode: Mode,
    tls: bool,
}

impl Run {
    fn parse(s: &str) -> Run {
        let (mode, tls) = match s.strip_suffix("+tls") {
            Some(m) => (m, true),
            None => (s, false),
        };
        let mode = match mode {
            "new" => Mode::New,
            "batch" => Mode::Batch,
            "gzip" => Mode::Gzip,
            other => panic!("--runs: unknown mode {other:?} (new, batch, gzip, each with +tls)"),
        };
        Run { mode, tls }
    }

    fn name(self) -> String {
        let mode = match self.mode {
            Mode::New => "log:new",
            Mode::Batch => "log:batch",
            Mode::Gzip => "gzip batches",
        };
        format!("{mode} over {}", if self.tls { "WSS" } else { "WS" })
    }
}

fn parse_args() -> Args {
    let mut a = Args {
        runs: "new,batch,gzip,batch+tls"
            .split(',')
            .map(Run::parse)
            .collect(),
        clients: 1000,
        devices: 100,
        per_client: 10,
        rate: 1000,
        seconds: 10,
        repeat: 1,
        distinct: false,
        handshakes: false,
        concurrency: 32,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--bench" => {}
            "--distinct" => a.distinct = true,
            "--handshakes" => a.handshakes = true,
            _ => {
                let v = args
                    .next()
                    .unwrap_or_else(|| panic!("{flag} needs a value"));
                let n = || v.parse::<usize>().expect("a number");
                match flag.as_str() {
                    "--runs" => a.runs = v.split(',').map(Run::parse).collect(),
                    "--clients" => a.clients = n(),
                    "--devices" => a.devices = n(),
                    "--per-client" => a.per_client = n(),
                    "--rate" => a.rate = n(),
                    "--seconds" => a.seconds = n() as u64,
                    "--repeat" => a.repeat = n().max(1),
                    "--concurrency" => a.concurrency = n().max(1),
                    _ => panic!("unknown flag {flag}"),
                }
            }
        }
    }
    assert!(
        a.per_client <= a.devices && a.devices.is_multiple_of(a.per_client),
        "--devices must be a multiple of --per-client"
    );
    a
}

// ---------------------------------------------------------------------------------------
// Logs

const KINDS: [&str; 5] = ["pump", "gw", "cam", "meter", "valve"];
const UAS: [&str; 3] = [
    "okhttp/4.12.0",
    "fleet-agent/2.4.1 (linux; arm64)",
    "curl/8.5.0",
];

fn device(i: usize) -> String {
    format!("{}-{i:03}", KINDS[i % KINDS.len()])
}

/// One log of a fleet, and its device's index: a device, a level (mostly INFO), and a
/// message of 80–300 bytes from one of six shapes with varying numbers and ids.
fn fleet_log(rng: &mut impl Rng, devices: usize) -> (usize, Value) {
    let d = rng.random_range(0..devices);
    let level = match rng.random_range(0..100) {
        0..70 => "INFO",
        70..85 => "DEBUG",
        85..95 => "WARN",
        _ => "ERROR",
    };
    let hex = |rng: &mut dyn rand::RngCore, n: usize| -> String {
        (0..n)
            .map(|_| char::from_digit(rng.next_u32() % 16, 16).unwrap())
            .collect()
    };
    let message = match rng.random_range(0..6) {
        0 => format!(
            "GET /api/v1/devices/{}/telemetry?window={}m 200 {} ms bytes={} ua=\"{}\" trace={}",
            device(d),
            rng.random_range(1..60),
            rng.random_range(1..900),
            rng.random_range(200..90_000),
            UAS[rng.random_range(0..UAS.len())],
            hex(rng, 16)
        ),
        1 => format!(
            "reading temperature={:.1}C humidity={}% pressure={}hPa battery={}% rssi=-{}dBm fw=2.4.{}",
            rng.random_range(-200..450) as f64 / 10.0,
            rng.random_range(10..95),
            rng.random_range(950..1050),
            rng.random_range(1..100),
            rng.random_range(40..110),
            rng.random_range(0..9)
        ),
        2 => format!(
            "connection to mqtts://broker-{}.fleet.internal:8883 lost: read timeout after {} ms (attempt {}/5); retrying in {} s",
            rng.random_range(1..4),
            rng.random_range(1000..30_000),
            rng.random_range(1..5),
            rng.random_range(1..30)
        ),
        3 => format!(
            "job {}-{}-{} finished: processed={} failed={} skipped={} duration={} ms queue=ingest-{} worker=w{}",
            hex(rng, 8),
            hex(rng, 4),
            hex(rng, 12),
            rng.random_range(0..20_000),
            rng.random_range(0..40),
            rng.random_range(0..200),
            rng.random_range(5..60_000),
            rng.random_range(0..8),
            rng.random_range(0..32)
        ),
        4 => format!(
            "disk usage on /var/lib/fleet-agent at {}% ({} MiB of {} MiB); rotating logs older than {} days, cleanup scheduled",
            rng.random_range(50..99),
            rng.random_range(1000..30_000),
            32_768,
            rng.random_range(1..14)
        ),
        _ => format!(
            "thread 'sensor-poll-{}' panicked at src/poll/modbus.rs:{}:{}: index out of bounds: the len is {} but the index is {}; restarting worker (restart #{} in the last hour)",
            rng.random_range(0..4),
            rng.random_range(10..600),
            rng.random_range(1..80),
            rng.random_range(0..64),
            rng.random_range(64..128),
            rng.random_range(1..9)
        ),
    };
    let mut log = json!({ "deviceId": device(d), "level": level, "message": message });
    if rng.random_range(0..3) == 0 {
        log["tags"] = json!(["site-".to_owned() + &(d / 10).to_string(), "prod"]);
    }
    (d, log)
}

/// The devices client `c` watches.
fn watched(c: usize, a: &Args) -> Vec<usize> {
    if a.distinct {
        // A set of its own: `per_client` devices spread by a stride depending on `c`.
        let stride = 1 + (c % (a.devices - 1).max(1));
        let mut set: Vec<usize> = (0..a.per_client)
            .map(|k| (c * 31 + k * stride) % a.devices)
            .collect();
        set.sort_unstable();
        set.dedup();
        set
    } else {
        let groups = a.devices / a.per_client;
        let g = c % groups;
        (g * a.per_client..(g + 1) * a.per_client).collect()
    }
}

// ---------------------------------------------------------------------------------------
// Clients

/// A stream that counts what it reads, under the WebSocket (and under TLS).
struct Counting<S> {
    inner: S,
    read: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counting<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Either kind of connection a client has.
trait Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Conn for T {}

/// TCP (counted), then TLS if `tls` is given.
/// TLS handshakes that resumed a session.
static RESUMED: AtomicU64 = AtomicU64::new(0);

async fn dial(
    server: std::net::SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
    read: Arc<AtomicU64>,
) -> Result<Box<dyn Conn>, String> {
    let tcp = TcpStream::connect(server)
        .await
        .map_err(|e| format!("tcp: {e}"))?;
    tcp.set_nodelay(true).ok();
    let counted = Counting { inner: tcp, read };
    match tls {
        None => Ok(Box::new(counted)),
        Some(config) => {
            let name = rustls::pki_types::ServerName::IpAddress(server.ip().into());
            let stream = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, counted)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            if stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                RESUMED.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Box::new(stream))
        }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<Box<dyn Conn>>;

/// A Socket.IO connection on namespace `/` with `token`, answered.
async fn open(
    server: std::net::SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
    read: Arc<AtomicU64>,
    token: &str,
) -> Result<Ws, String> {
    let conn = dial(server, tls, read).await?;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let url = format!("{scheme}://{server}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::client_async(url, conn)
        .await
        .map_err(|e| format!("websocket: {e}"))?;
    ws.send(Message::Text(
        format!("40{}", json!({ "token": token })).into(),
    ))
    .await
    .map_err(|e| format!("send: {e}"))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.starts_with("40") => return Ok(ws),
            Some(Ok(Message::Text(t))) if t.starts_with("44") => {
                return Err(format!("refused: {t}"));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("websocket: {e}")),
            None => return Err("closed".into()),
        }
    }
}

#[derive(Default)]
struct Tally {
    /// Bytes the clients' sockets read.
    read: Arc<AtomicU64>,
    /// Logs received.
    delivered: AtomicU64,
    /// Logs reported dropped (`log:dropped`).
    dropped: AtomicU64,
    /// Frames that could not be read (a gzip batch that does not inflate, …).
    bad: AtomicU64,
}

/// Entries in a JSON array of logs, without parsing it (each has one `deviceId`).
fn entries(json: &[u8]) -> u64 {
    json.windows(11).filter(|w| w == b"\"deviceId\":").count() as u64
}

async fn client(mut ws: Ws, sub: Value, tally: Arc<Tally>, ready: tokio::sync::mpsc::Sender<()>) {
    let _ = ws
        .send(Message::Text(
            format!("42{}", json!(["log:subscribe", sub])).into(),
        ))
        .await;
    let mut awaiting_attachment = false;
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Binary(gz) if awaiting_attachment => {
                awaiting_attachment = false;
                let mut json = Vec::new();
                match flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut json) {
                    Ok(_) => tally.delivered.fetch_add(entries(&json), Ordering::Relaxed),
                    Err(_) => tally.bad.fetch_add(1, Ordering::Relaxed),
                };
            }
            Message::Text(t) => {
                let t = t.as_str();
                if t == "2" {
                    let _ = ws.send(Message::Text("3".into())).await;
                } else if t.starts_with("42[\"log:new\"") {
                    tally.delivered.fetch_add(1, Ordering::Relaxed);
                } else if t.starts_with("42[\"log:batch\"") {
                    tally
                        .delivered
                        .fetch_add(entries(t.as_bytes()), Ordering::Relaxed);
                } else if t.starts_with("451-[\"log:batch\"") {
                    awaiting_attachment = true;
                } else if t.starts_with("42[\"log:subscribed\"") {
                    let _ = ready.send(()).await;
                } else if let Some(rest) = t.strip_prefix("42[\"log:dropped\",") {
                    let n = serde_json::from_str::<Value>(rest.trim_end_matches(']'))
                        .ok()
                        .and_then(|d| d["count"].as_u64())
                        .unwrap_or(1);
                    tally.dropped.fetch_add(n, Ordering::Relaxed);
                } else if t.starts_with("42[\"error\"") {
                    eprintln!("client: {t}");
                    tally.bad.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// One run

struct Figures {
    bytes_per_log: f64,
    cpu_us: f64,
    delivered: u64,
    expected: u64,
    dropped: u64,
    shared: Option<(u64, u64)>,
}

/// A server for `run` (TLS with a certificate of `pki` when asked).
fn start(run: Run, pki: &support::tls::Pki, a: &Args) -> Server {
    let mut env = vec![
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
        ("LOGSTREAM_MAX_SESSIONS".to_owned(), "1000000".to_owned()),
    ];
    if run.tls {
        let (cert, key) = pki.server_cert("server", &["127.0.0.1"]);
        env.push(("LOGSTREAM_TLS_CERT".into(), cert.display().to_string()));
        env.push(("LOGSTREAM_TLS_KEY".into(), key.display().to_string()));
    }
    let sets = vec![
        "stats_interval_ms=3600000".to_owned(),
        format!("rate_limit={}", a.rate * 2),
    ];
    Server::start(env!("CARGO_BIN_EXE_logstream"), &KEYS, &env, &sets)
}

fn scrape(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

async fn measure(run: Run, pki: &support::tls::Pki, a: &Args) -> Figures {
    let server = start(run, pki, a);
    let tls = logstream::cli::tls::client_config(Some(&pki.ca)).unwrap();
    let tls_opt = run.tls.then_some(&tls);
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(rustls::ClientConfig::clone(&tls))
        .build()
        .unwrap();
    let tally = Arc::new(Tally::default());
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(a.clients);
    let mut watchers = vec![0u64; a.devices];
    let mut tasks = Vec::new();
    for c in 0..a.clients {
        let devices = watched(c, a);
        for d in &devices {
            watchers[*d] += 1;
        }
        let ids: Vec<String> = devices.into_iter().map(device).collect();
        let sub = match run.mode {
            Mode::New => json!({ "deviceIds": ids }),
            Mode::Batch => json!({ "deviceIds": ids, "batch": true }),
            Mode::Gzip => json!({ "deviceIds": ids, "batch": true, "encoding": "gzip" }),
        };
        let token = support::token(KEYS.secret, &format!("c{c}"));
        let ws = open(server.addr, tls_opt, tally.read.clone(), &token)
            .await
            .unwrap_or_else(|e| panic!("client {c}: {e}"));
        tasks.push(tokio::spawn(client(
            ws,
            sub,
            tally.clone(),
            ready_tx.clone(),
        )));
    }
    for _ in 0..a.clients {
        ready_rx.recv().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The window: logs for `seconds`, then until every delivery arrived (or 5 s more).
    let bytes0 = tally.read.load(Ordering::Relaxed);
    let delivered0 = tally.delivered.load(Ordering::Relaxed);
    let cpu0 = cpu_seconds(server.pid());
    let mut rng = rand::rngs::StdRng::seed_from_u64(22);
    let per_tick = (a.rate / 50).max(1);
    let mut expected = 0u64;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while start.elapsed() < Duration::from_secs(a.seconds) {
        tick.tick().await;
        let (devices, logs): (Vec<usize>, Vec<Value>) = (0..per_tick)
            .map(|_| fleet_log(&mut rng, a.devices))
            .unzip();
        let watching: u64 = devices.iter().map(|d| watchers[*d]).sum();
        let answer = http
            .post(format!("{}/api/logs", server.url))
            .header("x-api-key", KEYS.api_key)
            .json(&logs)
            .send()
            .await;
        if answer.is_ok_and(|r| r.status().is_success()) {
            expected += watching;
        }
    }
    let settle = Instant::now();
    while tally.delivered.load(Ordering::Relaxed) - delivered0 < expected
        && settle.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = cpu_seconds(server.pid()) - cpu0;
    let bytes = tally.read.load(Ordering::Relaxed) - bytes0;
    let delivered = tally.delivered.load(Ordering::Relaxed) - delivered0;
    let shared = if run.mode == Mode::Gzip {
        let text = http
            .get(format!("{}/metrics", server.url))
            .header("x-api-key", KEYS.admin_key)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        Some((
            scrape(&text, "logstream_gzip_batches_compressed_total"),
            scrape(&text, "logstream_gzip_batches_shared_total"),
        ))
    } else {
        None
    };
    for t in tasks {
        t.abort();
    }
    let bad = tally.bad.load(Ordering::Relaxed);
    assert_eq!(bad, 0, "{bad} frames could not be read");
    Figures {
        bytes_per_log: bytes as f64 / delivered.max(1) as f64,
        cpu_us: cpu * 1e6 / delivered.max(1) as f64,
        delivered,
        expected,
        dropped: tally.dropped.load(Ordering::Relaxed),
        shared,
    }
}

// ---------------------------------------------------------------------------------------
// Handshakes

async fn handshakes(pki: &support::tls::Pki, a: &Args) {
    println!(
        "handshakes: {} loops for {} s each (TCP + TLS + WebSocket + Socket.IO connect answered, then close)",
        a.concurrency, a.seconds
    );
    println!(
        "| transport | handshakes/s | server CPU per handshake | TLS sessions resumed | failed |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, tls, resume) in [
        ("WS", false, false),
        ("WSS, full handshakes", true, false),
        ("WSS, resumed sessions", true, true),
    ] {
        let server = start(
            Run {
                mode: Mode::Batch,
                tls,
            },
            pki,
            a,
        );
        let config = logstream::cli::tls::client_config(Some(&pki.ca)).unwrap();
        let config = if resume {
            config
        } else {
            let mut c = rustls::ClientConfig::clone(&config);
            c.resumption = rustls::client::Resumption::disabled();
            Arc::new(c)
        };
        RESUMED.store(0, Ordering::Relaxed);
        let done = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let cpu0 = cpu_seconds(server.pid());
        let start = Instant::now();
        let mut loops = Vec::new();
        for l in 0..a.concurrency {
            let (done, failed, stop, config) =
                (done.clone(), failed.clone(), stop.clone(), config.clone());
            let token = support::token(KEYS.secret, &format!("h{l}"));
            let addr = server.addr;
            loops.push(tokio::spawn(async move {
                let read = Arc::new(AtomicU64::new(0));
                while !stop.load(Ordering::Relaxed) {
                    match open(addr, tls.then_some(&config), read.clone(), &token).await {
                        Ok(mut ws) => {
                            let _ = ws.close(None).await;
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                                eprintln!("{e}");
                            }
                        }
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(a.seconds)).await;
        stop.store(true, Ordering::Relaxed);
        for l in loops {
            let _ = l.await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let cpu = cpu_seconds(server.pid()) - cpu0;
        let n = done.load(Ordering::Relaxed);
        println!(
            "| {name} | {:.0} | {:.0} µs | {} | {} |",
            n as f64 / elapsed,
            cpu * 1e6 / n.max(1) as f64,
            RESUMED.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed)
        );
    }
}

fn main() {
    let a = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let pki = support::tls::Pki::new("wire");
    if a.handshakes {
        rt.block_on(handshakes(&pki, &a));
        return;
    }
    println!(
        "clients {}, devices {}, {} per client ({}), {} logs/s, window {} s",
        a.clients,
        a.devices,
        a.per_client,
        if a.distinct {
            "each a set of its own"
        } else {
            "in groups shared by a tenth of the clients"
        },
        a.rate,
        a.seconds
    );
    let mut results: Vec<Vec<Figures>> = a.runs.iter().map(|_| Vec::new()).collect();
    for round in 0..a.repeat {
        for (i, run) in a.runs.iter().enumerate() {
            let f = rt.block_on(measure(*run, &pki, &a));
            println!(
                "round {}: {:<24} {:>7.1} bytes/log  {:>6.2} µs CPU/delivery  delivered {}/{} dropped {}{}",
                round + 1,
                run.name(),
                f.bytes_per_log,
                f.cpu_us,
                f.delivered,
                f.expected,
                f.dropped,
                f.shared
                    .map(|(c, s)| format!("  compressed {c}, shared {s}"))
                    .unwrap_or_default()
            );
            results[i].push(f);
        }
    }
    // The medians, with ratios to the first run (bytes) and to `log:batch` (CPU).
    let med = |i: usize, f: fn(&Figures) -> f64| {
        median(results[i].iter().map(f).collect()).unwrap_or(f64::NAN)
    };
    let batch = a.runs.iter().position(|r| r.mode == Mode::Batch && !r.tls);
    println!();
    println!(
        "| run | bytes per delivered log | vs log:batch | server CPU per delivery | vs log:batch |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (i, run) in a.runs.iter().enumerate() {
        let bytes = med(i, |f| f.bytes_per_log);
        let cpu = med(i, |f| f.cpu_us);
        let ratio = |x: f64, of: fn(&Figures) -> f64| match batch {
            Some(b) => format!("{:.2}×", x / med(b, of)),
            None => "–".into(),
        };
        println!(
            "| {} | {bytes:.1} | {} | {cpu:.2} µs | {} |",
            run.name(),
            ratio(bytes, |f| f.bytes_per_log),
            ratio(cpu, |f| f.cpu_us)
        );
    }
}
