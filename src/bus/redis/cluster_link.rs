//! The cluster link over Redis: admin operations go to every instance on the admin channel
//! (`redis_admin_channel`, read by the subscriber in `super`), replies come back on a channel
//! of their own per request, and each instance announces itself with a heartbeat so a
//! request knows how many replies to wait for.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use super::{PUBLISH_TIMEOUT, RedisBus, lua_now_ms};
use crate::bus::{ClusterLink, PublishError};
use crate::protocol::ClusterOp;

const HEARTBEAT: Duration = Duration::from_secs(2);
const HEARTBEAT_TTL_MS: u64 = 6000;

/// Record instance `ARGV[1]` alive for `ARGV[2]` ms in the sorted set `KEYS[1]`.
const HEARTBEAT_SCRIPT: &str = concat!(
    lua_now_ms!(),
    "redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1"
);

/// The live instances of the sorted set `KEYS[1]`, the expired ones dropped.
const LIVE_INSTANCES: &str = concat!(
    lua_now_ms!(),
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')"
);

impl RedisBus {
    /// Publish a cluster operation on the admin channel.
    async fn send_op(&self, op: &ClusterOp) -> Result<(), PublishError> {
        let payload = serde_json::to_string(op).unwrap_or_default();
        self.publish(&self.channels.admin, payload).await
    }

    fn instance_key(&self, id: &str) -> String {
        format!("{}:instance:{id}", self.channels.admin)
    }

    /// Instances that sent a heartbeat in the last few seconds.
    async fn live_instances(&self) -> Result<Vec<String>, PublishError> {
        let mut conn = self.connection();
        // One sorted set of instance → heartbeat expiry (Redis's clock, not the instances'),
        // which every deployment reads whole (a SCAN of a cluster sees one node's keys).
        let mut eval = redis::cmd("EVAL");
        eval.arg(LIVE_INSTANCES).arg(1).arg(self.instances_key());
        match tokio::time::timeout(PUBLISH_TIMEOUT, eval.query_async::<Vec<String>>(&mut conn))
            .await
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(PublishError::Unavailable(format!("redis: {e}"))),
            Err(_) => Err(PublishError::Unavailable(
                "redis did not answer in time".into(),
            )),
        }
    }

    /// The sorted set of live instances (member: id, score: when its heartbeat expires).
    fn instances_key(&self) -> String {
        format!("{}:instances", self.channels.admin)
    }

    /// Publish the admin request `make(reply_channel)` and collect the replies until
    /// `expected` arrived or `timeout`.
    async fn collect_replies(
        &self,
        make: Box<dyn FnOnce(String) -> ClusterOp + Send + '_>,
        expected: usize,
        timeout: Duration,
    ) -> Result<Vec<Vec<u8>>, PublishError> {
        let reply = format!("{}:reply:{}", self.channels.admin, uuid::Uuid::new_v4());
        let unavailable = |e: redis::RedisError| PublishError::Unavailable(format!("redis: {e}"));
        let client = self.connector.client().await.map_err(unavailable)?;
        let mut pubsub = tokio::time::timeout(PUBLISH_TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| PublishError::Unavailable("redis did not answer in time".into()))?
            .map_err(unavailable)?;
        pubsub.subscribe(&reply).await.map_err(unavailable)?;
        self.send_op(&make(reply)).await?;
        let mut replies = Vec::new();
        let mut stream = pubsub.on_message();
        let deadline = tokio::time::Instant::now() + timeout;
        while replies.len() < expected {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(msg)) => replies.push(msg.get_payload_bytes().to_vec()),
                Ok(None) | Err(_) => break,
            }
        }
        Ok(replies)
    }

    /// Announce this instance every [`HEARTBEAT`] so others can count replies, until
    /// `stop`; then withdraw the announcement.
    pub async fn heartbeat(self: Arc<Self>, stop: CancellationToken) {
        // The key of its own is what instances from before the sorted set count.
        let key = self.instance_key(&self.instance);
        loop {
            // Two commands, not a pipeline: in a cluster the two keys are in two slots.
            let mut conn = self.connection();
            let mut eval = redis::cmd("EVAL");
            eval.arg(HEARTBEAT_SCRIPT)
                .arg(1)
                .arg(self.instances_key())
                .arg(&self.instance)
                .arg(HEARTBEAT_TTL_MS);
            let beat = async {
                conn.pset_ex::<_, _, ()>(&key, "alive", HEARTBEAT_TTL_MS)
                    .await?;
                eval.query_async::<()>(&mut conn).await
            };
            let _ = tokio::time::timeout(PUBLISH_TIMEOUT, beat).await;
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(HEARTBEAT) => {}
            }
        }
        let mut conn = self.connection();
        let _ = tokio::time::timeout(PUBLISH_TIMEOUT, conn.del::<_, ()>(&key)).await;
        let _ = tokio::time::timeout(
            PUBLISH_TIMEOUT,
            conn.zrem::<_, _, ()>(self.instances_key(), &self.instance),
        )
        .await;
    }
}

impl ClusterLink for RedisBus {
    fn publish_op<'a>(&'a self, op: &'a ClusterOp) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(self.send_op(op))
    }

    fn instances(&self) -> BoxFuture<'_, Result<Vec<String>, PublishError>> {
        Box::pin(self.live_instances())
    }

    fn request<'a>(
        &'a self,
        make: Box<dyn FnOnce(String) -> ClusterOp + Send + 'a>,
        expected: usize,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<Vec<u8>>, PublishError>> {
        Box::pin(self.collect_replies(make, expected, timeout))
    }

    fn reply<'a>(
        &'a self,
        reply_to: &'a str,
        answer: String,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(self.publish(reply_to, answer))
    }
}
