//! What the benchmarks share: a server started as an operator would (`serve` on a free port,
//! keys in the environment), tokens for it, what a process costs (`/proc`), and quantiles.
//! Each bench includes it with `mod support;` and uses the parts it needs.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::Message;

/// Throw-away certificates (a CA and server certificates it signs), made with `openssl`: the
/// tests' own PKI helper, read from `tests/common`.
#[path = "../../tests/common/tls.rs"]
pub mod tls;

/// A fresh directory under the system's temp dir (for [`tls::Pki`]).
pub fn scratch_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "logstream-bench-{what}-{}-{}",
        std::process::id(),
        now_us()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The value of `--name N` on the command line, or `default` (also when N is not a number).
pub fn flag(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The keys a bench's server runs with.
pub struct Keys {
    pub secret: &'static str,
    pub api_key: &'static str,
    pub admin_key: &'static str,
}

/// A client token for `sub`, signed with `secret`, valid for an hour.
pub fn token(secret: &str, sub: &str) -> String {
    let mut config = logstream::config::Config::default();
    config.auth.jwt_secret = Some(secret.into());
    let (keys, _) = logstream::auth::Keys::from_config(&config).unwrap();
    keys.mint(sub, Duration::from_secs(3600), &Default::default())
        .unwrap()
}

/// A running server, killed when dropped.
pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:port` or `https://…`, as its banner says.
    pub url: String,
    pub addr: std::net::SocketAddr,
}

impl Server {
    /// `bin serve` on 127.0.0.1 and a free port, with `keys`, the repository's plugins, no
    /// state directory, `env` and `--set sets`; nothing else from the caller's `LOGSTREAM_*`
    /// environment.
    pub fn start(bin: &str, keys: &Keys, env: &[(String, String)], sets: &[String]) -> Server {
        use std::io::{BufRead, BufReader};
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--host", "127.0.0.1", "--port", "0"]);
        for kv in sets {
            cmd.arg("--set").arg(kv);
        }
        for (k, _) in std::env::vars() {
            if k.starts_with("LOGSTREAM_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("LOGSTREAM_JWT_SECRET", keys.secret)
            .env("LOGSTREAM_API_KEY", keys.api_key)
            .env("LOGSTREAM_ADMIN_KEY", keys.admin_key)
            .env("LOGSTREAM_DATA_DIR", "")
            .env(
                "LOGSTREAM_PLUGINS_DIR",
                concat!(env!("CARGO_MANIFEST_DIR"), "/plugins"),
            )
            .env("RUST_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = loop {
            let line = lines.next().expect("logstream exited").unwrap();
            if let Some(u) = line.strip_prefix("logstream listening on ") {
                break u.trim().to_owned();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        let addr = url
            .split_once("://")
            .and_then(|(_, a)| a.parse().ok())
            .unwrap_or_else(|| panic!("listening on {url:?}"));
        Server { child, url, addr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// utime + stime from a `/proc/…/stat` file, in seconds.
pub fn stat_cpu_seconds(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// Resident memory of a process, in KiB (0 once it has exited).
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// The `p` quantile of sorted µs, in ms.
pub fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// The median of the finite figures of `v` (of an even count, the mean of the middle two).
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    let n = v.len();
    (n > 0).then(|| (v[(n - 1) / 2] + v[n / 2]) / 2.0)
}

/// A WebSocket to the engine.io v4 endpoint of the server at `url` (`http://…`).
pub async fn engine_io_socket(
    url: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let ws_url = format!(
        "{}/socket.io/?EIO=4&transport=websocket",
        url.replacen("http", "ws", 1)
    );
    let (ws, _) = tokio_tungstenite::connect_async(ws_url)
        .await
        .expect("ws connect");
    ws
}

/// A raw engine.io v4 WebSocket client of `url` (no socket.io library: the load generator
/// stays light): connects with `token`, answers pings, subscribes with `sub` once
/// connected, and hands every event frame (`42[…]`) to `on_event` until it returns false.
pub async fn raw_subscription(
    url: &str,
    token: &str,
    sub: Value,
    mut on_event: impl FnMut(&str) -> bool,
) {
    let mut ws = engine_io_socket(url).await;
    ws.send(Message::Text(
        format!("40{}", json!({ "token": token })).into(),
    ))
    .await
    .unwrap();
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        if text == "2" {
            let _ = ws.send(Message::Text("3".into())).await;
        } else if text.starts_with("40") {
            let frame = json!(["log:subscribe", sub]);
            ws.send(Message::Text(format!("42{frame}").into()))
                .await
                .unwrap();
        } else if text.starts_with("42") && !on_event(&text) {
            break;
        }
    }
    let _ = ws.close(None).await;
}

/// [`raw_subscription`] with `sub` (`batch: true`), counting the logs of the `log:batch`
/// frames it receives into `got`.
pub async fn subscriber(url: String, token: String, sub: Value, got: Arc<AtomicU64>) {
    raw_subscription(&url, &token, sub, |text| {
        if let Some(rest) = text.strip_prefix("42[\"log:batch\",") {
            let n = serde_json::from_str::<Value>(&rest[..rest.len() - 1])
                .ok()
                .and_then(|v| v.as_array().map(Vec::len))
                .unwrap_or(0);
            got.fetch_add(n as u64, Ordering::Relaxed);
        }
        true
    })
    .await;
}
