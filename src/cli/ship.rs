//! `logstream ship`: send the lines of a file (followed like `tail -F`, across rotation) or
//! of stdin to a server, as one device's logs.
//!
//! Lines are gathered into batches (at most `batch_lines` lines or `BATCH_BYTES`, or what
//! came within `batch_ms`), each POSTed to `/api/logs` with an `Idempotency-Key` and an id
//! per line assigned here. A batch that fails with 503 or a network error is sent again,
//! unchanged, with back-off, until it lands: the server publishes a key once, so a retry
//! after a lost answer does not duplicate lines, and nothing read is dropped. Reading waits
//! while a batch is being retried (a bounded queue between the two), so memory stays flat.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, BufReader};
use tokio::sync::mpsc;

/// Longest line shipped; longer ones are cut (and say so).
const MAX_LINE: usize = 64 << 10;
/// Largest batch body, well under the server's default `max_body_bytes`.
const BATCH_BYTES: usize = 512 << 10;
/// How often a followed file is checked for growth or rotation.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

pub enum Input {
    Stdin,
    /// Follow this file.
    File(PathBuf),
}

pub struct ShipOptions {
    pub server: String,
    pub api_key: String,
    pub device: String,
    /// The level is this regex's first group (or whole match) in the line; INFO otherwise.
    pub level_from: Option<Regex>,
    pub tags: Vec<String>,
    pub input: Input,
    pub batch_lines: usize,
    pub batch_ms: u64,
    /// CAs to trust for an `https://` server instead of the public ones.
    pub ca_file: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("{0}")]
    Auth(String),
    /// The server's TLS could not be trusted (exit code of its own).
    #[error("{0}")]
    Tls(String),
    #[error("{0}")]
    Fatal(String),
}

/// Ship until the input ends (stdin) or `stop` resolves (Ctrl-C): what was read is sent
/// before returning.
pub async fn run(
    opts: ShipOptions,
    stop_signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Totals, ShipError> {
    let (tx, rx) = mpsc::channel::<String>(4096);
    let stop = tokio_util::sync::CancellationToken::new();
    let reading = {
        let stop_reading = stop.clone();
        let input = match &opts.input {
            Input::Stdin => None,
            Input::File(p) => Some(p.clone()),
        };
        tokio::spawn(async move {
            let result = match input {
                None => read_stdin(tx, stop_reading).await,
                Some(path) => follow(path, tx, stop_reading).await,
            };
            if let Err(e) = result {
                eprintln!("logstream ship: {e}");
            }
        })
    };
    let cancel = stop.clone();
    tokio::spawn(async move {
        stop_signal.await;
        cancel.cancel();
    });
    let totals = send(&opts, rx).await;
    stop.cancel();
    let _ = reading.await;
    totals
}

/// How much went out.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub lines: u64,
    pub batches: u64,
    pub retries: u64,
}

async fn read_stdin(
    tx: mpsc::Sender<String>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), String> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            l = lines.next_line() => l.map_err(|e| format!("reading stdin: {e}"))?,
        };
        match line {
            Some(l) => {
                if tx.send(l).await.is_err() {
                    return Ok(());
                }
            }
            None => return Ok(()),
        }
    }
}

/// The file's identity, to notice it was replaced (rotated).
fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// Read `path` from its start and keep reading what is appended; when the file is replaced
/// (rotation) finish the old one and continue with the new from its start; when it is
/// truncated, start over.
async fn follow(
    path: PathBuf,
    tx: mpsc::Sender<String>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), String> {
    let mut warned = false;
    'open: loop {
        let file = loop {
            match tokio::fs::File::open(&path).await {
                Ok(f) => break f,
                Err(e) => {
                    if !warned {
                        eprintln!("logstream ship: waiting for {}: {e}", path.display());
                        warned = true;
                    }
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        () = tokio::time::sleep(FOLLOW_POLL) => {}
                    }
                }
            }
        };
        warned = false;
        let opened = identity(&file.metadata().await.map_err(|e| e.to_string())?);
        let mut reader = BufReader::new(file);
        let mut pending = Vec::new();
        let mut offset: u64 = 0;
        loop {
            let mut chunk = Vec::new();
            // At most a line's worth per read, so a file without newlines is read in pieces.
            let n = (&mut reader)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut chunk)
                .await
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            if n > 0 {
                offset += n as u64;
                // A line longer than MAX_LINE is cut there (the rest up to its newline is
                // skipped): a file without newlines cannot grow this buffer without bound.
                let room = (MAX_LINE + 1).saturating_sub(pending.len());
                let keep = chunk.len().min(room);
                pending.extend_from_slice(&chunk[..keep]);
                if keep < chunk.len() && chunk.ends_with(b"\n") {
                    pending.push(b'\n');
                }
                if pending.ends_with(b"\n") {
                    let line = String::from_utf8_lossy(&pending)
                        .trim_end_matches(['\n', '\r'])
                        .to_owned();
                    pending.clear();
                    if tx.send(line).await.is_err() {
                        return Ok(());
                    }
                }
                continue;
            }
            // At the end: wait for more, a rotation or a truncation.
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(FOLLOW_POLL) => {}
            }
            match tokio::fs::metadata(&path).await {
                Ok(meta) if identity(&meta) != opened => {
                    // Rotated: what the old file still had was read above (it reached EOF);
                    // a last partial line goes out as it is.
                    if !pending.is_empty() {
                        let line = String::from_utf8_lossy(&pending).into_owned();
                        pending.clear();
                        let _ = tx.send(line).await;
                    }
                    // Drain anything appended to the old file meanwhile.
                    let mut rest = Vec::new();
                    let _ = reader.read_to_end(&mut rest).await;
                    for line in String::from_utf8_lossy(&rest).lines() {
                        let _ = tx.send(line.to_owned()).await;
                    }
                    continue 'open;
                }
                Ok(meta) if meta.len() < offset => {
                    eprintln!(
                        "logstream ship: {} was truncated; reading it from the start",
                        path.display()
                    );
                    reader
                        .seek(std::io::SeekFrom::Start(0))
                        .await
                        .map_err(|e| e.to_string())?;
                    offset = 0;
                    pending.clear();
                }
                _ => {}
            }
        }
    }
}

/// Gather lines into batches and send each until it lands.
async fn send(opts: &ShipOptions, mut rx: mpsc::Receiver<String>) -> Result<Totals, ShipError> {
    let tls = super::tls::client_config(opts.ca_file.as_deref()).map_err(ShipError::Fatal)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .use_preconfigured_tls(rustls::ClientConfig::clone(&tls))
        .build()
        .map_err(|e| ShipError::Fatal(e.to_string()))?;
    let url = format!("{}/api/logs", opts.server.trim_end_matches('/'));
    let run = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let progress = std::io::stderr().is_terminal();
    let mut totals = Totals::default();
    let mut line_no: u64 = 0;
    let mut open = true;
    while open {
        // The first line of a batch waits as long as it takes; the rest up to batch_ms.
        let Some(first) = rx.recv().await else {
            break;
        };
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(opts.batch_ms);
        let mut next = Some(first);
        loop {
            if let Some(line) = next.take() {
                line_no += 1;
                if !line.trim().is_empty() {
                    let entry = entry(opts, &run, line_no, line);
                    bytes += entry.to_string().len();
                    batch.push(entry);
                }
            }
            if batch.len() >= opts.batch_lines || bytes >= BATCH_BYTES {
                break;
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(line)) => next = Some(line),
                Ok(None) => {
                    open = false;
                    break;
                }
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let key = format!("{run}-{}", totals.batches + 1);
        totals.retries += post_until_landed(&http, &url, opts, &key, &batch).await?;
        totals.lines += batch.len() as u64;
        totals.batches += 1;
        if progress {
            eprint!(
                "\rlogstream ship: {} lines in {} batches{}",
                totals.lines,
                totals.batches,
                if totals.retries > 0 {
                    format!(" ({} retries)", totals.retries)
                } else {
                    String::new()
                }
            );
        }
    }
    if progress && totals.batches > 0 {
        eprintln!();
    }
    Ok(totals)
}

/// One line as a log entry.
fn entry(opts: &ShipOptions, run: &str, line_no: u64, mut line: String) -> Value {
    if line.len() > MAX_LINE {
        let mut cut = MAX_LINE;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push_str(" …[cut]");
    }
    let level = opts
        .level_from
        .as_ref()
        .and_then(|re| re.captures(&line))
        .and_then(|c| c.get(1).or_else(|| c.get(0)))
        .and_then(|m| crate::log_entry::Level::parse(m.as_str()))
        .map_or("INFO", crate::log_entry::Level::as_str);
    let mut e = json!({
        "id": format!("{run}-{line_no}"),
        "deviceId": opts.device,
        "level": level,
        "message": line,
    });
    if !opts.tags.is_empty() {
        e["tags"] = json!(opts.tags);
    }
    e
}

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// POST `batch` until the server takes it; returns how many retries it took.
async fn post_until_landed(
    http: &reqwest::Client,
    url: &str,
    opts: &ShipOptions,
    key: &str,
    batch: &[Value],
) -> Result<u64, ShipError> {
    let body = serde_json::to_vec(batch).map_err(|e| ShipError::Fatal(e.to_string()))?;
    let mut backoff = BACKOFF_MIN;
    let mut retries = 0;
    loop {
        let sent = http
            .post(url)
            .header("content-type", "application/json")
            .header("x-api-key", &opts.api_key)
            .header("idempotency-key", key)
            .body(body.clone())
            .send()
            .await;
        let why = match sent {
            Ok(r) if r.status().is_success() => return Ok(retries),
            Ok(r) if r.status().as_u16() == 401 || r.status().as_u16() == 403 => {
                let text = r.text().await.unwrap_or_default();
                return Err(ShipError::Auth(format!(
                    "the server refused the key: {text}"
                )));
            }
            Ok(r) if matches!(r.status().as_u16(), 503 | 429 | 409) => {
                format!("server busy ({})", r.status())
            }
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                return Err(ShipError::Fatal(format!(
                    "the server refused a batch ({status}): {text}"
                )));
            }
            // A certificate that cannot be trusted now will not be on a retry.
            Err(e) => match super::tls::explain(&e) {
                Some(why) => return Err(ShipError::Tls(format!("{}: {why}", opts.server))),
                None => format!("network error: {e}"),
            },
        };
        retries += 1;
        eprintln!(
            "\nlogstream ship: {why}; sending the batch again in {:.1} s",
            backoff.as_secs_f64()
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_entries_with_their_level() {
        let opts = ShipOptions {
            server: String::new(),
            api_key: String::new(),
            device: "web-1".into(),
            level_from: Some(Regex::new(r"\b(DEBUG|INFO|WARN|ERROR)\b").unwrap()),
            tags: vec!["nginx".into()],
            input: Input::Stdin,
            batch_lines: 10,
            batch_ms: 10,
            ca_file: None,
        };
        let e = entry(&opts, "run", 7, "2025 ERROR upstream timed out".into());
        assert_eq!(
            e,
            json!({ "id": "run-7", "deviceId": "web-1", "level": "ERROR", "message": "2025 ERROR upstream timed out", "tags": ["nginx"] })
        );
        assert_eq!(entry(&opts, "run", 8, "plain".into())["level"], "INFO");
        let long = "x".repeat(MAX_LINE + 10);
        assert!(
            entry(&opts, "run", 9, long)["message"]
                .as_str()
                .unwrap()
                .ends_with("[cut]")
        );
    }
}
