//! The one thread that writes the history: it takes publishes from a bounded queue, gives
//! each log its sequence number, writes every waiting publish as one write (one frame each),
//! syncs as `history_fsync` says, hands the logs to the router in order, and only then
//! answers each publisher. So a 202 means "on disk" (and, under `always`, synced); requests
//! that arrive together share one sync (group commit).
//!
//! A failed write or sync (a full disk, an I/O error) answers every publish of the round
//! with the error (503 `history_unavailable`), cuts the segment back to its last whole
//! frame, and is reported by `/api/ws/health` until a write succeeds again. A failed sync is
//! not retried over the same bytes: after an fsync error the kernel may have dropped the
//! pages, so the round is cut off and reported as failed ("fsyncgate").
//!
//! Retention runs here too: whole segments are deleted from the oldest while the history is
//! over `history_max_logs`, `history_max_bytes` or `history_max_age_s`.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use tokio::sync::oneshot;

use super::segment::Segment;
use super::{DiskLog, Fsync, frame, now_ms, sync_dir};
use crate::history::HistoryLimits;
use crate::log_entry::{LogRecord, Position, Stamp};
use crate::publish_key::{PublishKey, Published, PublishedKeys};

/// Publishes written in one round at most (and their bytes, below).
const ROUND_MAX: usize = 1024;
const ROUND_MAX_BYTES: usize = 8 << 20;

/// How often retention looks at the oldest segment when nothing is written.
const TICK: Duration = Duration::from_secs(1);

/// The newest segment, with the writer's handle on it.
pub struct Active {
    seg: Arc<Segment>,
    file: File,
}

impl Active {
    pub fn new(seg: Arc<Segment>, file: File) -> Active {
        Active { seg, file }
    }

    /// The newest segment of a history opened again.
    pub fn reopen(seg: Arc<Segment>) -> std::io::Result<Active> {
        let file = std::fs::OpenOptions::new().append(true).open(&seg.path)?;
        Ok(Active { seg, file })
    }
}

/// Why a publish was not written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("the history writer's queue is full; retry later")]
    Busy,
    #[error("the history could not be written: {0}")]
    Failed(String),
    #[error("the server is shutting down")]
    Closed,
}

struct Append {
    logs: Vec<Arc<LogRecord>>,
    key: Option<PublishKey>,
    reply: oneshot::Sender<Result<Published, WriteError>>,
}

enum Msg {
    Append(Append),
    /// Sync what was written and end the thread (the server stops).
    Stop,
}

/// Where publishes go to be written.
#[derive(Clone)]
pub struct Writer {
    tx: Sender<Msg>,
}

impl Writer {
    /// Write `logs` (once per `key`, if given); answered when they are on disk and handed on.
    pub async fn append(
        &self,
        logs: Vec<Arc<LogRecord>>,
        key: Option<&PublishKey>,
    ) -> Result<Published, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .try_send(Msg::Append(Append {
                logs,
                key: key.cloned(),
                reply,
            }))
            .map_err(|e| match e {
                TrySendError::Full(_) => WriteError::Busy,
                TrySendError::Disconnected(_) => WriteError::Closed,
            })?;
        answer.await.unwrap_or(Err(WriteError::Closed))
    }

    /// Ask the thread to sync and end, once what is queued is written (it may wait for room:
    /// call from a blocking thread).
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
    }
}

/// How the writer runs.
pub struct WriterSettings {
    pub fsync: Fsync,
    pub limits: HistoryLimits,
    /// A segment is closed past this many bytes.
    pub segment_bytes: u64,
    /// Publishes waiting at most.
    pub queue: usize,
}

/// Start the writer thread. `forward` hands written logs to the router (it may block: the
/// router's queue is bounded, and a full one holds the writer, whose own full queue then
/// answers publishers `Busy`); it returns false once the router is gone.
pub fn spawn(
    log: Arc<DiskLog>,
    active: Active,
    keys: Vec<(String, u64)>,
    settings: WriterSettings,
    forward: impl FnMut(Vec<Arc<LogRecord>>) -> bool + Send + 'static,
) -> std::io::Result<(Writer, std::thread::JoinHandle<()>)> {
    let (tx, rx) = crossbeam_channel::bounded(settings.queue.max(1));
    let published = PublishedKeys::default();
    let now = Instant::now();
    let now_ms = now_ms();
    for (text, written_ms) in keys {
        if let Some(key) = key_from_text(&text) {
            let age = Duration::from_millis(now_ms.saturating_sub(written_ms));
            if let Some(left) = key.ttl.checked_sub(age) {
                published.record_until(&key, now + left);
            }
        }
    }
    let next_seq = active.seg.totals().0;
    let state = State {
        log,
        active,
        next_seq,
        settings,
        published,
        dirty_since: None,
        buf: Vec::new(),
    };
    let handle = std::thread::Builder::new()
        .name("history-writer".into())
        .spawn(move || state.run(rx, forward))?;
    Ok((Writer { tx }, handle))
}

/// A key as kept in a frame: `owner`, its lifetime in ms, the key, NUL-separated.
fn key_text(key: &PublishKey) -> String {
    format!("{}\u{0}{}\u{0}{}", key.owner, key.ttl.as_millis(), key.key)
}

fn key_from_text(text: &str) -> Option<PublishKey> {
    let mut parts = text.splitn(3, '\u{0}');
    let owner = parts.next()?.to_owned();
    let ttl = Duration::from_millis(parts.next()?.parse().ok()?);
    let key = parts.next()?.to_owned();
    Some(PublishKey { owner, key, ttl })
}

struct State {
    log: Arc<DiskLog>,
    active: Active,
    next_seq: u64,
    settings: WriterSettings,
    published: PublishedKeys,
    /// Written and not synced since (for `interval`).
    dirty_since: Option<Instant>,
    buf: Vec<u8>,
}

/// One publish of a round, after its key was checked.
struct Pending {
    append: Append,
    /// Its frame's place in the round's buffer, and its first sequence number.
    at: usize,
    len: usize,
    seq: u64,
    now_ms: u64,
}

impl State {
    fn run(mut self, rx: Receiver<Msg>, mut forward: impl FnMut(Vec<Arc<LogRecord>>) -> bool) {
        loop {
            let wait = match (self.settings.fsync, self.dirty_since) {
                (Fsync::Interval(every), Some(since)) => {
                    every.saturating_sub(since.elapsed()).min(TICK)
                }
                _ => TICK,
            };
            let first = match rx.recv_timeout(wait) {
                Ok(Msg::Append(a)) => a,
                Ok(Msg::Stop) => break,
                Err(RecvTimeoutError::Timeout) => {
                    self.sync_if_due();
                    self.retain();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut round = vec![first];
            let mut bytes = 0usize;
            let mut stop = false;
            while round.len() < ROUND_MAX && bytes < ROUND_MAX_BYTES {
                match rx.try_recv() {
                    Ok(Msg::Append(a)) => {
                        bytes += a.logs.iter().map(|l| l.json.get().len()).sum::<usize>();
                        round.push(a);
                    }
                    Ok(Msg::Stop) => {
                        stop = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            if !self.write_round(round, &mut forward) || stop {
                break;
            }
            self.sync_if_due();
            self.roll_if_full();
            self.retain();
        }
        // Shutting down: what was written is synced, whatever the policy (but `never`).
        if self.settings.fsync != Fsync::Never && self.dirty_since.is_some() {
            let _ = self.active.file.sync_data();
        }
    }

    /// Write one round; false once the router is gone.
    fn write_round(
        &mut self,
        round: Vec<Append>,
        forward: &mut impl FnMut(Vec<Arc<LogRecord>>) -> bool,
    ) -> bool {
        let now = Instant::now();
        let ms = now_ms();
        self.buf.clear();
        let mut pending = Vec::with_capacity(round.len());
        let mut seq = self.next_seq;
        for append in round {
            if append.logs.is_empty() {
                let _ = append.reply.send(Ok(Published::Appended));
                continue;
            }
            // Published before, or twice in this round (the second is the duplicate).
            let duplicate = append.key.as_ref().is_some_and(|k| {
                self.published.is_published(k, now)
                    || pending
                        .iter()
                        .any(|p: &Pending| p.append.key.as_ref() == Some(k))
            });
            if duplicate {
                let _ = append.reply.send(Ok(Published::AlreadyPublished));
                continue;
            }
            let at = self.buf.len();
            let logs: Vec<&[u8]> = append
                .logs
                .iter()
                .map(|l| l.json.get().as_bytes())
                .collect();
            let key = append.key.as_ref().map(key_text).unwrap_or_default();
            frame::encode(&mut self.buf, seq, ms, &key, &logs);
            let len = self.buf.len() - at;
            let first = seq;
            seq += append.logs.len() as u64;
            pending.push(Pending {
                append,
                at,
                len,
                seq: first,
                now_ms: ms,
            });
        }
        if pending.is_empty() {
            return true;
        }
        let start = self.active.seg.totals().1;
        let written =
            self.active
                .file
                .write_all(&self.buf)
                .and_then(|()| match self.settings.fsync {
                    Fsync::Always => self.active.file.sync_data(),
                    _ => Ok(()),
                });
        if let Err(e) = written {
            let why = format!("{}: {e}", self.active.seg.path.display());
            tracing::error!(error = %why, "history: a write failed; its publishes are refused (503) until writes succeed again");
            // Back to the last whole frame, so the file holds nothing unanswered.
            if let Err(cut) = self.active.file.set_len(start) {
                tracing::error!(error = %cut, "history: the failed write could not be cut off");
            }
            self.log.set_failure(Some(why.clone()));
            for p in pending {
                let _ = p.append.reply.send(Err(WriteError::Failed(why.clone())));
            }
            return true;
        }
        if self.log.failure().is_some() {
            tracing::info!("history: writes succeed again");
            self.log.set_failure(None);
        }
        if self.settings.fsync != Fsync::Always && self.dirty_since.is_none() {
            self.dirty_since = Some(now);
        }
        self.next_seq = seq;
        for p in pending {
            let count = p.append.logs.len() as u64;
            self.active
                .seg
                .published(start + p.at as u64, p.len as u64, p.seq, count, p.now_ms);
            for (k, log) in p.append.logs.iter().enumerate() {
                let _ = log.stamp.set(Stamp::new(
                    self.log.epoch(),
                    Position {
                        major: p.seq + k as u64,
                        minor: 0,
                    },
                ));
            }
            if let Some(key) = &p.append.key {
                self.published.record(key, now);
            }
            if !forward(p.append.logs) {
                let _ = p.append.reply.send(Err(WriteError::Closed));
                return false;
            }
            let _ = p.append.reply.send(Ok(Published::Appended));
        }
        true
    }

    fn sync_if_due(&mut self) {
        let Fsync::Interval(every) = self.settings.fsync else {
            return;
        };
        if self
            .dirty_since
            .is_some_and(|since| since.elapsed() >= every)
        {
            if let Err(e) = self.active.file.sync_data() {
                let why = format!("{}: sync: {e}", self.active.seg.path.display());
                tracing::error!(error = %why, "history: a sync failed; logs answered in the last history_fsync_interval_ms may not survive a power loss");
                self.log.set_failure(Some(why));
            }
            self.dirty_since = None;
        }
    }

    /// Start a new segment once the newest passed its size or an eighth of the count bound
    /// (so retention deletes at most about an eighth of the history at a time).
    fn roll_if_full(&mut self) {
        let (_, bytes, logs, _, _) = self.active.seg.totals();
        let max_logs = (self.settings.limits.max_logs as u64 / 8).max(1);
        if bytes < self.settings.segment_bytes && logs < max_logs {
            return;
        }
        if self.settings.fsync != Fsync::Never
            && let Err(e) = self.active.file.sync_data()
        {
            tracing::error!(error = %e, "history: syncing a full segment failed");
        }
        self.dirty_since = None;
        match Segment::create(self.log.dir(), self.next_seq) {
            Ok((seg, file)) => {
                let _ = sync_dir(self.log.dir());
                let seg = Arc::new(seg);
                self.log.push_segment(seg.clone());
                self.active = Active::new(seg, file);
            }
            // The newest segment grows on; the next round tries again.
            Err(e) => tracing::warn!(error = %e, "history: a new segment could not be created"),
        }
    }

    /// Delete whole segments from the oldest while the history is over a bound.
    fn retain(&mut self) {
        let limits = self.settings.limits;
        let max_age_ms = limits.max_age.as_millis() as u64;
        loop {
            let (logs, bytes, _) = self.log.totals();
            let Some(oldest_newest_ms) = self.log.oldest_segment_newest_ms() else {
                return;
            };
            let over = logs > limits.max_logs as u64
                || bytes > limits.max_bytes as u64
                || now_ms().saturating_sub(oldest_newest_ms) > max_age_ms;
            if !over || !self.log.drop_oldest() {
                return;
            }
        }
    }
}

/// The segment size for a history bounded by `max_bytes`: an eighth of it (so retention
/// deletes at most an eighth at a time), between 1 and 64 MiB.
pub fn segment_bytes(max_bytes: usize) -> u64 {
    (max_bytes as u64 / 8).clamp(1 << 20, 64 << 20)
}
