//! Redis: the cluster's bus, history, sessions and admin channel.

use super::group::{Check, at_most, between, config_group, non_empty};

config_group! {
    /// Several instances through Redis.
    pub struct RedisConfig {
        /// Redis URL; unset = embedded in-process bus.
        redis_url: Option<String> = None, redis_scheme;
        /// Channel carrying log entries (a JSON object or array), as the seed publishes them.
        redis_log_channel: String = "log:new".into(), non_empty;
        /// Channel carrying `{ deviceId, status }`.
        redis_status_channel: String = "device:status".into(), non_empty;
        /// Channel for cluster-wide admin operations between logstream instances.
        redis_admin_channel: String = "logstream:admin".into(), non_empty;
        /// Redis Stream holding every accepted log (the cluster's history and durable bus).
        redis_stream: String = "logstream:logs".into(), non_empty;
        /// Replicas that must confirm each append (`WAIT`) before ingest answers 202, so an
        /// accepted log survives the primary's failover; 0 = the primary's answer is enough.
        redis_min_replicas: usize = 0, at_most(16);
        /// How long an append waits for `redis_min_replicas` confirmations before ingest
        /// answers 503.
        redis_min_replicas_timeout_ms: u64 = 1000, between(1, 60_000, "");
        /// This instance's name in cluster views; empty = generated at start.
        instance_id: String = String::new();
    }
}

fn redis_scheme(url: &Option<String>) -> Check {
    match url {
        Some(url)
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("unix://")) =>
        {
            Err("must start with redis://, rediss:// or unix://".into())
        }
        _ => Ok(()),
    }
}
