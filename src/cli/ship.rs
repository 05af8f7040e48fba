//! `logstream ship`: send the lines of a file (followed like `tail -F`, across rotation) or
//! of stdin to a server, as one device's logs.
//!
//! Lines are gathered into batches (at most `batch_lines` lines or `BATCH_BYTES`, or what
//! came within `batch_ms`), each POSTed to `/api/logs` with an `Idempotency-Key` and an id
//! per line assigned here. A batch that fails with 503 or a network error is sent again,
//! unchanged, with back-off, until it lands: the server publishes a key once, so a retry
//! after a lost answer does not duplicate lines, and nothing read is dropped. Reading waits
//! while a batch is being retried (a bounded queue between the two), so memory stays flat.
//!
//! A followed file keeps its place in a checkpoint (`cli::checkpoint`, in `data_dir`):
//! running `ship` again resumes after the last line that landed, and says so at start.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, BufReader};
use tokio::sync::mpsc;

use super::checkpoint::{Checkpoint, CheckpointFile, Identity, Pending};

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
    /// Where checkpoints of followed files are kept (`<data_dir>/ship/`); `None`: none.
    pub data_dir: Option<PathBuf>,
    /// Ignore a kept checkpoint: read the file from its start.
    pub from_start: bool,
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
    let (tx, rx) = mpsc::channel::<Line>(4096);
    let stop = tokio_util::sync::CancellationToken::new();
    let mut place = Place::default();
    if let (Input::File(path), Some(data_dir)) = (&opts.input, &opts.data_dir) {
        place = find_place(path, &opts.device, data_dir, opts.from_start);
    }
    let reading = {
        let stop_reading = stop.clone();
        let input = match &opts.input {
            Input::Stdin => None,
            Input::File(p) => Some(p.clone()),
        };
        let start = place.start;
        let rotated = place.rotated.clone();
        tokio::spawn(async move {
            let result = match input {
                None => read_stdin(tx, stop_reading).await,
                Some(path) => {
                    if let Some(old) = rotated
                        && let Err(e) = finish_rotated(old, &tx).await
                    {
                        eprintln!("logstream ship: {e}");
                    }
                    follow(path, start, tx, stop_reading).await
                }
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
    let totals = send(&opts, rx, place).await;
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

/// One line read, and (from a file) where it ends.
struct Line {
    text: String,
    end: Option<(Identity, u64)>,
}

/// Where a followed file is read from, and what is kept about it.
#[derive(Default)]
struct Place {
    /// The file (by identity) and the offset to start at.
    start: Option<(Identity, u64)>,
    checkpoints: Option<CheckpointFile>,
    /// A batch the last run sent without knowing whether it landed.
    pending: Option<Pending>,
    /// The file of the checkpoint, rotated away while ship was not running: read from the
    /// offset to its end first.
    rotated: Option<(PathBuf, Identity, u64)>,
}

/// Read the checkpoint of `path` and say at start where `ship` resumes.
fn find_place(path: &Path, device: &str, data_dir: &Path, from_start: bool) -> Place {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let file = CheckpointFile::new(data_dir, device, &absolute);
    let shown = path.display();
    let kept = match file.load() {
        Ok(kept) => kept,
        Err(why) => {
            eprintln!("logstream ship: {why}; reading {shown} from its start");
            None
        }
    };
    let mut place = Place {
        checkpoints: Some(file.clone()),
        ..Place::default()
    };
    let Some(c) = kept else {
        eprintln!(
            "logstream ship: reading {shown} from its start; its place is kept in {}",
            file.path().display()
        );
        return place;
    };
    if from_start {
        eprintln!("logstream ship: --from-start: reading {shown} from its start");
        return place;
    }
    let current = std::fs::metadata(path).ok();
    let same_file = current
        .as_ref()
        .is_some_and(|m| identity(m) == c.identity());
    if same_file && current.as_ref().is_some_and(|m| m.len() < c.offset) {
        eprintln!(
            "logstream ship: {shown} is shorter than its checkpoint ({} < {} bytes): truncated; reading it from its start",
            current.map_or(0, |m| m.len()),
            c.offset
        );
        return place;
    }
    if same_file && c.before.is_some() && bytes_before(path, c.identity(), c.offset) != c.before {
        eprintln!(
            "logstream ship: {shown} changed before byte {} since its checkpoint (truncated and written again); reading it from its start",
            c.offset
        );
        return place;
    }
    if same_file {
        eprintln!(
            "logstream ship: resuming {shown} at byte {} (checkpoint {})",
            c.offset,
            file.path().display()
        );
        // A batch in flight is sent again only if the file still holds exactly its lines'
        // range after the checkpoint.
        let len = current.map_or(0, |m| m.len());
        place.start = Some((c.identity(), c.offset));
        place.pending = c.pending.filter(|p| p.until >= c.offset && p.until <= len);
        return place;
    }
    // Rotated while ship was not running: the file of the checkpoint may still be beside
    // it (`app.log.1`); its rest goes first.
    match rotated_file(path, c.identity()) {
        Some((old, len)) if len >= c.offset => {
            eprintln!(
                "logstream ship: {shown} was rotated; finishing {} from byte {} first",
                old.display(),
                c.offset
            );
            let len = len.max(c.offset);
            place.rotated = Some((old, c.identity(), c.offset));
            place.pending = c.pending.filter(|p| p.until >= c.offset && p.until <= len);
        }
        _ => eprintln!(
            "logstream ship: {shown} is not the file of its checkpoint (rotated or replaced, the old one not found beside it); reading it from its start"
        ),
    }
    place
}

/// The file beside `path` (same directory) whose identity is `wanted`, and its length.
fn rotated_file(path: &Path, wanted: Identity) -> Option<(PathBuf, u64)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find_map(|e| {
            let meta = std::fs::symlink_metadata(e.path()).ok()?;
            (meta.is_file() && identity(&meta) == wanted).then(|| (e.path(), meta.len()))
        })
}

/// A fingerprint of the up to 64 bytes before `offset` in `path`, if it is still the file
/// `wanted`: a file truncated and written again past the checkpoint tells itself by them.
fn bytes_before(path: &Path, wanted: Identity, offset: u64) -> Option<u64> {
    use std::io::{Read, Seek};
    let mut file = std::fs::File::open(path).ok()?;
    if identity(&file.metadata().ok()?) != wanted {
        return None;
    }
    let from = offset.saturating_sub(64);
    file.seek(std::io::SeekFrom::Start(from)).ok()?;
    let mut bytes = vec![0; (offset - from) as usize];
    file.read_exact(&mut bytes).ok()?;
    Some(super::checkpoint::fingerprint(&bytes))
}

async fn read_stdin(
    tx: mpsc::Sender<Line>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), String> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            l = lines.next_line() => l.map_err(|e| format!("reading stdin: {e}"))?,
        };
        match line {
            Some(text) => {
                if tx.send(Line { text, end: None }).await.is_err() {
                    return Ok(());
                }
            }
            None => return Ok(()),
        }
    }
}

/// The file's identity, to notice it was replaced (rotated).
fn identity(meta: &std::fs::Metadata) -> Identity {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// Send the lines of a rotated file from `offset` to its end.
async fn finish_rotated(
    (path, id, offset): (PathBuf, Identity, u64),
    tx: &mpsc::Sender<Line>,
) -> Result<(), String> {
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(|e| format!("seeking in {}: {e}", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut at = offset;
    let mut line = LineBuffer::default();
    loop {
        let chunk = read_piece(&mut reader, &path).await?;
        if chunk.is_empty() {
            // A last line without its newline goes out as it is.
            if let Some(text) = line.flush() {
                let _ = tx
                    .send(Line {
                        text,
                        end: Some((id, at)),
                    })
                    .await;
            }
            return Ok(());
        }
        at += chunk.len() as u64;
        if let Some(text) = line.push(&chunk)
            && tx
                .send(Line {
                    text,
                    end: Some((id, at)),
                })
                .await
                .is_err()
        {
            return Ok(());
        }
    }
}

/// At most a line's worth of `reader` (up to and with its newline), so a file without
/// newlines is read in pieces; empty at the end.
async fn read_piece(
    reader: &mut BufReader<tokio::fs::File>,
    path: &Path,
) -> Result<Vec<u8>, String> {
    let mut chunk = Vec::new();
    reader
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut chunk)
        .await
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(chunk)
}

/// Pieces read become lines. A line longer than `MAX_LINE` is cut there (the rest up to its
/// newline is skipped): a file without newlines cannot grow this buffer without bound.
#[derive(Default)]
struct LineBuffer {
    pending: Vec<u8>,
}

impl LineBuffer {
    /// Add a piece; a line when it completes one.
    fn push(&mut self, chunk: &[u8]) -> Option<String> {
        let room = (MAX_LINE + 1).saturating_sub(self.pending.len());
        let keep = chunk.len().min(room);
        self.pending.extend_from_slice(&chunk[..keep]);
        if keep < chunk.len() && chunk.ends_with(b"\n") {
            self.pending.push(b'\n');
        }
        if !self.pending.ends_with(b"\n") {
            return None;
        }
        let line = String::from_utf8_lossy(&self.pending)
            .trim_end_matches(['\n', '\r'])
            .to_owned();
        self.pending.clear();
        Some(line)
    }

    /// What is left (a last line without its newline), if anything.
    fn flush(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let line = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        Some(line)
    }

    fn clear(&mut self) {
        self.pending.clear();
    }
}

/// Read `path` from its start (or from `start`'s offset, if it is still that file) and keep
/// reading what is appended; when the file is replaced (rotation) finish the old one and
/// continue with the new from its start; when it is truncated, start over.
async fn follow(
    path: PathBuf,
    mut start: Option<(Identity, u64)>,
    tx: mpsc::Sender<Line>,
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
        let mut pending = LineBuffer::default();
        let mut offset: u64 = 0;
        if let Some((id, at)) = start.take()
            && id == opened
        {
            reader
                .seek(std::io::SeekFrom::Start(at))
                .await
                .map_err(|e| format!("seeking in {}: {e}", path.display()))?;
            offset = at;
        }
        loop {
            let chunk = read_piece(&mut reader, &path).await?;
            if !chunk.is_empty() {
                offset += chunk.len() as u64;
                if let Some(text) = pending.push(&chunk) {
                    let end = Some((opened, offset));
                    if tx.send(Line { text, end }).await.is_err() {
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
                    if let Some(text) = pending.flush() {
                        let _ = tx
                            .send(Line {
                                text,
                                end: Some((opened, offset)),
                            })
                            .await;
                    }
                    // Drain anything appended to the old file meanwhile.
                    let mut rest = Vec::new();
                    let _ = reader.read_to_end(&mut rest).await;
                    for line in rest.split_inclusive(|b| *b == b'\n') {
                        offset += line.len() as u64;
                        let text = String::from_utf8_lossy(line)
                            .trim_end_matches(['\n', '\r'])
                            .to_owned();
                        let _ = tx
                            .send(Line {
                                text,
                                end: Some((opened, offset)),
                            })
                            .await;
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

/// Gather lines into batches and send each until it lands; a followed file's checkpoint
/// names each batch before it is sent and moves past it once it landed.
async fn send(
    opts: &ShipOptions,
    mut rx: mpsc::Receiver<Line>,
    place: Place,
) -> Result<Totals, ShipError> {
    let tls = super::tls::client_config(opts.ca_file.as_deref()).map_err(ShipError::Fatal)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .use_preconfigured_tls(rustls::ClientConfig::clone(&tls))
        .build()
        .map_err(|e| ShipError::Fatal(e.to_string()))?;
    let url = format!("{}/api/logs", opts.server.trim_end_matches('/'));
    let run = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let progress = std::io::stderr().is_terminal();
    // Where the lines read first start: the checkpoint's place in the file, or in the
    // rotated file finished first.
    let landed = place
        .start
        .or_else(|| place.rotated.as_ref().map(|(_, id, at)| (*id, *at)));
    let mut keeper = Keeper::new(opts, place.checkpoints, landed);
    // The last run's batch in flight goes first, whole, under its key.
    let mut resend = place.pending;
    let mut totals = Totals::default();
    let mut line_no: u64 = 0;
    let mut open = true;
    // A line of another file than its batch's (after a rotation) starts the next batch.
    let mut carried: Option<Line> = None;
    while open {
        // The first line of a batch waits as long as it takes; the rest up to batch_ms.
        let first = match carried.take() {
            Some(line) => line,
            None => match rx.recv().await {
                Some(line) => line,
                None => break,
            },
        };
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let mut end: Option<(Identity, u64)> = None;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(opts.batch_ms);
        let mut next = Some(first);
        loop {
            if let Some(line) = next.take() {
                if let (Some((batch_file, _)), Some((line_file, _))) = (end, line.end)
                    && batch_file != line_file
                {
                    carried = Some(line);
                    break;
                }
                line_no += 1;
                end = line.end.or(end);
                if !line.text.trim().is_empty() {
                    let entry = entry(opts, &run, line_no, line.text);
                    bytes += entry.to_string().len();
                    batch.push(entry);
                }
            }
            if let Some(p) = &resend {
                // Exactly the lines the last run sent: same key, same lines.
                if end.is_some_and(|(_, at)| at >= p.until) {
                    break;
                }
                match rx.recv().await {
                    Some(line) => next = Some(line),
                    None => {
                        open = false;
                        break;
                    }
                }
                continue;
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
        let key = match resend.take() {
            Some(p) if end.is_some_and(|(_, at)| at == p.until) => p.key,
            Some(_) => {
                // The file no longer holds the same lines there: under the old key the
                // server would call them a duplicate and drop them.
                eprintln!(
                    "logstream ship: the lines of the batch in flight changed; sending them under a new key"
                );
                format!("{run}-{}", totals.batches + 1)
            }
            None => format!("{run}-{}", totals.batches + 1),
        };
        if batch.is_empty() {
            // Blank lines only: read, nothing to send.
            keeper.landed(end);
            continue;
        }
        keeper.sending(end, &key);
        totals.retries += post_until_landed(&http, &url, opts, &key, &batch).await?;
        keeper.landed(end);
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

/// Keeps a followed file's checkpoint up to date (a failed write is said once, and shipping
/// goes on: the checkpoint only saves work on the next run).
struct Keeper {
    file: Option<CheckpointFile>,
    path: PathBuf,
    device: String,
    /// The file and offset up to which lines landed.
    landed: Option<(Identity, u64)>,
    warned: bool,
}

impl Keeper {
    fn new(
        opts: &ShipOptions,
        file: Option<CheckpointFile>,
        landed: Option<(Identity, u64)>,
    ) -> Keeper {
        let path = match &opts.input {
            Input::File(p) => std::path::absolute(p).unwrap_or_else(|_| p.clone()),
            Input::Stdin => PathBuf::new(),
        };
        Keeper {
            file,
            path,
            device: opts.device.clone(),
            landed,
            warned: false,
        }
    }

    /// A batch of lines ending at `end` is about to be sent under `key`.
    fn sending(&mut self, end: Option<(Identity, u64)>, key: &str) {
        let Some((id, until)) = end else { return };
        // It starts where the last landed batch of the same file ended (a new file, or one
        // truncated since: at 0).
        let from = match self.landed {
            Some((landed_id, at)) if landed_id == id && at <= until => at,
            _ => 0,
        };
        let pending = Pending {
            until,
            key: key.to_owned(),
        };
        self.save(id, from, Some(pending));
    }

    /// The lines up to `end` landed.
    fn landed(&mut self, end: Option<(Identity, u64)>) {
        let Some((id, at)) = end else { return };
        self.landed = Some((id, at));
        self.save(id, at, None);
    }

    fn save(&mut self, (dev, inode): Identity, offset: u64, pending: Option<Pending>) {
        let Some(file) = &self.file else { return };
        let checkpoint = Checkpoint {
            path: self.path.clone(),
            device: self.device.clone(),
            dev,
            inode,
            offset,
            before: bytes_before(&self.path, (dev, inode), offset),
            pending,
        };
        if let Err(why) = file.save(&checkpoint)
            && !self.warned
        {
            eprintln!("\nlogstream ship: {why}; the next run may send lines again");
            self.warned = true;
        }
    }
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
        .and_then(|m| crate::log_entry::Level::parse_alias(m.as_str()))
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
            data_dir: None,
            from_start: false,
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
