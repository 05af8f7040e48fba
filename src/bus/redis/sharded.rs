//! Reading sharded streams (`redis_stream_shards` > 1): a reader for each shard the router
//! wants ([`crate::shards::Wanted`]), and their reads merged into one order (`merge`).
//!
//! The router learns which shards are in the order through [`Inbound::Shards`], after the
//! history of a newly read shard ([`Inbound::ShardBackfill`]) and before its first live log,
//! all on the one queue: a subscription the router held until then misses nothing and sees
//! nothing twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::Sender;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::merge::Merge;
use super::shard_reader::{ReaderEvent, ShardReader};
use super::{BACKOFF_MAX, BACKOFF_MIN, RedisBus};
use crate::log_entry::{LogRecord, Position};
use crate::router::Inbound;
use crate::shards::Wanted;

/// Entries a shard may have waiting for the others before its reader pauses (Redis keeps
/// the rest): a shard that cannot be read (its primary failing over) holds back every
/// other shard of the instances that read it, and must not make them grow without bound.
const MAX_QUEUED: usize = 10_000;

/// A running shard reader.
struct Running {
    stop: CancellationToken,
    nudge: Arc<Notify>,
    paused: Arc<AtomicBool>,
}

/// History read from a joining shard and not handed on yet, and where it may be
/// incomplete.
type Held = (Vec<Arc<LogRecord>>, Option<Position>);

/// A joining shard's history is handed on in pieces of at most this many entries.
const HELD_BACKFILL: usize = 50_000;

/// The position right before `p` (the drain waits for a position it can compare with `>=`).
fn just_before(p: Position) -> Position {
    match p.minor {
        0 => Position {
            major: p.major.saturating_sub(1),
            minor: u64::MAX,
        },
        n => Position {
            major: p.major,
            minor: n - 1,
        },
    }
}

/// The router's answer: the shards in the order, for the request `want`.
fn shards_ready(merge: &Merge, want: Wanted) -> Inbound {
    Inbound::Shards {
        ready: merge.in_order(),
        generation: want.generation,
    }
}

impl RedisBus {
    /// Read the shards `wanted` names until `stop`, merged, into `router`.
    pub async fn sharded_reader(
        self: Arc<Self>,
        router: Sender<Inbound>,
        mut wanted: watch::Receiver<Wanted>,
        stop: CancellationToken,
    ) {
        let mut backoff = BACKOFF_MIN;
        let (mut epoch, start) = loop {
            let started = tokio::select! {
                () = stop.cancelled() => return,
                started = self.sharded_start() => started,
            };
            match started {
                Ok(v) => break v,
                Err(e) => {
                    self.status.set_error(&e);
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "redis shards unavailable");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        };
        self.status.reading.store(true, Ordering::Relaxed);
        tracing::info!(stream = %self.stream, shards = self.shards(), epoch = %epoch, "reading the redis shards the clients want");
        self.forward_reliably(&router, Inbound::Epoch(epoch.clone()))
            .await;
        let n = self.shards();
        let mut merge = Merge::new(n, start);
        // Few reads in flight: a full shard's pause takes effect soon.
        let (tx, mut rx) = mpsc::channel(8);
        let mut readers: Vec<Option<Running>> = (0..n).map(|_| None).collect();
        // Per shard: history read while it joins, not yet handed to the router.
        let mut held: Vec<Held> = (0..n).map(|_| Held::default()).collect();
        let mut run = 0u64;
        loop {
            let want = *wanted.borrow_and_update();
            for (shard, reader) in readers.iter_mut().enumerate() {
                let wanted_now = want.mask & (1 << shard) != 0;
                if wanted_now && reader.is_none() {
                    run += 1;
                    let from = merge.activate(shard, run);
                    let running = Running {
                        stop: stop.child_token(),
                        nudge: Arc::new(Notify::new()),
                        paused: Arc::new(AtomicBool::new(false)),
                    };
                    let shard_reader = ShardReader {
                        bus: self.clone(),
                        shard,
                        run,
                        epoch: epoch.clone(),
                        from,
                        from_at_start: from,
                        to: tx.clone(),
                        nudge: running.nudge.clone(),
                        paused: running.paused.clone(),
                    };
                    tokio::spawn(shard_reader.run(running.stop.clone()));
                    *reader = Some(running);
                } else if !wanted_now && let Some(running) = reader.take() {
                    running.stop.cancel();
                    merge.deactivate(shard);
                    // What it read is handed on (the next reader starts after it).
                    self.hand_backfill(&router, &mut held[shard]).await;
                }
            }
            self.reading_shards.store(merge.active(), Ordering::Relaxed);
            self.forward_reliably(&router, shards_ready(&merge, want))
                .await;
            // Until the wanted shards change: reads.
            loop {
                let event = tokio::select! {
                    () = stop.cancelled() => return,
                    changed = wanted.changed() => match changed {
                        Ok(()) => break,
                        Err(_) => return,
                    },
                    event = rx.recv() => match event {
                        Some(event) => event,
                        None => return,
                    },
                };
                match event {
                    ReaderEvent::Read(read) => {
                        let shard = read.shard;
                        let taken = merge.take(read);
                        let pending = &mut held[shard];
                        pending.0.extend(taken.backfill);
                        pending.1 = pending.1.max(taken.unknown_before);
                        // A joining shard's history goes in one piece once it has caught
                        // up (each piece costs the router a merge into its history), or
                        // every HELD_BACKFILL entries.
                        let joining = merge.active() & !merge.in_order() & (1 << shard) != 0;
                        if !joining || pending.0.len() >= HELD_BACKFILL {
                            self.hand_backfill(&router, pending).await;
                        }
                        if taken.retry
                            && let Some(r) = &readers[shard]
                        {
                            r.nudge.notify_one();
                        }
                        let released = merge.release();
                        // For the shutdown drain: everything before the bound is handed on.
                        self.read.send_replace(just_before(merge.released()));
                        if !released.is_empty() {
                            self.forward_reliably(&router, Inbound::Logs(released))
                                .await;
                        }
                        let holding = merge.holding_back();
                        let full = merge.full(MAX_QUEUED);
                        for (shard, reader) in readers.iter().enumerate() {
                            let Some(r) = reader else { continue };
                            let bit = 1 << shard;
                            let was_paused = r.paused.swap(full & bit != 0, Ordering::Relaxed);
                            if holding & bit != 0 || (was_paused && full & bit == 0) {
                                r.nudge.notify_one();
                            }
                        }
                        if taken.caught_up {
                            self.forward_reliably(&router, shards_ready(&merge, want))
                                .await;
                        }
                    }
                    ReaderEvent::Epoch(new) if new != epoch => {
                        tracing::warn!(old = %epoch, new = %new, "the redis stream has a new epoch (its data was lost?): older offsets cannot be replayed");
                        for running in readers.iter_mut().filter_map(Option::take) {
                            running.stop.cancel();
                        }
                        merge.reset();
                        for shard in 0..n {
                            merge.deactivate(shard);
                        }
                        held.iter_mut().for_each(|h| *h = Held::default());
                        epoch = new;
                        self.forward_reliably(&router, Inbound::Epoch(epoch.clone()))
                            .await;
                        break;
                    }
                    ReaderEvent::Epoch(_) => {}
                }
            }
        }
    }

    /// Hand `held` to the router's history, if there is anything.
    async fn hand_backfill(&self, router: &Sender<Inbound>, held: &mut Held) {
        let (logs, unknown_before) = std::mem::take(held);
        if !logs.is_empty() || unknown_before.is_some() {
            self.forward_reliably(
                router,
                Inbound::ShardBackfill {
                    logs,
                    unknown_before,
                },
            )
            .await;
        }
    }

    /// Before reading shards: the shard count agreed, the stream's epoch, and Redis's clock
    /// (what was appended before it is history).
    async fn sharded_start(&self) -> redis::RedisResult<(String, Position)> {
        self.check_shards().await.map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Client, "shards", e.to_string()))
        })?;
        let mut conn = self.connection();
        let epoch = self.epoch(&mut conn).await?;
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
        let start = Position {
            major: secs * 1000 + micros / 1000,
            minor: 0,
        };
        Ok((epoch, start))
    }
}
