//! The Redis bus shared by several logstream instances.
//!
//! - Logs go through a Redis Stream ([`stream`]): ingest answers 202 once Redis has taken
//!   them, every instance reads the stream and delivers to its own clients, and the stream
//!   is the history any instance replays from. With `redis_stream_shards` the logs are
//!   spread over one stream per shard, and an instance reads only the shards its clients
//!   need ([`sharded`], [`shard_reader`], [`merge`]).
//! - The seed's pub/sub channels keep working: what is published on `log:new` is handed, in
//!   order, to the seed-channel source (`ingest::seed_channel`), which accepts it like any
//!   other ingest; `device:status` is delivered as it comes, and an admin channel carries
//!   cluster-wide operations.
//!
//! Publishing goes through one multiplexed connection (created lazily, so a Redis that is
//! down at start does not stop the server), on one server, the primary Sentinel names, or a
//! Redis Cluster ([`connector`]). Reading is a dedicated pub/sub connection in a task
//! that reconnects with exponential backoff and resubscribes (and when the primary moves);
//! while it is down the instance reports itself degraded (`/api/ws/health`) and keeps
//! serving its sockets. Sessions ([`sessions`]) and the link between instances
//! ([`cluster_link`]) live in Redis too.
//!
//! Everything read from a channel is validated like HTTP ingest (with the validators of
//! [`crate::log_entry`]). A malformed message is counted ([`RedisStatus::malformed`]), logged
//! at most every 10 s, and skipped.

pub mod cluster_link;
pub mod connector;
pub mod merge;
pub mod replicated;
pub mod sessions;
pub mod shard_reader;
pub mod sharded;
pub mod stream;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::ConnectionManagerConfig;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::bus::PublishError;
use crate::config::Config;
use crate::log_entry::{Position, device_status};
use crate::protocol::{ClusterOp, DeviceStatus};
use crate::router::Inbound;
use connector::{BusConn, Connector, Role, Target, hash_tagged};

/// How long one publish may take before ingest answers 503.
pub(super) const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
pub(super) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a message read from Redis may wait for room in the router queue.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(1);

/// Lua that sets `now` to Redis's clock in ms (so the instances' clocks need not agree).
macro_rules! lua_now_ms {
    () => {
        "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"
    };
}
use lua_now_ms;

/// `url` with its credentials (everything before the last `@`, after the scheme) replaced,
/// for messages; also when the scheme is mistyped.
fn without_password(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_owned();
    };
    match url.find("://").filter(|s| *s < at) {
        Some(scheme) => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        None => format!("***@{}", &url[at + 1..]),
    }
}

/// Seed-channel messages read from Redis and waiting to be accepted; past it the subscriber
/// waits (and Redis buffers what the channel brings meanwhile).
const SEED_CHANNEL_QUEUE: usize = 64;
/// Cluster operations read and waiting to be served.
const ADMIN_QUEUE: usize = 256;

/// What the channels bring that the server serves itself: the seed channel's messages, raw
/// and in order (`ingest::seed_channel` accepts them), and cluster operations
/// (`cluster::serve_admin`).
pub struct Started {
    pub seed_logs: mpsc::Receiver<Vec<u8>>,
    pub admin: mpsc::Receiver<ClusterOp>,
}

/// Where the subscriber hands what the channels bring.
pub struct ChannelReaders {
    /// The seed channel's messages, raw and in order (`ingest::seed_channel` accepts them).
    pub seed_logs: mpsc::Sender<Vec<u8>>,
    /// Device statuses.
    pub router: Sender<Inbound>,
    /// Cluster operations.
    pub admin: mpsc::Sender<ClusterOp>,
}

#[derive(Debug, Clone)]
pub struct Channels {
    pub logs: String,
    pub status: String,
    pub admin: String,
}

/// Health and fault counters of the Redis link.
#[derive(Default)]
pub struct RedisStatus {
    /// The pub/sub subscriber is connected.
    pub connected: AtomicBool,
    /// The stream reader is connected.
    pub reading: AtomicBool,
    pub reconnects: AtomicU64,
    pub malformed: AtomicU64,
    /// Logs read from Redis that the router could not take within a second (counted, dropped).
    pub overflow_dropped: AtomicU64,
    /// Logs of seed-channel messages this instance could not put into the stream after its
    /// tries (another instance may have; if none could, they are lost).
    pub bridge_failed: AtomicU64,
    /// Appends answered 503 because fewer than `redis_min_replicas` confirmed them in time.
    pub replicas_short: AtomicU64,
    /// Stream entries this instance read from Redis (live, history and wake-ups): divided
    /// by the logs ingested, the cluster's read amplification.
    pub entries_read: AtomicU64,
    last_error: Mutex<Option<String>>,
    last_malformed_log: Mutex<Option<Instant>>,
}

impl RedisStatus {
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn set_error(&self, e: impl ToString) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
    }

    /// A malformed message on `channel`: counted, and logged at most every 10 s.
    pub fn malformed(&self, channel: &str, why: &str) {
        let n = self.malformed.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self
            .last_malformed_log
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            tracing::warn!(%channel, total = n, "skipping malformed message: {why}");
        }
    }
}

pub struct RedisBus {
    /// The way to Redis. Appends go through a connection of their own when they wait for
    /// replicas: `WAIT` holds its connection until the replicas answer, and must count only
    /// appends.
    pub(super) connector: Arc<Connector>,
    /// With `redis_min_replicas`: the appends' group commit (see `replicated`).
    pub(super) replicated: Option<replicated::ReplicatedAppends>,
    /// `redis_min_replicas` and `redis_min_replicas_timeout_ms`.
    pub(super) min_replicas: usize,
    pub(super) replicas_timeout: Duration,
    pub channels: Channels,
    /// The Redis Stream of logs; with shards, the prefix of theirs and the stream's epoch.
    pub(super) stream: String,
    /// The streams logs go to (`redis_stream_shards`): shard `i` is `shard_keys[i]`. One
    /// shard is `stream` itself.
    pub(super) shard_keys: Vec<String>,
    /// Whether this instance saw Redis agree to its shard count (see `check_shards`).
    pub(super) shards_agreed: AtomicBool,
    /// The shards this instance reads now (all with one shard).
    pub(super) reading_shards: AtomicU64,
    /// The stream is trimmed to about this many entries (`history_max_logs`).
    pub(super) max_len: usize,
    pub instance: String,
    pub status: RedisStatus,
    /// The newest stream position this instance added to each shard (for the shutdown
    /// drain).
    pub(super) published: Mutex<Vec<Position>>,
    /// The newest stream position this instance has read and handed to the router.
    pub(super) read: watch::Sender<Position>,
}

impl RedisBus {
    pub fn new(url: &str, config: &Config, instance: String) -> anyhow::Result<Arc<RedisBus>> {
        let shown = without_password(url);
        let target = Target::parse(url).map_err(|e| anyhow::anyhow!("redis_url {shown:?}: {e}"))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let min_replicas = config.redis.redis_min_replicas;
        let replicas_timeout = Duration::from_millis(config.redis.redis_min_replicas_timeout_ms);
        let connector = Connector::new(
            &target,
            manager_config,
            (min_replicas > 0).then_some(replicas_timeout),
        )
        .map_err(|e| anyhow::anyhow!("redis_url {shown:?}: {e}"))?;
        // In a cluster every key starts with the stream's name: one hash tag keeps them,
        // and the scripts that touch several, in one slot.
        let stream = if connector.is_cluster() {
            hash_tagged(&config.redis.redis_stream)
        } else {
            config.redis.redis_stream.clone()
        };
        let shards = config.redis.redis_stream_shards;
        if shards > 1 && min_replicas > 0 && connector.is_cluster() {
            anyhow::bail!(
                "redis_stream_shards > 1 with redis_min_replicas on a Redis Cluster is not supported: the shards live on several primaries and one WAIT covers one; use one shard, or redis_min_replicas = 0"
            );
        }
        // Each shard its own key, and on a cluster its own hash tag: the shards spread over
        // the primaries.
        let shard_keys = if shards == 1 {
            vec![stream.clone()]
        } else {
            (0..shards)
                .map(|i| {
                    let key = format!("{}:{i}", config.redis.redis_stream);
                    if connector.is_cluster() {
                        hash_tagged(&key)
                    } else {
                        key
                    }
                })
                .collect()
        };
        let replicated = (min_replicas > 0).then(|| {
            replicated::ReplicatedAppends::start(
                connector.commands(Role::Appends),
                min_replicas,
                replicas_timeout,
                PUBLISH_TIMEOUT + replicas_timeout,
            )
        });
        Ok(Arc::new(RedisBus {
            replicated,
            connector: Arc::new(connector),
            min_replicas,
            replicas_timeout,
            channels: Channels {
                logs: config.redis.redis_log_channel.clone(),
                status: config.redis.redis_status_channel.clone(),
                admin: config.redis.redis_admin_channel.clone(),
            },
            stream,
            reading_shards: AtomicU64::new(if shards == 1 { 1 } else { 0 }),
            published: Mutex::new(vec![Position::default(); shards]),
            shard_keys,
            shards_agreed: AtomicBool::new(false),
            max_len: config.history.history_max_logs,
            instance,
            status: RedisStatus::default(),
            read: watch::Sender::new(Position::default()),
        }))
    }

    /// `redis_min_replicas`: replicas that confirm each append before it is answered.
    pub fn min_replicas(&self) -> usize {
        self.min_replicas
    }

    /// A handle on the shared command connection (cheap to clone).
    pub fn connection(&self) -> BusConn {
        self.connector.commands(Role::Commands)
    }

    /// The way to Redis (the Sentinel watcher runs on it).
    pub fn connector(&self) -> &Arc<Connector> {
        &self.connector
    }

    /// The stream of logs, also the prefix of this cluster's other keys (sessions, epoch).
    pub fn stream_key(&self) -> &str {
        &self.stream
    }

    /// `redis_stream_shards`.
    pub fn shards(&self) -> usize {
        self.shard_keys.len()
    }

    /// The shards this instance reads now, as a mask (bit `i`: shard `i`).
    pub fn reading_shards(&self) -> u64 {
        self.reading_shards.load(Ordering::Relaxed)
    }

    /// Make sure every instance on this Redis spreads logs over the same number of shards
    /// (a different count would put one device's logs in two streams, and readers would
    /// miss one of them). `Err` names both counts and what to do, or that Redis is away.
    pub async fn check_shards(&self) -> Result<(), PublishError> {
        if self.shards_agreed.load(Ordering::Relaxed) {
            return Ok(());
        }
        match self.recorded_shards().await? {
            Ok(()) => {
                self.shards_agreed.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(mismatch) => Err(PublishError::Unavailable(mismatch)),
        }
    }

    /// The shard count recorded beside the stream (`<stream>:shards`; the first instance
    /// records its own): `Ok(Err(why))` if it is not this instance's.
    pub async fn recorded_shards(&self) -> Result<Result<(), String>, PublishError> {
        let key = format!("{}:shards", self.stream);
        let mut conn = self.connection();
        let ours = self.shards();
        let check = async {
            let _: bool = conn.set_nx(&key, ours).await?;
            conn.get::<_, Option<String>>(&key).await
        };
        let recorded = match tokio::time::timeout(PUBLISH_TIMEOUT, check).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(PublishError::Unavailable(format!("redis: {e}"))),
            Err(_) => {
                return Err(PublishError::Unavailable(
                    "redis did not answer in time".into(),
                ));
            }
        };
        Ok(match recorded.as_deref().map(str::parse::<usize>) {
            Some(Ok(n)) if n == ours => Ok(()),
            other => {
                let theirs = match other {
                    Some(Ok(n)) => n.to_string(),
                    _ => format!("{recorded:?} (not a number)"),
                };
                Err(format!(
                    "redis_stream_shards is {ours} here, but the logs in this Redis ({key}) are spread over {theirs}: every instance must use the same count. To change it, give the cluster a new redis_stream (see \"Changing the shard count\" in the README)"
                ))
            }
        })
    }

    /// Start reading Redis on `tasks` until `stop`: the channels' subscriber, the stream's
    /// reader (with shards, the readers of the shards `wanted` names), the heartbeat, and
    /// the Sentinel watch (a no-op elsewhere). Device statuses and logs go to `router`.
    pub fn start(
        self: &Arc<Self>,
        router: Sender<Inbound>,
        wanted: Option<watch::Receiver<crate::shards::Wanted>>,
        tasks: &tokio_util::task::TaskTracker,
        stop: &CancellationToken,
    ) -> Started {
        let (admin, admin_rx) = mpsc::channel(ADMIN_QUEUE);
        let (seed_logs, seed_rx) = mpsc::channel(SEED_CHANNEL_QUEUE);
        let readers = ChannelReaders {
            seed_logs,
            router: router.clone(),
            admin,
        };
        tasks.spawn(self.clone().subscriber(readers, stop.clone()));
        match wanted {
            Some(wanted) => tasks.spawn(self.clone().sharded_reader(router, wanted, stop.clone())),
            None => tasks.spawn(self.clone().stream_reader(router, stop.clone())),
        };
        tasks.spawn(self.clone().heartbeat(stop.clone()));
        tasks.spawn(self.connector.clone().watch(stop.clone()));
        Started {
            seed_logs: seed_rx,
            admin: admin_rx,
        }
    }

    /// Its part of `/api/ws/health`: degraded while the subscriber or the stream reader is
    /// down.
    pub fn health(&self) -> (serde_json::Value, bool) {
        let relaxed = Ordering::Relaxed;
        let connected = self.connected();
        let reading = self.reading_shards();
        (
            serde_json::json!({
                "kind": "redis",
                "state": if connected { "connected" } else { "degraded" },
                "lastError": self.status.last_error(),
                "reconnects": self.status.reconnects.load(relaxed),
                "malformedMessages": self.status.malformed.load(relaxed),
                "overflowDropped": self.status.overflow_dropped.load(relaxed),
                "bridgeFailed": self.status.bridge_failed.load(relaxed),
                "minReplicas": self.min_replicas(),
                "replicasShort": self.status.replicas_short.load(relaxed),
                "shards": self.shards(),
                "shardsRead": (0..self.shards())
                    .filter(|i| reading & (1 << i) != 0)
                    .collect::<Vec<_>>(),
                "entriesRead": self.status.entries_read.load(relaxed),
            }),
            connected,
        )
    }

    pub fn counters(&self) -> crate::bus::BusCounters {
        let relaxed = Ordering::Relaxed;
        crate::bus::BusCounters {
            connected: self.connected(),
            reconnects: self.status.reconnects.load(relaxed),
            malformed: self.status.malformed.load(relaxed),
            entries_read: self.status.entries_read.load(relaxed),
            shards_read: self.reading_shards().count_ones(),
        }
    }

    pub fn connected(&self) -> bool {
        self.status.connected.load(Ordering::Relaxed) && self.status.reading.load(Ordering::Relaxed)
    }

    /// PUBLISH, bounded in time; any failure is `Unavailable`.
    pub async fn publish(&self, channel: &str, payload: String) -> Result<(), PublishError> {
        let mut conn = self.connection();
        let publish = conn.publish::<_, _, i64>(channel, payload);
        match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                self.status.set_error(&e);
                Err(PublishError::Unavailable(format!("redis: {e}")))
            }
            Err(_) => Err(PublishError::Unavailable(
                "redis did not answer in time".into(),
            )),
        }
    }

    pub async fn publish_status(&self, status: &DeviceStatus) -> Result<(), PublishError> {
        let payload = serde_json::to_string(status).unwrap_or_default();
        self.publish(&self.channels.status, payload).await
    }

    /// Read the channels until `stop`, reconnecting with backoff, and hand what comes to
    /// `to`.
    pub async fn subscriber(self: Arc<Self>, to: ChannelReaders, stop: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        let mut first = true;
        loop {
            let outcome = tokio::select! {
                () = stop.cancelled() => return,
                outcome = self.subscribe_once(&to, &mut first) => outcome,
            };
            match outcome {
                Ok(()) => tracing::warn!("redis subscription ended; reconnecting"),
                Err(e) => {
                    self.status.set_error(&e);
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "redis unavailable");
                }
            }
            if self.status.connected.swap(false, Ordering::Relaxed) {
                backoff = BACKOFF_MIN;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn subscribe_once(
        &self,
        to: &ChannelReaders,
        first: &mut bool,
    ) -> redis::RedisResult<()> {
        // Watched from before the lookup, so a move meanwhile is not missed.
        let mut moved = self.connector.moved();
        moved.mark_unchanged();
        let client = self.connector.client().await?;
        let connect = client.get_async_pubsub();
        let mut pubsub = tokio::time::timeout(Duration::from_secs(2), connect)
            .await
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timed out")))??;
        pubsub
            .subscribe(&[
                &self.channels.logs,
                &self.channels.status,
                &self.channels.admin,
            ])
            .await?;
        self.status.connected.store(true, Ordering::Relaxed);
        if !std::mem::take(first) {
            self.status.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(
            logs = %self.channels.logs,
            status = %self.channels.status,
            admin = %self.channels.admin,
            "subscribed to redis"
        );
        let mut stream = pubsub.on_message();
        loop {
            let msg = tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => msg,
                    None => break,
                },
                // The primary moved (Sentinel): subscribe on the new one. (Elsewhere it
                // never moves: the sender is gone and this waits for ever.)
                Ok(()) = moved.changed() => break,
            };
            let channel = msg.get_channel_name().to_owned();
            let payload = msg.get_payload_bytes();
            if channel == self.channels.logs {
                // In order: the next message waits for room (see `ingest::seed_channel`).
                let _ = to.seed_logs.send(payload.to_vec()).await;
            } else if channel == self.channels.status {
                self.on_status(payload, &to.router).await;
            } else if channel == self.channels.admin {
                self.on_admin(payload, &to.admin).await;
            }
        }
        Ok(())
    }

    /// Hand to the router; when its queue is full, wait up to [`FORWARD_TIMEOUT`] for room
    /// on a blocking thread (the router is a plain thread); past that, count and drop.
    pub(super) async fn forward(&self, router: &Sender<Inbound>, msg: Inbound, entries: u64) {
        let msg = match router.try_send(msg) {
            Ok(()) | Err(crossbeam_channel::TrySendError::Disconnected(_)) => return,
            Err(crossbeam_channel::TrySendError::Full(msg)) => msg,
        };
        let router = router.clone();
        let sent =
            tokio::task::spawn_blocking(move || router.send_timeout(msg, FORWARD_TIMEOUT)).await;
        if matches!(
            sent,
            Ok(Err(crossbeam_channel::SendTimeoutError::Timeout(_)))
        ) {
            self.status
                .overflow_dropped
                .fetch_add(entries, Ordering::Relaxed);
            tracing::warn!(
                entries,
                "router queue full for 1 s; dropped logs read from redis"
            );
        }
    }

    async fn on_status(&self, payload: &[u8], router: &Sender<Inbound>) {
        let parsed = serde_json::from_slice::<Value>(payload)
            .ok()
            .and_then(|mut v| {
                let device = v.get("deviceId")?.as_str()?.to_owned();
                let status = v.get_mut("status").map(Value::take)?;
                device_status(device, status).ok()
            });
        match parsed {
            Some(status) => {
                self.forward(router, Inbound::DeviceStatus(status), 0).await;
            }
            None => self.status.malformed(
                &self.channels.status,
                "expected { deviceId, status } strings",
            ),
        }
    }

    async fn on_admin(&self, payload: &[u8], admin: &mpsc::Sender<ClusterOp>) {
        let op = match serde_json::from_slice::<ClusterOp>(payload) {
            Ok(op) => op,
            // Replies travel on their own channels; anything else here is not ours.
            Err(e) => {
                return self.status.malformed(
                    &self.channels.admin,
                    &format!("not a cluster operation: {e}"),
                );
            }
        };
        if admin.try_send(op).is_err() {
            tracing::warn!("admin queue full; dropped a cluster admin message");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            super::without_password("redis://:s3cret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(
            super::without_password("redis://host:6379"),
            "redis://host:6379"
        );
        assert_eq!(super::without_password("redis:/:pw@h:1"), "***@h:1");
        assert_eq!(
            super::without_password("redis+sentinel://u:p@s1:1,s2:2/m"),
            "redis+sentinel://***@s1:1,s2:2/m"
        );
    }
}
