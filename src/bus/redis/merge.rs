//! Merging shards into one order (`redis_stream_shards` > 1), without I/O.
//!
//! Each shard's reader reports what it read and a watermark: every later entry of that shard
//! has a position at or after it (the Redis clock when it read, see `shard_reader`). An
//! entry is released to the router once every shard being read has passed it, so what the
//! router sees is in position order whichever shard came first, and offsets only grow.
//!
//! A shard starts being read while others are: its entries from before what was already
//! released go to the history only (the subscriptions that wanted it are not in force yet,
//! see `router::shard_interest`), the rest join the order. A shard no longer read remembers
//! the last entry it handed on, and is read again from there.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::log_entry::{LogRecord, Position};
use crate::shards::ShardMask;

/// What a shard's reader read.
pub struct ShardRead {
    pub shard: usize,
    /// Which reader of the shard sent it (a stopped one's last words are ignored).
    pub run: u64,
    /// Entries after the reader's cursor, oldest first.
    pub records: Vec<Arc<LogRecord>>,
    /// Every entry of the shard not in `records` or before them is at or after this.
    pub watermark: Position,
    /// The reader has read everything up to the watermark (not just one page).
    pub complete: bool,
    /// Entries of the shard before this were trimmed from Redis (its first read only).
    pub trimmed_before: Option<Position>,
}

#[derive(Default)]
struct Shard {
    /// Wanted: a reader runs.
    active: bool,
    /// The reader has caught up: the shard takes part in the order.
    caught_up: bool,
    run: u64,
    queue: VecDeque<Arc<LogRecord>>,
    watermark: Position,
    /// The newest position of this shard handed on: where a new reader starts.
    handed: Option<Position>,
    /// Complete reads while joining.
    attempts: u32,
}

/// What taking a read produced besides queued entries.
#[derive(Default)]
pub struct Taken {
    /// Entries older than what was released: for the history, not delivered.
    pub backfill: Vec<Arc<LogRecord>>,
    /// Replays from before this cannot be exact (the shard was trimmed).
    pub unknown_before: Option<Position>,
    /// The shard caught up with this read.
    pub caught_up: bool,
    /// The shard read everything but has not reached the released bound yet: read again.
    pub retry: bool,
}

/// Complete reads after which a joining shard takes part in the order even if its clock
/// has not reached the released bound.
pub const JOIN_ATTEMPTS: u32 = 3;

/// The position right after `p`.
fn after(p: Position) -> Position {
    Position {
        major: p.major,
        minor: p.minor + 1,
    }
}

pub struct Merge {
    shards: Vec<Shard>,
    /// Everything before this position has been handed on.
    released: Position,
}

fn position(record: &LogRecord) -> Position {
    record.stamp.get().map(|s| s.position).unwrap_or_default()
}

impl Merge {
    /// `n` shards, none read; entries before `start` are history.
    pub fn new(n: usize, start: Position) -> Merge {
        Merge {
            shards: (0..n).map(|_| Shard::default()).collect(),
            released: start,
        }
    }

    /// Start reading `shard` (reader `run`): returns where its reader starts (after that
    /// position; `None`: from the beginning of the stream).
    pub fn activate(&mut self, shard: usize, run: u64) -> Option<Position> {
        let s = &mut self.shards[shard];
        s.active = true;
        s.caught_up = false;
        s.run = run;
        s.queue.clear();
        s.watermark = Position::default();
        s.attempts = 0;
        s.handed
    }

    /// Stop reading `shard`: what it queued is dropped (read again if it is wanted again).
    pub fn deactivate(&mut self, shard: usize) {
        let s = &mut self.shards[shard];
        s.active = false;
        s.caught_up = false;
        s.queue.clear();
    }

    /// Everything is new again (the stream's epoch changed): positions start over.
    pub fn reset(&mut self) {
        for s in &mut self.shards {
            s.queue.clear();
            s.handed = None;
            s.caught_up = false;
            s.watermark = Position::default();
        }
        self.released = Position::default();
    }

    /// The shards being read that take part in the order.
    pub fn in_order(&self) -> ShardMask {
        self.shards
            .iter()
            .enumerate()
            .filter(|(_, s)| s.active && s.caught_up)
            .fold(0, |m, (i, _)| m | 1 << i)
    }

    /// The shards being read.
    pub fn active(&self) -> ShardMask {
        self.shards
            .iter()
            .enumerate()
            .filter(|(_, s)| s.active)
            .fold(0, |m, (i, _)| m | 1 << i)
    }

    /// Take a read: entries behind what was released go to the history (delivering them
    /// would go back in the order: a joining shard's past, or a late entry of a shard whose
    /// clock is behind), the rest wait in the shard's queue. A joining shard takes part in
    /// the order once it has read up to the released bound (or after [`JOIN_ATTEMPTS`]
    /// complete reads: a clock behind the others' may never get there; its entries behind
    /// the bound are history then).
    pub fn take(&mut self, read: ShardRead) -> Taken {
        let mut taken = Taken::default();
        let others_in_order = self.in_order() & !(1 << read.shard) != 0;
        let released = &mut self.released;
        let s = &mut self.shards[read.shard];
        if !s.active || s.run != read.run {
            return taken;
        }
        s.watermark = s.watermark.max(read.watermark);
        taken.unknown_before = read.trimmed_before;
        if !s.caught_up && !others_in_order {
            // Nothing else is read: what this shard holds up to now is history, and live
            // begins at its present.
            let upto = if read.complete {
                Some(s.watermark)
            } else {
                read.records.last().map(|r| after(position(r)))
            };
            if let Some(upto) = upto {
                *released = (*released).max(upto);
            }
        }
        while s.queue.front().is_some_and(|r| position(r) < *released) {
            taken.backfill.extend(s.queue.pop_front());
        }
        for record in read.records {
            if position(&record) < *released {
                taken.backfill.push(record);
            } else {
                s.queue.push_back(record);
            }
        }
        if let Some(last) = taken.backfill.last() {
            s.handed = Some(s.handed.map_or(position(last), |h| h.max(position(last))));
        }
        if !s.caught_up && read.complete {
            s.attempts += 1;
            if s.watermark >= *released || s.attempts >= JOIN_ATTEMPTS {
                s.caught_up = true;
                taken.caught_up = true;
            } else {
                taken.retry = true;
            }
        }
        taken
    }

    /// Everything before this position has been handed on.
    pub fn released(&self) -> Position {
        self.released
    }

    /// The entries every shard in the order has passed, oldest first.
    pub fn release(&mut self) -> Vec<Arc<LogRecord>> {
        let Some(bound) = self
            .shards
            .iter()
            .filter(|s| s.active && s.caught_up)
            .map(|s| s.watermark)
            .min()
        else {
            return Vec::new();
        };
        self.released = self.released.max(bound);
        let mut out = Vec::new();
        loop {
            let next = self
                .shards
                .iter()
                .enumerate()
                .filter(|(_, s)| s.active && s.caught_up)
                .filter_map(|(i, s)| s.queue.front().map(|r| (position(r), i)))
                .filter(|(p, _)| *p < bound)
                .min();
            let Some((p, i)) = next else { break };
            let s = &mut self.shards[i];
            out.extend(s.queue.pop_front());
            s.handed = Some(p);
        }
        out
    }

    /// The shards in the order that have `cap` entries or more waiting (their readers pause
    /// until the shards holding them back move on). A joining shard is never full: what it
    /// reads behind the released bound goes to the history at once.
    pub fn full(&self, cap: usize) -> ShardMask {
        self.shards
            .iter()
            .enumerate()
            .filter(|(_, s)| s.caught_up && s.queue.len() >= cap)
            .fold(0, |m, (i, _)| m | 1 << i)
    }

    /// The shards whose watermark holds back the oldest queued entry (to be asked again).
    pub fn holding_back(&self) -> ShardMask {
        let Some(oldest) = self
            .shards
            .iter()
            .filter(|s| s.active && s.caught_up)
            .filter_map(|s| s.queue.front().map(|r| position(r)))
            .min()
        else {
            return 0;
        };
        self.shards
            .iter()
            .enumerate()
            .filter(|(_, s)| s.active && s.caught_up && s.watermark <= oldest)
            .fold(0, |m, (i, _)| m | 1 << i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_entry::Stamp;
    use serde_json::json;

    fn at(ms: u64, seq: u64, shard: u64) -> Arc<LogRecord> {
        let r = LogRecord::from_value(json!({"deviceId": "d", "message": "m"})).unwrap();
        let p = Position {
            major: ms,
            minor: seq * 4 + shard,
        };
        let _ = r.stamp.set(Stamp::new("e", p));
        Arc::new(r)
    }

    fn read(shard: usize, records: Vec<Arc<LogRecord>>, watermark_ms: u64) -> ShardRead {
        ShardRead {
            shard,
            run: 1,
            records,
            watermark: Position {
                major: watermark_ms,
                minor: 0,
            },
            complete: true,
            trimmed_before: None,
        }
    }

    fn ms(records: &[Arc<LogRecord>]) -> Vec<u64> {
        records.iter().map(|r| position(r).major).collect()
    }

    #[test]
    fn releases_in_position_order_once_every_shard_passed() {
        let mut m = Merge::new(4, Position::default());
        m.activate(0, 1);
        m.activate(1, 1);
        // The first shard read starts the live part at its present (5).
        assert!(m.take(read(0, vec![], 5)).caught_up);
        assert!(m.take(read(1, vec![], 5)).caught_up);
        m.take(read(0, vec![at(10, 0, 0), at(30, 0, 0)], 31));
        // Shard 1 has not reported: nothing may go yet.
        assert!(m.release().is_empty());
        m.take(read(1, vec![at(20, 0, 1)], 25));
        assert_eq!(ms(&m.release()), [10, 20]);
        // 30 waits for shard 1 to pass it; shard 1 is the one to ask.
        assert_eq!(m.holding_back(), 0b10);
        m.take(read(1, vec![], 40));
        assert_eq!(ms(&m.release()), [30]);
        assert_eq!(m.holding_back(), 0);
        // A shard that cannot be read holds the others back; theirs queue up to a cap.
        m.take(read(0, (41..45).map(|t| at(t, 0, 0)).collect(), 46));
        assert!(m.release().is_empty());
        assert_eq!(m.full(4), 0b01);
        assert_eq!(m.full(5), 0);
    }

    #[test]
    fn a_joining_shard_sends_its_past_to_history_only() {
        let mut m = Merge::new(4, Position::default());
        m.activate(0, 1);
        m.take(read(0, vec![], 5));
        m.take(read(0, vec![at(10, 0, 0)], 50));
        assert_eq!(ms(&m.release()), [10]);
        assert_eq!(m.activate(2, 1), None, "never read: from the beginning");
        let taken = m.take(read(2, vec![at(5, 0, 2), at(45, 0, 2), at(55, 0, 2)], 60));
        assert!(taken.caught_up);
        // Before 50 (released already): history; after it: in order.
        assert_eq!(ms(&taken.backfill), [5, 45]);
        m.take(read(0, vec![at(58, 0, 0)], 70));
        assert_eq!(ms(&m.release()), [55, 58]);
        // Stopped and wanted again: from the last entry it handed on.
        m.deactivate(2);
        assert_eq!(m.activate(2, 2), Some(position(&at(55, 0, 2))));
        // The old reader's late message is ignored.
        let stale = m.take(read(2, vec![at(65, 0, 2)], 80));
        assert!(stale.backfill.is_empty() && !stale.caught_up);
    }

    #[test]
    fn the_first_shard_read_starts_live_at_its_present() {
        let mut m = Merge::new(2, Position::default());
        m.activate(1, 1);
        let taken = m.take(read(1, vec![at(5, 0, 1), at(9, 0, 1)], 10));
        assert_eq!(ms(&taken.backfill), [5, 9]);
        assert!(m.release().is_empty());
        m.take(read(1, vec![at(12, 0, 1)], 13));
        assert_eq!(ms(&m.release()), [12]);
    }

    #[test]
    fn a_shard_whose_clock_is_behind_never_delivers_backwards() {
        let mut m = Merge::new(4, Position::default());
        m.activate(0, 1);
        m.take(read(0, vec![], 50));
        m.take(read(0, vec![at(99, 0, 0)], 100));
        m.activate(1, 1);
        assert_eq!(ms(&m.release()), [99]);
        // Shard 1's read ran before 100: not in the order yet, asked again.
        let first = m.take(read(1, vec![], 95));
        assert!(first.retry && !first.caught_up);
        // A later entry of it behind what was delivered is history, not a live log.
        let late = m.take(read(1, vec![at(97, 0, 1)], 98));
        assert_eq!(ms(&late.backfill), [97]);
        assert!(late.retry);
        assert!(m.take(read(1, vec![at(101, 0, 1)], 103)).caught_up);
        m.take(read(0, vec![at(102, 0, 0)], 104));
        assert_eq!(ms(&m.release()), [101, 102]);
        // A clock that never catches up joins after a few tries all the same.
        m.activate(2, 1);
        for _ in 1..JOIN_ATTEMPTS {
            assert!(m.take(read(2, vec![], 60)).retry);
        }
        assert!(m.take(read(2, vec![], 60)).caught_up);
    }

    #[test]
    fn a_long_first_load_goes_to_history_page_by_page() {
        let mut m = Merge::new(2, Position::default());
        m.activate(0, 1);
        let mut page = read(0, (1..=3).map(|t| at(t, 0, 0)).collect(), 0);
        page.complete = false;
        page.watermark = position(&at(3, 0, 0));
        let taken = m.take(page);
        assert_eq!(ms(&taken.backfill), [1, 2, 3]);
        assert!(!taken.caught_up);
        assert_eq!(m.full(1), 0, "a joining shard never pauses");
    }
}
