//! The kept history: entries in position order, bounded by count, bytes and age (oldest
//! dropped first). Owned by the router thread, so no lock.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::HistoryLimits;
use crate::log_entry::{LogRecord, Position};

pub struct Ring {
    entries: VecDeque<(Position, Arc<LogRecord>, Instant)>,
    bytes: usize,
    limits: HistoryLimits,
    /// Entries at or before this position may have existed and are not kept (dropped, or
    /// older than what was loaded): a replay from before it cannot be exact.
    floor: Option<Position>,
}

/// What `since` finds in the ring.
#[derive(Debug, PartialEq, Eq)]
pub enum Since {
    /// Entries after the offset are all kept: replay from this index.
    From(usize),
    /// Entries after the offset were dropped: not exact.
    Gone,
    /// The offset is beyond the newest entry kept (this reader is behind the one that
    /// delivered it, or the offset is made up).
    Ahead,
}

/// Bytes a record holds, roughly (its JSON dominates).
fn cost(record: &LogRecord) -> usize {
    record.json.get().len() * 2 + 128
}

impl Ring {
    pub fn new(limits: HistoryLimits) -> Ring {
        Ring {
            entries: VecDeque::new(),
            bytes: 0,
            limits,
            floor: None,
        }
    }

    /// Loaded from a source that may hold older entries than the first given: offsets before
    /// `first` are not replayed exactly.
    pub fn mark_unknown_before(&mut self, first: Position) {
        self.floor = Some(self.floor.map_or(first, |f| f.max(first)));
    }

    /// Append `record` at `position` (positions only grow; an older one is ignored).
    pub fn push(&mut self, position: Position, record: Arc<LogRecord>, now: Instant) {
        if self.entries.back().is_some_and(|(p, _, _)| *p >= position) {
            return;
        }
        self.bytes += cost(&record);
        self.entries.push_back((position, record, now));
        while self.entries.len() > self.limits.max_logs || self.bytes > self.limits.max_bytes {
            self.pop_oldest();
        }
    }

    /// Add `records` (in position order) that may be older than kept entries: a shard read
    /// again after a pause brings what it missed. Entries before the floor (a region already
    /// known to be incomplete) and positions kept already are skipped.
    pub fn merge(&mut self, records: Vec<Arc<LogRecord>>, now: Instant) {
        let at = |r: &Arc<LogRecord>| r.stamp.get().map(|s| s.position);
        if records
            .first()
            .and_then(at)
            .is_some_and(|first| self.newest().is_none_or(|n| first > n))
        {
            for r in records {
                if let Some(p) = at(&r) {
                    self.push(p, r, now);
                }
            }
            return;
        }
        let kept = std::mem::take(&mut self.entries);
        let mut merged = VecDeque::with_capacity(kept.len() + records.len());
        let mut kept = kept.into_iter().peekable();
        for r in records {
            let Some(p) = at(&r) else { continue };
            if self.floor.is_some_and(|f| p < f) {
                continue;
            }
            while let Some(e) = kept.next_if(|(q, _, _)| *q < p) {
                merged.push_back(e);
            }
            if kept.peek().is_some_and(|(q, _, _)| *q == p) {
                continue;
            }
            self.bytes += cost(&r);
            merged.push_back((p, r, now));
        }
        merged.extend(kept);
        self.entries = merged;
        while self.entries.len() > self.limits.max_logs || self.bytes > self.limits.max_bytes {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((p, r, _)) = self.entries.pop_front() {
            self.bytes -= cost(&r);
            self.floor = Some(p);
        }
    }

    /// Drop what is older than `max_age`.
    pub fn expire(&mut self, now: Instant) {
        while self
            .entries
            .front()
            .is_some_and(|(_, _, at)| now.saturating_duration_since(*at) > self.limits.max_age)
        {
            self.pop_oldest();
        }
    }

    /// Where a replay of what came after `position` starts, if it can be exact.
    pub fn since(&self, position: Position) -> Since {
        if self.floor.is_some_and(|f| position < f) {
            return Since::Gone;
        }
        // The last position this history has seen, kept or dropped.
        let last_seen = self.newest().or(self.floor).unwrap_or_default();
        if position > last_seen {
            return Since::Ahead;
        }
        Since::From(self.entries.partition_point(|(p, _, _)| *p <= position))
    }

    /// Entries from index `from`, at most `n`.
    pub fn slice(&self, from: usize, n: usize) -> Vec<Arc<LogRecord>> {
        self.entries
            .range(from.min(self.entries.len())..(from + n).min(self.entries.len()))
            .map(|(_, r, _)| r.clone())
            .collect()
    }

    /// Up to `n` entries right before `position`, oldest first.
    pub fn before(&self, position: Position, n: usize) -> Vec<Arc<LogRecord>> {
        let end = self.entries.partition_point(|(p, _, _)| *p < position);
        self.entries
            .range(end.saturating_sub(n)..end)
            .map(|(_, r, _)| r.clone())
            .collect()
    }

    /// The index of the entry at `position`, if kept.
    pub fn index_of(&self, position: Position) -> Option<usize> {
        let i = self.entries.partition_point(|(p, _, _)| *p < position);
        self.entries
            .get(i)
            .is_some_and(|(p, _, _)| *p == position)
            .then_some(i)
    }

    /// The index one past the last entry.
    pub fn end(&self) -> usize {
        self.entries.len()
    }

    pub fn limits(&self) -> HistoryLimits {
        self.limits
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The oldest entry's record and when it was kept.
    pub fn oldest(&self) -> Option<(&Arc<LogRecord>, Instant)> {
        self.entries.front().map(|(_, r, at)| (r, *at))
    }

    /// The newest position kept.
    pub fn newest(&self) -> Option<Position> {
        self.entries.back().map(|(p, _, _)| *p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rec(i: u64) -> Arc<LogRecord> {
        let v = serde_json::json!({"deviceId": "d", "message": i.to_string()});
        Arc::new(LogRecord::from_value(v).unwrap())
    }

    fn at(i: u64) -> Position {
        Position { major: i, minor: 0 }
    }

    #[test]
    fn keeps_the_newest_within_bounds_and_finds_where_to_replay() {
        let limits = HistoryLimits {
            max_logs: 5,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(60),
        };
        let mut ring = Ring::new(limits);
        let t0 = Instant::now();
        for i in 1..=8 {
            ring.push(at(i), rec(i), t0);
        }
        assert_eq!(ring.len(), 5);
        assert_eq!(ring.since(at(0)), Since::Gone, "1..=3 were dropped");
        assert_eq!(
            ring.since(at(3)),
            Since::From(0),
            "4 is the oldest kept: exact"
        );
        assert_eq!(ring.since(at(6)), Since::From(3));
        assert_eq!(ring.since(at(8)), Since::From(5), "nothing to replay");
        assert_eq!(ring.since(at(9)), Since::Ahead, "from the future");
        let mut fresh = Ring::new(limits);
        assert_eq!(
            fresh.since(at(0)),
            Since::From(0),
            "an empty new history is exact"
        );
        fresh.push(at(5), rec(5), t0);
        fresh.mark_unknown_before(at(5));
        assert_eq!(
            fresh.since(at(4)),
            Since::Gone,
            "loaded from a trimmed stream"
        );
        assert_eq!(fresh.since(at(5)), Since::From(1));
        let slice = ring.slice(3, 10);
        assert_eq!(slice.len(), 2);
        assert_eq!(slice[0].message, "7");
        ring.expire(t0 + Duration::from_secs(61));
        assert!(ring.is_empty());
        assert_eq!(ring.bytes(), 0);
    }

    #[test]
    fn bytes_bound_the_history_too() {
        let limits = HistoryLimits {
            max_logs: 1000,
            max_bytes: 2000,
            max_age: Duration::from_secs(60),
        };
        let mut ring = Ring::new(limits);
        for i in 1..=100 {
            ring.push(at(i), rec(i), Instant::now());
        }
        assert!(ring.bytes() <= 2000 && ring.len() < 100 && !ring.is_empty());
        assert_eq!(ring.newest(), Some(at(100)));
    }

    #[test]
    fn merges_older_entries_in_place() {
        let limits = HistoryLimits {
            max_logs: 6,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(60),
        };
        let stamped = |i: u64| {
            let r = rec(i);
            let _ = r.stamp.set(crate::log_entry::Stamp::new("e", at(i)));
            r
        };
        let mut ring = Ring::new(limits);
        let t0 = Instant::now();
        for i in [2, 4, 6] {
            ring.push(at(i), stamped(i), t0);
        }
        // A shard read again brings 3 and 5 (and 4 again); 7 is newer than all.
        ring.merge(vec![stamped(3), stamped(4), stamped(5)], t0);
        ring.merge(vec![stamped(7)], t0);
        let kept: Vec<String> = ring
            .slice(0, 10)
            .iter()
            .map(|r| r.message.clone())
            .collect();
        assert_eq!(kept, ["2", "3", "4", "5", "6", "7"]);
        // Over the bound: the oldest go, and the floor says so.
        ring.merge(vec![stamped(1), stamped(8)], t0);
        assert_eq!(ring.len(), 6);
        assert_eq!(ring.since(at(1)), Since::Gone);
        assert_eq!(ring.since(at(2)), Since::From(0));
        // A shard's first kept entry marks where exact replays begin, and is kept itself.
        let mut shard = Ring::new(limits);
        shard.mark_unknown_before(at(10));
        shard.merge(vec![stamped(10), stamped(11)], t0);
        assert_eq!(shard.len(), 2);
    }
}
