//! Test harness: the real `logstream` binary on an ephemeral port, real HTTP, and a real
//! Socket.IO client (`rust_socketio`). Nothing is mocked.

#![allow(dead_code)]

pub mod client;
pub mod raw;
pub mod redis;
pub mod tls;
pub mod tool;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

pub use client::TestClient;

pub const SECRET: &str = "test-secret-0123456789abcdef";
pub const API_KEY: &str = "test-api-key";
pub const ADMIN_KEY: &str = "test-admin-key";

/// A running server process; killed on drop.
pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub stdout_lines: Vec<String>,
    /// The server's log, with [`ServerBuilder::capture_stderr`].
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    http: reqwest::Client,
}

pub struct ServerBuilder {
    sets: Vec<(String, String)>,
    env: Vec<(String, String)>,
    configured_keys: bool,
    capture_stderr: bool,
    args: Option<Vec<String>>,
    /// Run this instead of the binary (which it is given to run, in `args`).
    program: Option<String>,
    cwd: Option<std::path::PathBuf>,
    /// A CA the harness's HTTP client trusts (a server with TLS).
    ca: Option<Vec<u8>>,
}

impl ServerBuilder {
    /// `--set key=value`.
    pub fn set(mut self, key: &str, value: impl ToString) -> Self {
        self.sets.push((key.into(), value.to_string()));
        self
    }

    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.into(), value.to_string()));
        self
    }

    /// Start with no keys configured at all (development mode).
    pub fn unconfigured(mut self) -> Self {
        self.configured_keys = false;
        self
    }

    /// Keep the server's stderr (its log) in [`Server::stderr`] instead of passing it on.
    pub fn capture_stderr(mut self) -> Self {
        self.capture_stderr = true;
        self
    }

    /// Command-line arguments instead of `serve --host 127.0.0.1 --port 0`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args = Some(args.iter().map(|a| a.to_string()).collect());
        self
    }

    /// Read the configuration file `path` (and SIGHUP reads it again), logging at info to a
    /// captured stderr.
    pub fn config_file(self, path: &std::path::Path) -> Self {
        self.args(&[
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--config",
            path.to_str().unwrap(),
        ])
        .env("RUST_LOG", "info")
        .capture_stderr()
    }

    /// More command-line arguments after those of [`ServerBuilder::args`].
    pub fn args_more(mut self, more: &[&str]) -> Self {
        self.args
            .get_or_insert_with(Vec::new)
            .extend(more.iter().map(|a| a.to_string()));
        self
    }

    /// Trust this CA (PEM) in the harness's own HTTP client, for a server with TLS.
    pub fn trust_ca(mut self, ca: &std::path::Path) -> Self {
        self.ca = Some(std::fs::read(ca).expect("the CA file"));
        self
    }

    /// Run `program` with [`ServerBuilder::args`] instead of the binary itself (a wrapper
    /// such as `unshare`, which is handed the binary's path among its arguments).
    pub fn program(mut self, program: &str) -> Self {
        self.program = Some(program.into());
        self
    }

    /// Working directory of the server process.
    pub fn cwd(mut self, dir: &std::path::Path) -> Self {
        self.cwd = Some(dir.to_owned());
        self
    }

    pub fn start(self) -> Server {
        warm_compile_cache();
        let mut cmd = Command::new(
            self.program
                .as_deref()
                .unwrap_or(env!("CARGO_BIN_EXE_logstream")),
        );
        match &self.args {
            Some(args) => cmd.args(args),
            None => cmd.args(["serve", "--host", "127.0.0.1", "--port", "0"]),
        };
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        for (k, v) in &self.sets {
            cmd.arg("--set").arg(format!("{k}={v}"));
        }
        // A clean environment for config: no stray LOGSTREAM_* from the caller.
        for (k, _) in std::env::vars() {
            if k.starts_with("LOGSTREAM_") {
                cmd.env_remove(k);
            }
        }
        if self.configured_keys {
            cmd.env("LOGSTREAM_JWT_SECRET", SECRET)
                .env("LOGSTREAM_API_KEY", API_KEY)
                .env("LOGSTREAM_ADMIN_KEY", ADMIN_KEY);
        }
        cmd.env("LOGSTREAM_PLUGINS_DIR", plugins_dir());
        cmd.env(
            "RUST_LOG",
            std::env::var("TEST_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
        );
        // Development keys (and anything else kept across restarts) stay out of $HOME.
        cmd.env("LOGSTREAM_DATA_DIR", scratch_dir("data"));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped()).stderr(if self.capture_stderr {
            Stdio::piped()
        } else {
            Stdio::inherit()
        });
        let mut child = cmd.spawn().expect("spawn logstream");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        if let Some(pipe) = child.stderr.take() {
            let lines = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    // Keep draining so the server never blocks on a full pipe.
                    continue;
                }
            }
        });
        let mut lines = Vec::new();
        let url = loop {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(120)) else {
                // Do not leave it running (compiling, say) after the test gives up.
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not start within 120 s");
            };
            if let Some(addr) = line.strip_prefix("logstream listening on ") {
                break addr.trim().to_owned();
            }
            lines.push(line);
        };
        Server {
            child: Some(child),
            url,
            stdout_lines: lines,
            stderr,
            http: match &self.ca {
                None => reqwest::Client::new(),
                Some(pem) => reqwest::Client::builder()
                    .add_root_certificate(reqwest::Certificate::from_pem(pem).expect("a PEM CA"))
                    .build()
                    .expect("http client"),
            },
        }
    }
}

/// Compile the shipped plugins into the compile cache once per test binary, before the first
/// server starts: otherwise every server of a parallel run on a fresh machine compiles them
/// at once, and two cores take minutes.
fn warm_compile_cache() {
    static WARM: std::sync::Once = std::sync::Once::new();
    WARM.call_once(|| {
        let built = std::path::PathBuf::from(env!("LOGSTREAM_BUILT_PLUGINS"));
        for name in ["default", "regex", "redact"] {
            let _ = Command::new(env!("CARGO_BIN_EXE_logstream"))
                .args(["plugin", "check"])
                .arg(built.join(format!("{name}.wasm")))
                .env("RUST_LOG", "error")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    });
}

/// The directory holding the plugins built from this repo (see `build.rs`).
pub fn plugins_dir() -> String {
    std::env::var("LOGSTREAM_TEST_PLUGINS_DIR")
        .unwrap_or_else(|_| format!("{}/plugins", env!("CARGO_MANIFEST_DIR")))
}

impl Server {
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            sets: Vec::new(),
            env: Vec::new(),
            configured_keys: true,
            capture_stderr: false,
            args: None,
            program: None,
            cwd: None,
            ca: None,
        }
    }

    pub fn start() -> Server {
        Server::builder().start()
    }

    pub fn token(sub: &str) -> String {
        token_with(sub, &[])
    }

    pub async fn client(&self, sub: &str) -> TestClient {
        TestClient::connect(&self.url, Some(&Server::token(sub)))
            .await
            .expect("client connects")
    }

    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body.to_owned());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("http request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("http request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Wait until the server's Redis bus is connected (health says so).
    pub async fn wait_for_redis(&self) {
        eventually(Duration::from_secs(15), "connected to redis", || async {
            let h = self.get("/api/ws/health", &[]).await.1;
            if h["data"]["bus"]["state"] == "connected" {
                Ok(())
            } else {
                Err(h.to_string())
            }
        })
        .await;
    }

    /// GET `path`, as text.
    pub async fn get_text(&self, path: &str, headers: &[(&str, &str)]) -> String {
        let mut req = self.http.get(format!("{}{path}", self.url));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("http request");
        resp.text().await.unwrap_or_default()
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, headers).await
    }

    /// `GET /api/ws/stats` as the admin: its `data`.
    pub async fn admin_stats(&self) -> Value {
        let (status, body) = self.get("/api/ws/stats", &[("x-api-key", ADMIN_KEY)]).await;
        assert_eq!(status, 200, "stats: {body}");
        body["data"].clone()
    }

    pub async fn delete(&self, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        self.send(reqwest::Method::DELETE, path, headers).await
    }

    /// POST logs with the API key; asserts 202.
    pub async fn ingest(&self, logs: Value) {
        let (status, body) = self
            .post("/api/logs", &[("x-api-key", API_KEY)], &logs.to_string())
            .await;
        assert_eq!(status, 202, "ingest refused: {body}");
    }

    /// The first word after `label` in what the server printed before listening.
    pub fn printed(&self, label: &str) -> String {
        self.stdout_lines
            .iter()
            .find_map(|l| {
                l.split_once(label)
                    .map(|(_, v)| v.split_whitespace().next().unwrap_or_default().to_owned())
            })
            .unwrap_or_else(|| panic!("no {label} in {:?}", self.stdout_lines))
    }

    /// The log lines captured so far (see [`ServerBuilder::capture_stderr`]).
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL: the process dies at once, as in a crash.
    /// The server's resident and peak resident memory, in bytes (from /proc).
    pub fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kb| kb * 1024)
                .unwrap_or_else(|| panic!("{name} in /proc status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Send a signal (`-HUP`, `-STOP`, …) with `kill`.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill {signal}");
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Send SIGTERM and wait for the exit status (at most `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A fresh directory under the system's temp dir, unique to this process and call.
pub fn scratch_dir(what: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "logstream-{what}-{}-{n}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Poll `probe` every 50 ms until it returns `Some`, for at most `within`; panics naming
/// `what` (and the last value seen, through the probe's own `Err`) otherwise.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(last) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: not reached within {within:?}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A token for `sub` with extra claims, signed with the test secret.
pub fn token_with(sub: &str, claims: &[(&str, Value)]) -> String {
    let mut config = logstream::config::Config::default();
    config.auth.jwt_secret = Some(SECRET.into());
    let (keys, _) = logstream::auth::Keys::from_config(&config).expect("keys");
    let claims: HashMap<String, Value> = claims
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    keys.mint(sub, Duration::from_secs(3600), &claims)
        .expect("mint")
}

/// A log entry for `device` with `level` and `message`.
pub fn log(device: &str, level: &str, message: &str) -> Value {
    serde_json::json!({ "deviceId": device, "level": level, "message": message })
}

/// POST logs for `device` whose messages are "0", "1", ... `total`-1, ten per request with
/// `pause` between requests, from a spawned task (each request must be accepted).
/// POST `logs` to `url` with the API key; the server must answer 202.
pub async fn post_accepted(http: &reqwest::Client, url: &str, logs: &[Value]) {
    let r = http
        .post(format!("{url}/api/logs"))
        .header("x-api-key", API_KEY)
        .json(logs)
        .send()
        .await
        .expect("post logs");
    assert_eq!(r.status(), 202);
}

pub fn post_numbered(
    url: String,
    device: &'static str,
    total: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        for chunk in 0..total.div_ceil(10) {
            let logs: Vec<Value> = (chunk * 10..(chunk * 10 + 10).min(total))
                .map(|i| log(device, "INFO", &i.to_string()))
                .collect();
            post_accepted(&http, &url, &logs).await;
            tokio::time::sleep(pause).await;
        }
    })
}
