//! The embedded history on disk: an append-only log of segment files in `history_dir`, so
//! that a restart or a crash keeps every accepted log and every offset.
//!
//! Why our own files and not a crate: the access pattern is a segmented log (append, read a
//! range by sequence number, delete the oldest file whole), with a checksum per write, a
//! torn-tail cut at start, and group commit under an fsync policy. The append-only log
//! crates we looked at lack the torn-tail scan or the fsync policy, and the embedded stores
//! (redb, fjall) bring a B-tree or an LSM with its own write amplification and threads for
//! one sequence; crc32fast was already built (README: "History on disk").
//!
//! - `EPOCH` names the history (written once), so offsets stay valid across restarts.
//! - `<first sequence number>.seg`: [`segment`]s of [`frame`]s, one frame per publish.
//! - The writer ([`writer`]) is one thread: it appends, syncs as `history_fsync` says, then
//!   hands the logs to the router and answers the publishers.
//! - Readers (replays, on the router thread) read whole frames up to what the writer
//!   published; memory holds a sparse index and totals per segment, not the logs.
//! - At start every segment is scanned: a bad frame at the end of the newest segment (a
//!   crash mid-write) is cut off; in an older one the rest of that segment is unreadable and
//!   a replay across it answers `recovered: false`. Both with a warning.

pub mod frame;
pub mod segment;
pub mod writer;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use segment::{Damage, Segment};

use crate::log_entry::{LogRecord, Position, Stamp};

/// The file that names the history.
const EPOCH_FILE: &str = "EPOCH";
/// The file a running server holds locked, so that a second one on the same directory stops.
const LOCK_FILE: &str = "LOCK";

pub use crate::config::Fsync;

/// A replay asked for logs the disk no longer holds (deleted by retention, or unreadable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

/// A range of sequence numbers that could not be read at start (a damaged older segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hole {
    from: u64,
    to: u64,
}

pub struct DiskLog {
    dir: PathBuf,
    /// Held (locked) for the process's life.
    _lock: std::fs::File,
    epoch: String,
    segments: RwLock<VecDeque<Arc<Segment>>>,
    holes: Mutex<Vec<Hole>>,
    /// Why the last write failed, until one succeeds (`/api/ws/health`).
    failure: Mutex<Option<String>>,
    failed: AtomicBool,
}

/// What a start found on disk.
pub struct Opened {
    pub log: Arc<DiskLog>,
    /// The writer's handle on the newest segment, and the next sequence number.
    pub active: writer::Active,
    /// Idempotency keys of frames written within their lifetime: `(key text, unix ms)`.
    pub keys: Vec<(String, u64)>,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl DiskLog {
    /// Open (or create) the history in `dir`; `keys_since_ms`: frames written after this
    /// give their idempotency keys back.
    pub fn open(dir: &Path, keys_since_ms: u64) -> anyhow::Result<Opened> {
        use anyhow::Context;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("history_dir {}: cannot create it", dir.display()))?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .with_context(|| format!("history_dir {}: cannot write", dir.display()))?;
        if lock.try_lock().is_err() {
            anyhow::bail!(
                "history_dir {} is in use by another logstream process (two servers cannot share one history; give each its own data_dir or history_dir)",
                dir.display()
            );
        }
        let epoch = read_or_create_epoch(dir)?;
        let mut names: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
            .with_context(|| format!("history_dir {}: cannot read it", dir.display()))?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name();
                segment::parse_name(name.to_str()?).map(|seq| (seq, e.path()))
            })
            .collect();
        names.sort();
        let mut segments = VecDeque::new();
        let mut holes = Vec::new();
        let mut keys = Vec::new();
        let last = names.len().saturating_sub(1);
        for (i, (first_seq, path)) in names.iter().enumerate() {
            let (seg, damage) = Segment::open(path, *first_seq, |frame| {
                if !frame.key.is_empty() && frame.unix_ms >= keys_since_ms {
                    keys.push((frame.key.to_owned(), frame.unix_ms));
                }
            })
            .with_context(|| format!("history segment {}: cannot read it", path.display()))?;
            if let Some(Damage { offset, why, bytes }) = damage {
                if i == last {
                    // The newest segment: a write the crash cut short. Cut it off.
                    tracing::warn!(
                        segment = %path.display(), offset, bytes, why = why.as_str(),
                        "history: the end of the newest segment is torn (a crash mid-write?); cutting {bytes} bytes off"
                    );
                    cut(path, offset.max(segment::HEADER as u64), *first_seq)?;
                    let (seg, _) = Segment::open(path, *first_seq, |_| {})?;
                    segments.push_back(Arc::new(seg));
                    continue;
                }
                let next = names.get(i + 1).map_or(u64::MAX, |(s, _)| *s);
                let readable_to = seg.extent().next_seq;
                tracing::warn!(
                    segment = %path.display(), offset, bytes, why = why.as_str(),
                    "history: a damaged segment; logs {readable_to} to {} cannot be read, and replays across them answer recovered: false",
                    next.saturating_sub(1)
                );
                holes.push(Hole {
                    from: readable_to,
                    to: next,
                });
            }
            segments.push_back(Arc::new(seg));
        }
        let active = match segments.back() {
            Some(seg) => writer::Active::reopen(seg.clone())?,
            None => {
                let (seg, file) = Segment::create(dir, 1)?;
                sync_dir(dir)?;
                let seg = Arc::new(seg);
                segments.push_back(seg.clone());
                writer::Active::new(seg, file)
            }
        };
        let log = Arc::new(DiskLog {
            dir: dir.to_owned(),
            _lock: lock,
            epoch,
            segments: RwLock::new(segments),
            holes: Mutex::new(holes),
            failure: Mutex::new(None),
            failed: AtomicBool::new(false),
        });
        Ok(Opened { log, active, keys })
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn segments(&self) -> std::sync::RwLockReadGuard<'_, VecDeque<Arc<Segment>>> {
        self.segments.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The first sequence number still on disk, and one past the last.
    pub fn range(&self) -> (u64, u64) {
        let segs = self.segments();
        let first = segs.front().map_or(1, |s| s.first_seq);
        let next = segs.back().map_or(1, |s| s.totals().0);
        (first, next)
    }

    /// Logs kept, bytes on disk, and when the oldest kept frame was written (Unix ms).
    pub fn totals(&self) -> (u64, u64, Option<u64>) {
        let segs = self.segments();
        let mut logs = 0;
        let mut bytes = 0;
        let mut oldest = None;
        for s in segs.iter() {
            let (_, len, n, oldest_ms, _) = s.totals();
            logs += n;
            bytes += len;
            if n > 0 && oldest.is_none() {
                oldest = Some(oldest_ms);
            }
        }
        (logs, bytes, oldest)
    }

    /// The position of the oldest log kept.
    pub fn oldest(&self) -> Option<Position> {
        let (first, next) = self.range();
        (first < next).then_some(Position {
            major: first,
            minor: 0,
        })
    }

    /// Whether every log after `after` (up to the newest) can be read.
    pub fn covers(&self, after: Position) -> bool {
        let from = after.major.saturating_add(1);
        let (first, _) = self.range();
        from >= first
            && !self
                .holes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|h| h.to > from)
    }

    /// Up to `n` logs after `after`, oldest first; [`Gone`] if some of them are no longer
    /// kept or cannot be read.
    pub fn after(&self, after: Position, n: usize) -> Result<Vec<Arc<LogRecord>>, Gone> {
        if !self.covers(after) {
            return Err(Gone);
        }
        let from = after.major.saturating_add(1);
        self.read(from, u64::MAX, n)
    }

    /// Up to `n` logs right before `upto` (oldest first): what a `tail` needs.
    pub fn before(&self, upto: Position, n: usize) -> Vec<Arc<LogRecord>> {
        let (first, _) = self.range();
        let to = upto.major;
        let from = to.saturating_sub(n as u64).max(first);
        // A hole in the range: only what follows it.
        let from = self
            .holes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|h| h.from < to && h.to > from)
            .map(|h| h.to)
            .max()
            .unwrap_or(from)
            .max(from);
        self.read(from, to, n).unwrap_or_default()
    }

    fn read(&self, from: u64, to: u64, n: usize) -> Result<Vec<Arc<LogRecord>>, Gone> {
        let segs: Vec<Arc<Segment>> = self.segments().iter().cloned().collect();
        let mut out = Vec::new();
        let mut from = from;
        for (i, seg) in segs.iter().enumerate() {
            let end = segs.get(i + 1).map_or(u64::MAX, |s| s.first_seq);
            if end <= from || seg.first_seq >= to {
                continue;
            }
            let logs = match seg.read(from, to, n - out.len()) {
                Ok(logs) => logs,
                Err(why) => {
                    tracing::error!(error = %why, "history: a segment could not be read back");
                    return Err(Gone);
                }
            };
            for (seq, json) in logs {
                if let Some(record) = self.record(seq, &json) {
                    out.push(record);
                }
                from = seq + 1;
            }
            if out.len() >= n {
                break;
            }
        }
        Ok(out)
    }

    /// A log read back, stamped with its place.
    fn record(&self, seq: u64, json: &[u8]) -> Option<Arc<LogRecord>> {
        let value = serde_json::from_slice(json).ok()?;
        let record = LogRecord::from_value(value).ok()?;
        let _ = record.stamp.set(Stamp::new(
            &self.epoch,
            Position {
                major: seq,
                minor: 0,
            },
        ));
        Some(Arc::new(record))
    }

    /// The newest `n` logs, for the router's cache at start.
    pub fn newest(&self, n: usize) -> Vec<Arc<LogRecord>> {
        let (_, next) = self.range();
        self.before(
            Position {
                major: next,
                minor: 0,
            },
            n,
        )
    }

    /// Why writes fail, if they do.
    pub fn failure(&self) -> Option<String> {
        if !self.failed.load(Ordering::Relaxed) {
            return None;
        }
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_failure(&self, why: Option<String>) {
        self.failed.store(why.is_some(), Ordering::Relaxed);
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    /// Start a new newest segment.
    fn push_segment(&self, seg: Arc<Segment>) {
        self.segments
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(seg);
    }

    /// Delete the oldest segment (never the newest); returns whether one went.
    fn drop_oldest(&self) -> bool {
        let oldest = {
            let mut segs = self.segments.write().unwrap_or_else(|p| p.into_inner());
            if segs.len() < 2 {
                return false;
            }
            segs.pop_front()
        };
        if let Some(seg) = oldest {
            // Readers holding it keep reading their open file; the name goes now.
            if let Err(e) = std::fs::remove_file(&seg.path) {
                tracing::warn!(segment = %seg.path.display(), error = %e, "history: an old segment could not be deleted");
            }
            let first = self.range().0;
            self.holes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|h| h.to > first);
        }
        true
    }

    /// When the oldest segment's newest frame was written (unix ms), if there is an older
    /// segment than the newest.
    fn oldest_segment_newest_ms(&self) -> Option<u64> {
        let segs = self.segments();
        (segs.len() >= 2).then(|| segs[0].totals().4)
    }
}

/// The epoch in `dir`, or a new one written and synced.
fn read_or_create_epoch(dir: &Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let path = dir.join(EPOCH_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let epoch = text.trim();
            if epoch.is_empty() || epoch.len() > 32 || !epoch.bytes().all(|b| b.is_ascii_hexdigit())
            {
                anyhow::bail!(
                    "history_dir {}: {EPOCH_FILE} holds {:?}, not an epoch (hex digits); move the directory aside to start a new history",
                    dir.display(),
                    epoch.chars().take(40).collect::<String>()
                );
            }
            Ok(epoch.to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let epoch = super::new_epoch();
            let tmp = dir.join(format!("{EPOCH_FILE}.tmp"));
            let mut f = std::fs::File::create(&tmp)
                .with_context(|| format!("history_dir {}: cannot write", dir.display()))?;
            std::io::Write::write_all(&mut f, format!("{epoch}\n").as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            sync_dir(dir)?;
            Ok(epoch)
        }
        Err(e) => Err(e).with_context(|| format!("{}: cannot read", path.display())),
    }
}

/// Cut a segment at `len` (its torn tail), durably.
fn cut(path: &Path, len: u64, first_seq: u64) -> anyhow::Result<()> {
    use anyhow::Context;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("history segment {}: cannot open to repair", path.display()))?;
    if len <= segment::HEADER as u64 {
        // Nothing whole was left, not even the header: write it again.
        f.set_len(0)?;
        std::os::unix::fs::FileExt::write_all_at(&f, &segment::header(first_seq), 0)?;
    } else {
        f.set_len(len)?;
    }
    f.sync_all()?;
    Ok(())
}

/// Make a file's creation, deletion or rename in `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::writer::{Writer, WriterSettings};
    use super::*;
    use crate::history::HistoryLimits;
    use crate::publish_key::{PublishKey, Published};

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "logstream-disklog-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn record(message: &str) -> Arc<LogRecord> {
        Arc::new(
            LogRecord::from_value(serde_json::json!({ "deviceId": "d", "message": message }))
                .unwrap(),
        )
    }

    fn open(d: &Path, max_logs: usize) -> (Arc<DiskLog>, Writer, std::thread::JoinHandle<()>) {
        let opened = DiskLog::open(d, 0).unwrap();
        let log = opened.log.clone();
        let (writer, thread) = writer::spawn(
            opened.log,
            opened.active,
            opened.keys,
            WriterSettings {
                fsync: Fsync::Always,
                limits: HistoryLimits {
                    max_logs,
                    max_bytes: 1 << 30,
                    max_age: Duration::from_secs(3600),
                },
                segment_bytes: 1 << 20,
                queue: 16,
            },
            |_| true,
        )
        .unwrap();
        (log, writer, thread)
    }

    fn messages(logs: &[Arc<LogRecord>]) -> Vec<&str> {
        logs.iter().map(|l| l.message.as_str()).collect()
    }

    fn at(seq: u64) -> Position {
        Position {
            major: seq,
            minor: 0,
        }
    }

    #[tokio::test]
    async fn logs_keys_and_offsets_outlive_the_process_and_a_second_one_is_refused() {
        let d = dir("reopen");
        let (log, writer, thread) = open(&d, 1000);
        let key = PublishKey {
            owner: "ingest".into(),
            key: "k1".into(),
            ttl: Duration::from_secs(600),
        };
        let first = vec![record("a"), record("b")];
        assert_eq!(
            writer.append(first.clone(), Some(&key)).await,
            Ok(Published::Appended)
        );
        assert_eq!(
            first[1].stamp.get().unwrap().position,
            at(2),
            "stamped in order"
        );
        assert_eq!(
            writer.append(vec![record("again")], Some(&key)).await,
            Ok(Published::AlreadyPublished)
        );
        writer.append(vec![record("c")], None).await.unwrap();
        let refused = DiskLog::open(&d, 0).err().expect("the directory is in use");
        assert!(refused.to_string().contains("in use"), "{refused}");
        let epoch = log.epoch().to_owned();
        writer.stop();
        thread.join().unwrap();
        drop((writer, log));

        let (log, writer, _thread) = open(&d, 1000);
        assert_eq!(log.epoch(), epoch, "the same history");
        assert_eq!(messages(&log.after(at(0), 10).unwrap()), ["a", "b", "c"]);
        assert_eq!(messages(&log.after(at(1), 1).unwrap()), ["b"]);
        assert_eq!(messages(&log.before(at(3), 2)), ["a", "b"]);
        assert_eq!(
            writer.append(vec![record("again")], Some(&key)).await,
            Ok(Published::AlreadyPublished),
            "the key came back from disk"
        );
        writer.append(vec![record("d")], None).await.unwrap();
        assert_eq!(
            log.after(at(3), 10).unwrap()[0]
                .stamp
                .get()
                .unwrap()
                .position,
            at(4),
            "numbering goes on"
        );
    }

    #[tokio::test]
    async fn the_oldest_segments_go_whole_and_replays_from_before_them_are_gone() {
        let d = dir("retain");
        // Segments of 10 logs (an eighth of 80).
        let (log, writer, _thread) = open(&d, 80);
        for i in 0..20 {
            let batch = (0..10)
                .map(|k| record(&format!("{}", i * 10 + k)))
                .collect();
            writer.append(batch, None).await.unwrap();
        }
        // Retention runs after the round is answered.
        let mut logs = 0;
        for _ in 0..100 {
            logs = log.totals().0;
            if logs <= 80 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!((70..=80).contains(&logs), "{logs} kept");
        let (first, next) = log.range();
        assert_eq!(next, 201);
        assert!(first > 100, "{first}");
        assert!(log.after(at(5), 10).is_err(), "gone");
        assert!(!log.covers(at(5)));
        let kept = log.after(at(first - 1), 1000).unwrap();
        assert_eq!(kept.len() as u64, next - first);
        assert_eq!(kept.last().unwrap().message, "199");
    }
}
