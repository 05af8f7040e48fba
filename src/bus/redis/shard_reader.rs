//! One shard's reader (`redis_stream_shards` > 1): reads the shard's stream from where the
//! merge says, and reports each read with a watermark for the merge's order (`merge`).
//!
//! A read is atomic (a `MULTI` transaction; the first read of a shard a script that also
//! says whether the stream was trimmed): Redis's clock (`TIME`) and the entries after the
//! cursor. An entry appended after the script gets an id at or after that time (stream ids
//! start with the appending server's clock, and never go back), so the time is the shard's
//! watermark: nothing earlier can still come. A read that filled its page says only "up to
//! its last entry".
//!
//! Between reads the reader waits on `XREAD BLOCK` (a connection of its own: it only wakes
//! the reader), or until the merge asks for a newer watermark: an idle shard must move on
//! for the busy ones to be released, so the merge asks it when it holds something back.
//! Reads go to the primary: a replica's clock says nothing about what it has not received.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::merge::ShardRead;
use super::stream::{entry_id, position};
use super::{BACKOFF_MAX, BACKOFF_MIN, RedisBus, lua_now_ms};
use crate::log_entry::Position;

/// Entries per read.
const READ_COUNT: usize = 1000;

/// Read entries of stream `KEYS[1]` from `ARGV[1]` (`-`, or `(id`), at most `ARGV[2]`; with
/// `ARGV[3]` = 1 also say how many entries were ever trimmed from it and the id of its first
/// entry. Answers `{ now in ms, entries, trimmed, first id or '' }`. Runs on a primary only
/// (it reads the primary's clock). Needs Redis 7 (`entries-added`, script flags).
const READ: &str = concat!(
    "#!lua flags=no-writes\n",
    lua_now_ms!(),
    "local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
local trimmed, head = 0, ''
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
  if #first > 0 then head = first[1][1] end
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  local added, length = 0, 0
  for i = 1, #info, 2 do
    if info[i] == 'entries-added' then added = info[i + 1] end
    if info[i] == 'length' then length = info[i + 1] end
  end
  trimmed = added - length
end
return {now, entries, trimmed, head}"
);

/// A blocked `XREAD` that wakes the reader when the shard has something new.
type Wake =
    std::pin::Pin<Box<dyn Future<Output = redis::RedisResult<Option<StreamReadReply>>> + Send>>;

/// What a reader tells the merge.
pub enum ReaderEvent {
    Read(ShardRead),
    /// The stream's epoch is not the one the merge reads in (Redis lost its data).
    Epoch(String),
}

pub struct ShardReader {
    pub bus: Arc<RedisBus>,
    pub shard: usize,
    pub run: u64,
    /// The epoch the merge reads in.
    pub epoch: String,
    /// Read after this position; `None`: from the beginning.
    pub from: Option<Position>,
    /// Where this reader started (to tell whether the stream was trimmed past it).
    pub from_at_start: Option<Position>,
    pub to: mpsc::Sender<ReaderEvent>,
    /// The merge wants a newer watermark (or lifted a pause).
    pub nudge: Arc<Notify>,
    /// The merge holds enough of this shard: read nothing until it says.
    pub paused: Arc<AtomicBool>,
}

impl ShardReader {
    /// Read until `stop`, reconnecting with backoff from the last entry read.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        // Each reader is a new start of the shard: its first read checks for trimming.
        let mut first = true;
        loop {
            let outcome = tokio::select! {
                () = stop.cancelled() => return,
                outcome = self.read_until_error(&mut first, &stop) => outcome,
            };
            match outcome {
                Ok(true) => backoff = BACKOFF_MIN,
                Ok(false) => {}
                Err(e) => {
                    self.bus.status.reading.store(false, Ordering::Relaxed);
                    self.bus.status.set_error(&e);
                    tracing::warn!(error = %e, shard = self.shard, retry_in_ms = backoff.as_millis() as u64, "redis shard unavailable");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Read until an error or a move of the primary; `Ok(true)` if something was read.
    async fn read_until_error(
        &mut self,
        first: &mut bool,
        stop: &CancellationToken,
    ) -> redis::RedisResult<bool> {
        let connector = self.bus.connector.clone();
        let mut moved = connector.moved();
        moved.mark_unchanged();
        let wake = connector.dedicated(Duration::from_secs(10)).await?;
        let mut conn = self.bus.connection();
        let current = self.bus.epoch(&mut conn).await?;
        if current != self.epoch {
            let _ = self.to.send(ReaderEvent::Epoch(current)).await;
            // The merge starts every reader again in the new epoch.
            stop.cancelled().await;
            return Ok(false);
        }
        self.bus.status.reading.store(true, Ordering::Relaxed);
        let shards = self.bus.shards();
        let key = self.bus.shard_keys[self.shard].clone();
        let script = redis::Script::new(READ);
        let mut pending_wake: Option<Wake> = None;
        let mut last_now = 0;
        let mut nudged = false;
        loop {
            if moved.has_changed().unwrap_or(false) {
                tracing::info!(
                    shard = self.shard,
                    "the redis primary moved; the shard reader reconnects"
                );
                return Ok(true);
            }
            while self.paused.load(Ordering::Relaxed) {
                tokio::select! {
                    () = self.nudge.notified() => {}
                    () = stop.cancelled() => return Ok(true),
                }
            }
            let from = match self.from {
                Some(p) => format!("({}", entry_id(p, shards)),
                None => "-".to_owned(),
            };
            let (now, entries, trimmed, head): (u64, StreamRangeReply, i64, String) = if *first {
                // Once per start of a shard: the script, which also says what was trimmed.
                script
                    .key(&key)
                    .arg(&from)
                    .arg(READ_COUNT)
                    .arg("1")
                    .invoke_async(&mut conn)
                    .await?
            } else {
                // A transaction, as atomic as the script and cheaper for Redis (no Lua copy
                // of the entries); one key, so one slot on a cluster.
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("TIME")
                    .cmd("XRANGE")
                    .arg(&key)
                    .arg(&from)
                    .arg("+")
                    .arg("COUNT")
                    .arg(READ_COUNT);
                let ((secs, micros), entries): ((u64, u64), StreamRangeReply) =
                    pipe.query_async(&mut conn).await?;
                (secs * 1000 + micros / 1000, entries, 0, String::new())
            };
            let full = entries.ids.len() >= READ_COUNT;
            let first_position = entries
                .ids
                .first()
                .and_then(|e| position(&e.id, self.shard, shards));
            let last_position = entries
                .ids
                .last()
                .and_then(|e| position(&e.id, self.shard, shards));
            let records = self.bus.records(&self.epoch, entries.ids, self.shard);
            if last_position.is_some() {
                self.from = last_position;
            }
            let watermark = match last_position {
                Some(last) if full => Position {
                    major: last.major,
                    minor: last.minor + 1,
                },
                _ => Position {
                    major: now,
                    minor: 0,
                },
            };
            // Trimmed past where this start reads from: replays from before the stream's
            // first entry cannot be exact.
            let head = position(&head, self.shard, shards).or(first_position);
            let trimmed_before = match (*first && trimmed > 0, self.from_at_start) {
                (false, _) => None,
                (true, None) => Some(head.unwrap_or(watermark)),
                (true, Some(cursor)) => head.filter(|h| *h > cursor),
            };
            *first = false;
            let progressed = !records.is_empty() || now != last_now;
            last_now = now;
            let event = ReaderEvent::Read(ShardRead {
                shard: self.shard,
                run: self.run,
                records,
                watermark,
                complete: !full,
                trimmed_before,
            });
            if self.to.send(event).await.is_err() {
                return Ok(true);
            }
            if full {
                continue;
            }
            // Asked for a newer watermark within the same millisecond: the next one is
            // a millisecond away.
            if nudged && !progressed {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // One blocked XREAD at a time: a nudge leaves it waiting (a dropped one would
            // still block its connection in Redis, and the next would queue behind it).
            let woken = pending_wake.get_or_insert_with(|| {
                let cursor = self
                    .from
                    .map_or_else(|| "0-0".to_owned(), |p| entry_id(p, shards));
                let (mut wake, key) = (wake.clone(), key.clone());
                Box::pin(async move {
                    let wait = StreamReadOptions::default().block(1000).count(1);
                    redis::AsyncCommands::xread_options::<_, _, Option<StreamReadReply>>(
                        &mut wake,
                        &[&key],
                        &[&cursor],
                        &wait,
                    )
                    .await
                })
            });
            nudged = tokio::select! {
                woke = woken => {
                    pending_wake = None;
                    let n = woke?.map_or(0, |r| r.keys.iter().map(|k| k.ids.len()).sum::<usize>());
                    self.bus.status.entries_read.fetch_add(n as u64, Ordering::Relaxed);
                    false
                }
                () = self.nudge.notified() => true,
                () = stop.cancelled() => return Ok(true),
            };
        }
    }
}
