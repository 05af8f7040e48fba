//! The Redis Stream of logs: the cluster's durable bus and its history.
//!
//! - Ingest appends each accepted log with `XADD … MAXLEN ~ history_max_logs` (one atomic
//!   pipeline per request) and answers 202 only once Redis has taken them all.
//! - Every instance reads the stream with `XREAD BLOCK` on a connection of its own, from the
//!   last entry it read, so a Redis blip loses nothing; at start it first loads what the
//!   stream still holds into its history (not delivered: history only).
//! - A log's offset is its stream entry id, in the stream's epoch: a random value kept in
//!   Redis beside the stream (`<stream>:epoch`). A Redis that lost its data gets a new epoch,
//!   so offsets from before can never replay the wrong logs.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crossbeam_channel::Sender;
use redis::AsyncCommands;
use redis::streams::{StreamId, StreamReadOptions, StreamReadReply};
use tokio_util::sync::CancellationToken;

use super::connector::BusConn;
use super::{BACKOFF_MAX, BACKOFF_MIN, PUBLISH_TIMEOUT, RedisBus};
use crate::bus::{PublishError, PublishKey, Published};
use crate::log_entry::{LogRecord, Position, Stamp};
use crate::router::Inbound;

/// Entries per read.
const READ_COUNT: usize = 1000;

/// How often a reader on a replica checks that the replica is in sync with its primary.
const IN_SYNC_EVERY: Duration = Duration::from_millis(250);

/// Whether the node behind `conn` may be read: a primary, or a replica whose link to its
/// primary is up (`INFO replication`); an error otherwise, so the reader reconnects.
async fn in_sync(conn: &mut BusConn) -> redis::RedisResult<()> {
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(conn)
        .await?;
    let primary = info.lines().any(|l| l.trim() == "role:master");
    let linked = info.lines().any(|l| l.trim() == "master_link_status:up")
        && !info
            .lines()
            .any(|l| l.trim() == "master_sync_in_progress:1");
    if primary || linked {
        Ok(())
    } else {
        Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "the replica read is not in sync with its primary",
        )))
    }
}

/// Entry id `id` (`1700000000000-3`) of shard `shard` of `shards` as a position: the
/// milliseconds, then the sequence number times the shard count plus the shard. Positions
/// of all shards are then ordered (by time first) and name their shard; with one shard a
/// position is the entry id itself.
pub(super) fn position(id: &str, shard: usize, shards: usize) -> Option<Position> {
    let (ms, n) = id.split_once('-')?;
    let n: u64 = n.parse().ok()?;
    Some(Position {
        major: ms.parse().ok()?,
        minor: n.checked_mul(shards as u64)?.checked_add(shard as u64)?,
    })
}

/// The entry id of position `p` of a shard of `shards` (see [`position`]).
pub(super) fn entry_id(p: Position, shards: usize) -> String {
    format!("{}-{}", p.major, p.minor / shards.max(1) as u64)
}

/// Append logs unless their key was published before, and record the key: one step
/// (`EVAL`: atomic in Redis), so a key is never recorded without its logs nor its logs
/// appended twice. `KEYS`: the stream, the key; `ARGV`: the stream's `MAXLEN`, the key's
/// lifetime in ms, then one log entry per argument. Nil if the key was published already,
/// else the new entries' ids.
///
/// One step also keeps the seed channel in publish order: each instance reads the channel in
/// order and finishes each message's script (or gives it up after its tries) before the
/// next, so when an instance runs the script for a message, the one before it, which it
/// also read, is in the stream already.
const APPEND_ONCE: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then
  -- A write, so that a WAIT after this covers the first append of the key (WAIT counts the
  -- writes of its own connection, and that one may have come through another).
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return false
end
local ids = {}
for i = 3, #ARGV do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[i])
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
return ids
";

/// Append logs: [`APPEND_ONCE`] without its key. `KEYS`: the stream; `ARGV`: its `MAXLEN`,
/// then one log entry per argument. The new entries' ids.
const APPEND_ALL: &str = r"
local ids = {}
for i = 2, #ARGV do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[i])
end
return ids
";

impl RedisBus {
    /// Append `logs` to the stream, all or none; with `key`, only if the key was not
    /// published before. Returns once Redis has them (and, with `redis_min_replicas`, that
    /// many replicas too).
    ///
    /// With shards, each shard's part is one script, under the key's name in that shard,
    /// so a retry appends only the parts that are missing. On one server the scripts run as
    /// one transaction; on a Redis Cluster the shards live on several primaries and a 503
    /// may leave some parts appended (a retry with the same `Idempotency-Key` completes it
    /// without doubles).
    pub async fn publish_logs(
        &self,
        logs: &[Arc<LogRecord>],
        key: Option<&PublishKey>,
    ) -> Result<Published, PublishError> {
        if self.shards() > 1 {
            self.check_shards().await?;
            return self.publish_sharded(logs, key).await;
        }
        if self.min_replicas > 0 {
            return self.publish_replicated(0, logs, key).await;
        }
        let Some(key) = key else {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for log in logs {
                pipe.add_command(self.xadd(0, log));
            }
            let ids = self
                .appended(pipe.query_async::<Vec<String>>(&mut self.connection()))
                .await?;
            self.note_published(0, &ids);
            return Ok(Published::Appended);
        };
        let eval = self.append_script(0, logs, Some(key));
        let ids = self
            .appended(eval.query_async::<Option<Vec<String>>>(&mut self.connection()))
            .await?;
        Ok(match ids {
            Some(ids) => {
                self.note_published(0, &ids);
                Published::Appended
            }
            None => Published::AlreadyPublished,
        })
    }

    /// [`Self::publish_logs`] over several shards: the logs grouped by shard (in order), one
    /// script per group.
    async fn publish_sharded(
        &self,
        logs: &[Arc<LogRecord>],
        key: Option<&PublishKey>,
    ) -> Result<Published, PublishError> {
        let mut parts: Vec<Vec<Arc<LogRecord>>> = vec![Vec::new(); self.shards()];
        for log in logs {
            parts[crate::shards::shard_of(&log.device_id, self.shards())].push(log.clone());
        }
        let parts: Vec<(usize, Vec<Arc<LogRecord>>)> = parts
            .into_iter()
            .enumerate()
            .filter(|(_, p)| !p.is_empty())
            .collect();
        let answers: Vec<Published> = if self.min_replicas > 0 {
            let waits = parts
                .iter()
                .map(|(shard, part)| self.publish_replicated(*shard, part, key));
            futures_util::future::try_join_all(waits).await?
        } else if self.connector.is_cluster() {
            // A cluster pipeline goes to one node: one per shard, side by side.
            let appends = parts
                .iter()
                .map(|(shard, part)| self.publish_part(*shard, part, key));
            futures_util::future::try_join_all(appends).await?
        } else {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for (shard, part) in &parts {
                match key {
                    Some(_) => {
                        pipe.add_command(self.append_script(*shard, part, key));
                    }
                    // Without a key, plain XADDs: cheaper for Redis than a script's.
                    None => {
                        for log in part {
                            pipe.add_command(self.xadd(*shard, log));
                        }
                    }
                }
            }
            let answers: Vec<Option<Vec<String>>> = match key {
                Some(_) => {
                    self.appended(pipe.query_async(&mut self.connection()))
                        .await?
                }
                None => {
                    let mut ids = self
                        .appended(pipe.query_async::<Vec<String>>(&mut self.connection()))
                        .await?
                        .into_iter();
                    parts
                        .iter()
                        .map(|(_, part)| Some(ids.by_ref().take(part.len()).collect()))
                        .collect()
                }
            };
            parts
                .iter()
                .zip(answers)
                .map(|((shard, _), ids)| match ids {
                    Some(ids) => {
                        self.note_published(*shard, &ids);
                        Published::Appended
                    }
                    None => Published::AlreadyPublished,
                })
                .collect()
        };
        // Already published only if every part was (a retry after a partial append appends
        // the rest: that is a new append).
        Ok(
            if answers.iter().all(|a| *a == Published::AlreadyPublished) {
                Published::AlreadyPublished
            } else {
                Published::Appended
            },
        )
    }

    /// Append `logs` (all of shard `shard`) in one step: the script under `key`, else one
    /// transaction of `XADD`s.
    async fn publish_part(
        &self,
        shard: usize,
        logs: &[Arc<LogRecord>],
        key: Option<&PublishKey>,
    ) -> Result<Published, PublishError> {
        let ids = match key {
            Some(_) => {
                let eval = self.append_script(shard, logs, key);
                self.appended(eval.query_async::<Option<Vec<String>>>(&mut self.connection()))
                    .await?
            }
            None => {
                let mut pipe = redis::pipe();
                pipe.atomic();
                for log in logs {
                    pipe.add_command(self.xadd(shard, log));
                }
                Some(
                    self.appended(pipe.query_async::<Vec<String>>(&mut self.connection()))
                        .await?,
                )
            }
        };
        Ok(match ids {
            Some(ids) => {
                self.note_published(shard, &ids);
                Published::Appended
            }
            None => Published::AlreadyPublished,
        })
    }

    /// Append as [`Self::publish_logs`] does, then `WAIT` for `redis_min_replicas`: the
    /// script goes into the next group of `replicated` (one pipeline of scripts and one
    /// `WAIT` on the appends' own connection). Fewer confirmations in time: 503. The logs are
    /// on the primary then and may still be delivered; a retry with the same
    /// `Idempotency-Key` does not append them twice, and its `WAIT` covers the first append
    /// too (the script renews the key: a write).
    async fn publish_replicated(
        &self,
        shard: usize,
        logs: &[Arc<LogRecord>],
        key: Option<&PublishKey>,
    ) -> Result<Published, PublishError> {
        let eval = self.append_script(shard, logs, key);
        let Some(appends) = &self.replicated else {
            return Err(PublishError::Closed);
        };
        // The group before this one may be waiting too: two waits, and Redis's answer.
        let within = PUBLISH_TIMEOUT + self.replicas_timeout * 2;
        let (ids, confirmed) = match tokio::time::timeout(within, appends.append(eval)).await {
            Ok(answer) => answer.inspect_err(|e| self.status.set_error(e))?,
            Err(_) => {
                return Err(PublishError::Unavailable(
                    "redis did not answer in time".into(),
                ));
            }
        };
        if let Some(ids) = &ids {
            self.note_published(shard, ids);
        }
        if confirmed < self.min_replicas {
            self.status
                .replicas_short
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(PublishError::Unavailable(format!(
                "only {confirmed} of the {} replicas (redis_min_replicas) confirmed the logs within {} ms; they may still be delivered, and a retry with the same Idempotency-Key will not append them twice",
                self.min_replicas,
                self.replicas_timeout.as_millis()
            )));
        }
        Ok(match ids {
            Some(_) => Published::Appended,
            None => Published::AlreadyPublished,
        })
    }

    /// `XADD` of `log` to shard `shard`, trimmed to about `history_max_logs`.
    fn xadd(&self, shard: usize, log: &LogRecord) -> redis::Cmd {
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&self.shard_keys[shard])
            .arg("MAXLEN")
            .arg("~")
            .arg(self.max_len)
            .arg("*")
            .arg("e")
            .arg(log.json.get());
        xadd
    }

    /// The script that appends `logs` to shard `shard`: [`APPEND_ONCE`] under `key` (named
    /// in the shard's slot), else [`APPEND_ALL`].
    fn append_script(
        &self,
        shard: usize,
        logs: &[Arc<LogRecord>],
        key: Option<&PublishKey>,
    ) -> redis::Cmd {
        let stream = &self.shard_keys[shard];
        let mut eval = redis::cmd("EVAL");
        match key {
            Some(key) => {
                eval.arg(APPEND_ONCE)
                    .arg(2)
                    .arg(stream)
                    .arg(key.redis_name(stream))
                    .arg(self.max_len)
                    .arg(key.ttl.as_millis() as u64);
            }
            None => {
                eval.arg(APPEND_ALL).arg(1).arg(stream).arg(self.max_len);
            }
        }
        for log in logs {
            eval.arg(log.json.get());
        }
        eval
    }

    /// The answer to an append, within [`PUBLISH_TIMEOUT`].
    async fn appended<T>(
        &self,
        reply: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, PublishError> {
        match tokio::time::timeout(PUBLISH_TIMEOUT, reply).await {
            Ok(Ok(ids)) => Ok(ids),
            Ok(Err(e)) => {
                self.status.set_error(&e);
                Err(PublishError::Unavailable(format!("redis: {e}")))
            }
            Err(_) => Err(PublishError::Unavailable(
                "redis did not answer in time".into(),
            )),
        }
    }

    /// Remember the newest entry this instance appended to `shard`, for [`Self::drain`].
    fn note_published(&self, shard: usize, ids: &[String]) {
        if let Some(last) = ids.last().and_then(|id| position(id, shard, self.shards())) {
            let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
            published[shard] = published[shard].max(last);
        }
    }

    /// Wait until this instance has read back everything it appended to the shards it
    /// reads (shutdown: so the router drains it too; what no client here wants needs no
    /// drain). `false` if `timeout` passed first.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let reading = self.reading_shards();
        let target = self
            .published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .enumerate()
            .filter(|(shard, _)| reading & (1 << shard) != 0)
            .map(|(_, p)| *p)
            .max()
            .unwrap_or_default();
        let mut read = self.read.subscribe();
        tokio::time::timeout(timeout, read.wait_for(|p| *p >= target))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Read the stream until `stop`, reconnecting with backoff from the last entry read.
    pub async fn stream_reader(self: Arc<Self>, router: Sender<Inbound>, stop: CancellationToken) {
        let mut epoch: Option<String> = None;
        let mut last: Option<String> = None;
        let mut backoff = BACKOFF_MIN;
        loop {
            let outcome = tokio::select! {
                () = stop.cancelled() => return,
                outcome = self.read_once(&router, &mut epoch, &mut last) => outcome,
            };
            if let Err(e) = outcome {
                self.status.set_error(&e);
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "redis stream unavailable");
            }
            if self.status.reading.swap(false, Ordering::Relaxed) {
                backoff = BACKOFF_MIN;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// The stream's epoch, created if the stream has none (a new or wiped Redis).
    pub(super) async fn epoch(&self, conn: &mut BusConn) -> redis::RedisResult<String> {
        let key = format!("{}:epoch", self.stream);
        let _: bool = conn.set_nx(&key, crate::history::new_epoch()).await?;
        conn.get(&key).await
    }

    /// Stream entries of shard `shard` as records stamped in `epoch`; an entry that is not a
    /// log is counted as malformed and skipped.
    pub(super) fn records(
        &self,
        epoch: &str,
        entries: Vec<StreamId>,
        shard: usize,
    ) -> Vec<Arc<LogRecord>> {
        self.status
            .entries_read
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let parsed = position(&entry.id, shard, self.shards()).and_then(|p| {
                let text: String = entry.get("e")?;
                let value = serde_json::from_str(&text).ok()?;
                let record = LogRecord::from_value_with_id(value, || entry.id.clone()).ok()?;
                let _ = record.stamp.set(Stamp::new(epoch, p));
                Some(Arc::new(record))
            });
            match parsed {
                Some(r) => out.push(r),
                None => self.status.malformed(
                    &self.shard_keys[shard],
                    &format!("stream entry {} is not a log entry", entry.id),
                ),
            }
        }
        out
    }

    /// Load what the stream holds now into history (oldest first, not delivered); returns
    /// the last entry id loaded, from which live reading starts.
    async fn load_history(
        &self,
        conn: &mut BusConn,
        router: &Sender<Inbound>,
        epoch: &str,
    ) -> redis::RedisResult<String> {
        let newest: redis::streams::StreamRangeReply =
            conn.xrevrange_count(&self.stream, "+", "-", 1).await?;
        let Some(boundary) = newest.ids.first().map(|e| e.id.clone()) else {
            return Ok("0-0".to_owned());
        };
        let mut from = "-".to_owned();
        loop {
            let reply: redis::streams::StreamRangeReply = conn
                .xrange_count(&self.stream, &from, &boundary, READ_COUNT)
                .await?;
            let n = reply.ids.len();
            if let Some(entry) = reply.ids.last() {
                from = format!("({}", entry.id);
            }
            let records = self.records(epoch, reply.ids, 0);
            if !records.is_empty() {
                self.forward_reliably(router, Inbound::Backfill(records))
                    .await;
            }
            if n < READ_COUNT {
                break;
            }
        }
        if let Some(p) = position(&boundary, 0, 1) {
            self.read.send_replace(p);
        }
        Ok(boundary)
    }

    /// Hand to the router, waiting as long as it takes: the stream is durable, nothing read
    /// from it is dropped (the reader stops reading meanwhile: back-pressure).
    pub(super) async fn forward_reliably(&self, router: &Sender<Inbound>, msg: Inbound) {
        let mut msg = match router.try_send(msg) {
            Ok(()) | Err(crossbeam_channel::TrySendError::Disconnected(_)) => return,
            Err(crossbeam_channel::TrySendError::Full(msg)) => msg,
        };
        loop {
            let tx = router.clone();
            let sent =
                tokio::task::spawn_blocking(move || tx.send_timeout(msg, Duration::from_secs(1)))
                    .await;
            match sent {
                Ok(Err(crossbeam_channel::SendTimeoutError::Timeout(back))) => {
                    tracing::warn!(
                        "the router queue has been full for 1 s; the stream reader waits"
                    );
                    msg = back;
                }
                _ => return,
            }
        }
    }

    async fn read_once(
        &self,
        router: &Sender<Inbound>,
        epoch: &mut Option<String>,
        last: &mut Option<String>,
    ) -> redis::RedisResult<()> {
        // Watched from before the lookup, so a move meanwhile is not missed.
        let mut moved = self.connector.moved();
        moved.mark_unchanged();
        let mut conn = self.connector.dedicated(Duration::from_secs(10)).await?;
        let on_replica = self.connector.reads_replicas();
        if on_replica {
            in_sync(&mut conn).await?;
        }
        // From the primary (the reader may be on a replica, which takes no writes).
        let current = self.epoch(&mut self.connection()).await?;
        if epoch.as_deref() != Some(current.as_str()) {
            let first_start = epoch.is_none();
            if !first_start {
                tracing::warn!(old = ?epoch, new = %current, "the redis stream has a new epoch (its data was lost?): older offsets cannot be replayed");
            }
            *epoch = Some(current.clone());
            self.forward_reliably(router, Inbound::Epoch(current.clone()))
                .await;
            *last = if first_start {
                // What the stream held when this instance started is history: loaded, not
                // delivered. Everything after it is live.
                Some(self.load_history(&mut conn, router, &current).await?)
            } else {
                // A new stream: all of it is new, deliver it.
                Some("0-0".to_owned())
            };
        }
        self.status.reading.store(true, Ordering::Relaxed);
        tracing::info!(stream = %self.stream, epoch = %current, "reading the redis stream");
        let options = StreamReadOptions::default().block(1000).count(READ_COUNT);
        let mut checked = std::time::Instant::now();
        loop {
            // The primary moved (Sentinel): read from the new one (from the last entry read;
            // the replica it was has everything the old one had confirmed).
            if moved.has_changed().unwrap_or(false) {
                tracing::info!("the redis primary moved; the stream reader reconnects");
                return Ok(());
            }
            // A replica that lost its primary (or is loading a new one's data) still answers
            // with what it has, which may be a demoted primary's unconfirmed appends.
            if on_replica && checked.elapsed() >= IN_SYNC_EVERY {
                in_sync(&mut conn).await?;
                checked = std::time::Instant::now();
            }
            let from = last.clone().unwrap_or_else(|| "0-0".into());
            let reply: Option<StreamReadReply> = conn
                .xread_options(&[&self.stream], &[&from], &options)
                .await?;
            let entries: Vec<StreamId> = reply
                .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
                .unwrap_or_default();
            let Some(newest) = entries.last().map(|e| e.id.clone()) else {
                continue;
            };
            let records = self.records(&current, entries, 0);
            if !records.is_empty() {
                self.forward_reliably(router, Inbound::Logs(records)).await;
            }
            if let Some(p) = position(&newest, 0, 1) {
                self.read.send_replace(p);
            }
            *last = Some(newest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_are_positions() {
        assert_eq!(
            position("1700000000000-3", 0, 1),
            Some(Position {
                major: 1_700_000_000_000,
                minor: 3
            })
        );
        assert_eq!(position("nope", 0, 1), None);
        // Shard 5 of 8: ordered by time, then sequence, then shard; and back to the id.
        let p = position("1700000000000-3", 5, 8).unwrap();
        assert_eq!(p.minor, 3 * 8 + 5);
        assert!(p > position("1700000000000-3", 4, 8).unwrap());
        assert!(p < position("1700000000000-4", 0, 8).unwrap());
        assert!(p < position("1700000000001-0", 0, 8).unwrap());
        assert_eq!(entry_id(p, 8), "1700000000000-3");
    }
}
