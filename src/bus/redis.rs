//! The Redis bus: the seed's pub/sub channels (`log:new`, `device:status`) as the shared bus
//! of several logstream instances, plus an admin channel for cluster-wide operations.
//!
//! Publishing goes through one multiplexed connection (`ConnectionManager`, created lazily,
//! so a Redis that is down at start does not stop the server). Reading is a dedicated pub/sub
//! connection in a task that reconnects with exponential backoff and resubscribes; while it is
//! down the instance reports itself degraded (`/api/ws/health`) and keeps serving its sockets.
//!
//! Everything read from a channel is validated like HTTP ingest. A malformed message is
//! counted, logged at most every 10 s, and skipped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::PublishError;
use crate::config::Config;
use crate::log_entry::LogRecord;
use crate::router::Inbound;

/// How long one publish may take before ingest answers 503.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const HEARTBEAT: Duration = Duration::from_secs(2);
const HEARTBEAT_TTL_MS: u64 = 6000;

#[derive(Debug, Clone)]
pub struct Channels {
    pub logs: String,
    pub status: String,
    pub admin: String,
}

/// Health and fault counters of the Redis link.
#[derive(Default)]
pub struct RedisStatus {
    pub connected: AtomicBool,
    pub reconnects: AtomicU64,
    pub malformed: AtomicU64,
    /// Logs read from Redis that the router could not take within a second (counted, dropped).
    pub overflow_dropped: AtomicU64,
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

    fn set_error(&self, e: impl ToString) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
    }

    fn malformed(&self, channel: &str, why: &str) {
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
    client: redis::Client,
    publisher: ConnectionManager,
    pub channels: Channels,
    pub instance: String,
    pub status: RedisStatus,
    /// Drain markers this instance is waiting to read back.
    drains: Mutex<HashMap<String, oneshot::Sender<()>>>,
}

impl RedisBus {
    pub fn new(url: &str, config: &Config, instance: String) -> anyhow::Result<Arc<RedisBus>> {
        let client =
            redis::Client::open(url).map_err(|e| anyhow::anyhow!("redis_url {url:?}: {e}"))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let publisher = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .map_err(|e| anyhow::anyhow!("redis connection manager: {e}"))?;
        Ok(Arc::new(RedisBus {
            client,
            publisher,
            channels: Channels {
                logs: config.redis_log_channel.clone(),
                status: config.redis_status_channel.clone(),
                admin: config.redis_admin_channel.clone(),
            },
            instance,
            status: RedisStatus::default(),
            drains: Mutex::default(),
        }))
    }

    pub fn connected(&self) -> bool {
        self.status.connected.load(Ordering::Relaxed)
    }

    /// PUBLISH, bounded in time; any failure is `Unavailable`.
    pub async fn publish(&self, channel: &str, payload: String) -> Result<(), PublishError> {
        let mut conn = self.publisher.clone();
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

    /// One PUBLISH of the whole request as a JSON array (the seed's entry format), built from
    /// the bytes serialized at ingest.
    pub async fn publish_logs(&self, logs: &[Arc<LogRecord>]) -> Result<(), PublishError> {
        let mut payload =
            String::with_capacity(logs.iter().map(|l| l.json.get().len() + 1).sum::<usize>() + 2);
        payload.push('[');
        for (i, log) in logs.iter().enumerate() {
            if i > 0 {
                payload.push(',');
            }
            payload.push_str(log.json.get());
        }
        payload.push(']');
        self.publish(&self.channels.logs, payload).await
    }

    pub async fn publish_status(&self, device_id: &str, status: &str) -> Result<(), PublishError> {
        let payload = json!({ "deviceId": device_id, "status": status }).to_string();
        self.publish(&self.channels.status, payload).await
    }

    /// Wait until everything this instance published before now has been read back from
    /// Redis (and handed to the router): publish a marker and wait to see it.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let token = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        self.drains
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.clone(), tx);
        let marker =
            json!({ "op": "drain", "instance": self.instance, "token": token }).to_string();
        if self.publish(&self.channels.admin, marker).await.is_err() {
            return false;
        }
        tokio::time::timeout(timeout, rx).await.is_ok()
    }

    fn instance_key(&self, id: &str) -> String {
        format!("{}:instance:{id}", self.channels.admin)
    }

    /// Instances that sent a heartbeat in the last few seconds.
    pub async fn instances(&self) -> Result<Vec<String>, PublishError> {
        let mut conn = self.publisher.clone();
        let pattern = self.instance_key("*");
        let prefix = self.instance_key("");
        let scan = async {
            let mut iter: redis::AsyncIter<String> = conn.scan_match(&pattern).await?;
            let mut found = Vec::new();
            while let Some(key) = iter.next_item().await {
                found.push(key?.trim_start_matches(&prefix).to_owned());
            }
            Ok::<_, redis::RedisError>(found)
        };
        match tokio::time::timeout(PUBLISH_TIMEOUT, scan).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(PublishError::Unavailable(format!("redis: {e}"))),
            Err(_) => Err(PublishError::Unavailable(
                "redis did not answer in time".into(),
            )),
        }
    }

    /// Publish an admin request and collect replies until `expected` arrived or `timeout`.
    pub async fn request(
        &self,
        mut op: Value,
        expected: usize,
        timeout: Duration,
    ) -> Result<Vec<Value>, PublishError> {
        let reply = format!("{}:reply:{}", self.channels.admin, uuid::Uuid::new_v4());
        let unavailable = |e: redis::RedisError| PublishError::Unavailable(format!("redis: {e}"));
        let mut pubsub = tokio::time::timeout(PUBLISH_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| PublishError::Unavailable("redis did not answer in time".into()))?
            .map_err(unavailable)?;
        pubsub.subscribe(&reply).await.map_err(unavailable)?;
        op["reply"] = Value::String(reply);
        self.publish(&self.channels.admin, op.to_string()).await?;
        let mut replies = Vec::new();
        let mut stream = pubsub.on_message();
        let deadline = tokio::time::Instant::now() + timeout;
        while replies.len() < expected {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(msg)) => {
                    if let Ok(v) = serde_json::from_slice::<Value>(msg.get_payload_bytes()) {
                        replies.push(v);
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        Ok(replies)
    }

    /// Announce this instance every [`HEARTBEAT`] so others can count replies.
    pub fn spawn_heartbeat(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let bus = self.clone();
        tokio::spawn(async move {
            let key = bus.instance_key(&bus.instance);
            loop {
                let mut conn = bus.publisher.clone();
                let set = conn.pset_ex::<_, _, ()>(&key, "alive", HEARTBEAT_TTL_MS);
                let _ = tokio::time::timeout(PUBLISH_TIMEOUT, set).await;
                tokio::time::sleep(HEARTBEAT).await;
            }
        })
    }

    /// Read the channels forever, reconnecting with backoff. Logs and statuses go to the
    /// router; admin operations other than our own drain markers go to `admin`.
    pub fn spawn_subscriber(
        self: &Arc<Self>,
        router: Sender<Inbound>,
        admin: mpsc::Sender<Value>,
    ) -> tokio::task::JoinHandle<()> {
        let bus = self.clone();
        tokio::spawn(async move {
            let mut backoff = BACKOFF_MIN;
            let mut first = true;
            loop {
                match bus.subscribe_once(&router, &admin, &mut first).await {
                    Ok(()) => tracing::warn!("redis subscription ended; reconnecting"),
                    Err(e) => {
                        bus.status.set_error(&e);
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "redis unavailable");
                    }
                }
                if bus.status.connected.swap(false, Ordering::Relaxed) {
                    backoff = BACKOFF_MIN;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        })
    }

    async fn subscribe_once(
        &self,
        router: &Sender<Inbound>,
        admin: &mpsc::Sender<Value>,
        first: &mut bool,
    ) -> redis::RedisResult<()> {
        let connect = self.client.get_async_pubsub();
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
        tracing::info!(channels = ?self.channels, "subscribed to redis");
        let mut stream = pubsub.on_message();
        while let Some(msg) = stream.next().await {
            let channel = msg.get_channel_name().to_owned();
            let payload = msg.get_payload_bytes();
            if channel == self.channels.logs {
                self.on_logs(payload, router).await;
            } else if channel == self.channels.status {
                self.on_status(payload, router).await;
            } else if channel == self.channels.admin {
                self.on_admin(payload, admin).await;
            }
        }
        Ok(())
    }

    /// Hand to the router, waiting up to a second for room; past that, count and drop.
    async fn forward(&self, router: &Sender<Inbound>, mut msg: Inbound, entries: u64) {
        for _ in 0..1000 {
            match router.try_send(msg) {
                Ok(()) => return,
                Err(crossbeam_channel::TrySendError::Full(back)) => {
                    msg = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => return,
            }
        }
        self.status
            .overflow_dropped
            .fetch_add(entries, Ordering::Relaxed);
        tracing::warn!(
            entries,
            "router queue full for 1 s; dropped logs read from redis"
        );
    }

    async fn on_logs(&self, payload: &[u8], router: &Sender<Inbound>) {
        let value: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => {
                return self
                    .status
                    .malformed(&self.channels.logs, &format!("not JSON: {e}"));
            }
        };
        match crate::ingest::http::parse_entries(value) {
            Ok(records) => {
                let n = records.len() as u64;
                self.forward(router, Inbound::Logs(records), n).await;
            }
            Err(e) => self.status.malformed(&self.channels.logs, &e.to_string()),
        }
    }

    async fn on_status(&self, payload: &[u8], router: &Sender<Inbound>) {
        let parsed = serde_json::from_slice::<Value>(payload).ok().and_then(|v| {
            let device = v.get("deviceId")?.as_str()?.to_owned();
            let status = v.get("status")?.as_str()?.to_owned();
            crate::ingest::http::valid_status(&device, &status).then_some((device, status))
        });
        match parsed {
            Some((device_id, status)) => {
                self.forward(router, Inbound::DeviceStatus { device_id, status }, 0)
                    .await;
            }
            None => self.status.malformed(
                &self.channels.status,
                "expected { deviceId, status } strings",
            ),
        }
    }

    async fn on_admin(&self, payload: &[u8], admin: &mpsc::Sender<Value>) {
        let Ok(value) = serde_json::from_slice::<Value>(payload) else {
            return self.status.malformed(&self.channels.admin, "not JSON");
        };
        if value["op"] == "drain" {
            if value["instance"] == self.instance.as_str()
                && let Some(token) = value["token"].as_str()
                && let Some(tx) = self
                    .drains
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(token)
            {
                let _ = tx.send(());
            }
            return;
        }
        if admin.try_send(value).is_err() {
            tracing::warn!("admin queue full; dropped a cluster admin message");
        }
    }
}
