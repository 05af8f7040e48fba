//! The history as the router reads it: the in-memory [`Ring`] alone, or, with `history_dir`,
//! the [`DiskLog`] with the ring in front of it as a cache of the newest logs. Replays read
//! the cache when it reaches back far enough and the disk otherwise; both answer the same
//! questions (what follows an offset, what came right before a position), so replays do not
//! know which one they read.

use std::sync::Arc;
use std::time::Instant;

use super::HistoryLimits;
use super::disk::{DiskLog, Gone};
use super::ring::{Ring, Since};
use crate::log_entry::{LogRecord, Position};

/// What the cache in front of a disk history keeps at most: the newest logs, enough for the
/// replays of clients that were away a few seconds.
pub const CACHE_LOGS: usize = 10_000;
pub const CACHE_BYTES: usize = 16 << 20;

/// What a replay `since` an offset finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Logs follow it, all kept.
    Replay,
    /// Nothing follows it (yet): the client is up to date.
    UpToDate,
    /// Some of what follows it is no longer kept: not exact.
    Gone,
    /// It is past the newest log seen (another reader of the bus delivered it).
    Ahead,
}

pub struct History {
    ring: Ring,
    disk: Option<Arc<DiskLog>>,
}

impl History {
    /// In memory, bounded by `limits`.
    pub fn memory(limits: HistoryLimits) -> History {
        History {
            ring: Ring::new(limits),
            disk: None,
        }
    }

    /// On disk, with a cache of the newest logs.
    pub fn on_disk(disk: Arc<DiskLog>, limits: HistoryLimits) -> History {
        History {
            ring: Ring::new(HistoryLimits {
                max_logs: limits.max_logs.min(CACHE_LOGS),
                max_bytes: limits.max_bytes.min(CACHE_BYTES),
                max_age: limits.max_age,
            }),
            disk: Some(disk),
        }
    }

    /// Empty again (a new epoch); the disk history has one epoch and is kept.
    pub fn reset(&mut self) {
        self.ring = Ring::new(self.ring.limits());
    }

    pub fn push(&mut self, position: Position, record: Arc<LogRecord>, now: Instant) {
        self.ring.push(position, record, now);
    }

    /// Add entries that may be older than kept ones (see [`Ring::merge`]); only the
    /// in-memory history is merged into (a history on disk has one writer, in order).
    pub fn merge(&mut self, records: Vec<Arc<LogRecord>>, now: Instant) {
        self.ring.merge(records, now);
    }

    /// Loaded from a source that may hold older entries than the first given.
    pub fn mark_unknown_before(&mut self, first: Position) {
        self.ring.mark_unknown_before(first);
    }

    pub fn expire(&mut self, now: Instant) {
        self.ring.expire(now);
    }

    /// The newest position the router processed: a replay covers up to it, what follows
    /// is live.
    pub fn newest(&self) -> Option<Position> {
        self.ring.newest()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty() && self.disk.as_ref().is_none_or(|d| d.oldest().is_none())
    }

    /// What follows `after`.
    pub fn after(&self, after: Position) -> After {
        match self.ring.since(after) {
            Since::From(i) if i < self.ring.end() => After::Replay,
            Since::From(_) => After::UpToDate,
            Since::Ahead => After::Ahead,
            Since::Gone => match &self.disk {
                Some(disk) if disk.covers(after) => After::Replay,
                _ => After::Gone,
            },
        }
    }

    /// Up to `n` logs after `after`, oldest first; [`Gone`] if some are no longer kept.
    pub fn read_after(&self, after: Position, n: usize) -> Result<Vec<Arc<LogRecord>>, Gone> {
        match self.ring.since(after) {
            Since::From(i) => Ok(self.ring.slice(i, n)),
            Since::Ahead => Ok(Vec::new()),
            Since::Gone => match &self.disk {
                Some(disk) => disk.after(after, n),
                None => Err(Gone),
            },
        }
    }

    /// Up to `n` logs right before `upto`, oldest first.
    pub fn before(&self, upto: Position, n: usize) -> Vec<Arc<LogRecord>> {
        let cached = self.ring.before(upto, n);
        let Some(disk) = &self.disk else {
            return cached;
        };
        if cached.len() == n {
            return cached;
        }
        // The cache ends (going back) before `n`: the rest from disk, before the cache's
        // oldest (or before `upto` when the cache has nothing before it).
        let first_cached = cached
            .first()
            .and_then(|r| r.stamp.get())
            .map_or(upto, |s| s.position);
        let mut older = disk.before(first_cached, n - cached.len());
        older.extend(cached);
        older
    }

    /// Logs kept, their bytes (on disk: the files'), and the oldest log's offset.
    pub fn totals(&self) -> (usize, usize) {
        match &self.disk {
            Some(disk) => {
                let (logs, bytes, _) = disk.totals();
                (logs as usize, bytes as usize)
            }
            None => (self.ring.len(), self.ring.bytes()),
        }
    }

    /// The oldest log's offset, and when it was kept.
    pub fn oldest(&self, epoch: &str, now: Instant) -> Option<(String, Instant)> {
        match &self.disk {
            Some(disk) => {
                let position = disk.oldest()?;
                let (_, _, written_ms) = disk.totals();
                let age = super::disk::now_ms().saturating_sub(written_ms?);
                let at = now
                    .checked_sub(std::time::Duration::from_millis(age))
                    .unwrap_or(now);
                Some((format!("{epoch}:{}-{}", position.major, position.minor), at))
            }
            None => self.ring.oldest().and_then(|(r, at)| {
                r.stamp
                    .get()
                    .map(|s| (s.offset.get().trim_matches('"').to_owned(), at))
            }),
        }
    }

    pub fn disk(&self) -> Option<&Arc<DiskLog>> {
        self.disk.as_ref()
    }
}
