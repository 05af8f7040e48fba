//! The backend: where accepted logs and device statuses go between ingest and the router,
//! and what the instances share. Each backend is one folder, and plays four roles:
//!
//! - **The log bus**: append (all or none, answered only once it holds), read live into the
//!   router, and read a range into the router's history (at start, and for a shard that
//!   starts being read). Replays then read that history, whichever backend filled it.
//! - **Idempotency keys**: an append may carry a key ([`crate::publish_key`]) and is then
//!   made at most once; the backend keeps the keys with the logs, so key and logs are never
//!   recorded one without the other.
//! - **Sessions** ([`crate::sessions::SessionStore`]).
//! - **The cluster link** ([`ClusterLink`]): admin operations across instances, and who is
//!   alive.
//!
//! The backends:
//!
//! - [`embedded`] (default): the router's bounded inbound queue. A publish lands whole or
//!   is refused whole (`Overloaded`), so ingest can answer 503 and nothing accepted is lost.
//!   With `history_dir` (the default), a publish goes to the history's writer first
//!   ([`crate::history::disk::writer`]): it is answered once on disk, and the writer hands
//!   it to the router. Sessions in memory (journalled beside the history on disk); no
//!   cluster link.
//! - [`redis`]: ingest appends to a Redis Stream (or to shards of it by device) and every
//!   instance delivers what it reads to its own clients. So each log reaches each client of
//!   the cluster once, wherever it came in, and survives the death of the instance that
//!   took it. A publish Redis did not confirm answers 503, never a silent 202. Sessions and
//!   the cluster link live in Redis too; so does the seed's `log:new` channel, which
//!   `ingest::seed_channel` accepts from.
//!
//! [`Bus`] has one case per backend; a new one (NATS JetStream, Kafka) is a folder beside
//! these and a case there, plus its line where the server builds the bus from the config.

pub mod embedded;
pub mod redis;

use std::sync::Arc;

use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};
use futures_util::future::BoxFuture;
use serde_json::Value;

use crate::history::disk::DiskLog;
use crate::history::disk::writer::WriteError;
use crate::log_entry::LogRecord;
use crate::protocol::{ClusterOp, DeviceStatus};
pub use crate::publish_key::{PublishKey, Published, PublishedKeys};
use crate::router::Inbound;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    #[error("the router queue is full; retry later")]
    Overloaded,
    #[error("the server is shutting down")]
    Closed,
    #[error("the bus is unavailable: {0}")]
    Unavailable(String),
    /// The history on disk could not be written (a full disk, an I/O error).
    #[error("{0}")]
    HistoryUnavailable(String),
}

impl From<WriteError> for PublishError {
    fn from(e: WriteError) -> PublishError {
        match e {
            WriteError::Busy => PublishError::Overloaded,
            WriteError::Closed => PublishError::Closed,
            WriteError::Failed(why) => {
                PublishError::HistoryUnavailable(format!("the history could not be written: {why}"))
            }
        }
    }
}

/// The link between instances: admin operations across the cluster and who is alive. A
/// backend that runs one instance (embedded) has none, and every admin operation is local.
pub trait ClusterLink: Send + Sync {
    /// Send `op` to every instance, this one included.
    fn publish_op<'a>(&'a self, op: &'a ClusterOp) -> BoxFuture<'a, Result<(), PublishError>>;
    /// The instances alive now.
    fn instances(&self) -> BoxFuture<'_, Result<Vec<String>, PublishError>>;
    /// Send the request `make(reply_to)` and collect the answers (JSON, as sent) until
    /// `expected` arrived or `timeout`.
    fn request<'a>(
        &'a self,
        make: Box<dyn FnOnce(String) -> ClusterOp + Send + 'a>,
        expected: usize,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<Vec<u8>>, PublishError>>;
    /// Answer a request on the `reply_to` it carried.
    fn reply<'a>(
        &'a self,
        reply_to: &'a str,
        answer: String,
    ) -> BoxFuture<'a, Result<(), PublishError>>;
}

/// The bus's counters for `/metrics` (zero where a backend has no such thing).
#[derive(Debug, Default)]
pub struct BusCounters {
    pub connected: bool,
    pub reconnects: u64,
    pub malformed: u64,
    pub entries_read: u64,
    pub shards_read: u32,
}

/// The backend: one case per kind (the embedded bus, Redis). Everything else in the server
/// goes through these methods, the [`ClusterLink`] and the [`crate::sessions::SessionStore`]
/// a backend provides; a new backend is a folder beside `embedded` and `redis` and a case
/// here.
#[derive(Clone)]
pub enum Bus {
    Embedded(embedded::EmbeddedBus),
    Redis(Arc<redis::RedisBus>),
}

/// Hand a message to the router without blocking; the queue is bounded.
pub fn send_to_router(router: &Sender<Inbound>, msg: Inbound) -> Result<(), PublishError> {
    router.try_send(msg).map_err(|e| match e {
        TrySendError::Full(_) => PublishError::Overloaded,
        TrySendError::Disconnected(_) => PublishError::Closed,
    })
}

impl Bus {
    /// Publish `logs`, all or none; with `key`, only if the key was not published before
    /// (see [`crate::publish_key`]).
    pub async fn publish_logs(
        &self,
        logs: Vec<Arc<LogRecord>>,
        key: Option<&PublishKey>,
    ) -> Result<Published, PublishError> {
        match (self, key) {
            (Bus::Embedded(bus), key) => bus.publish_logs(logs, key).await,
            (Bus::Redis(bus), key) => bus.publish_logs(&logs, key).await,
        }
    }

    pub async fn publish_status(&self, status: DeviceStatus) -> Result<(), PublishError> {
        match self {
            Bus::Embedded(bus) => send_to_router(&bus.router, Inbound::DeviceStatus(status)),
            Bus::Redis(bus) => bus.publish_status(&status).await,
        }
    }

    /// The backend's sessions (see [`crate::sessions`]); `ttl`: how long sessions kept on
    /// disk across a restart live from now.
    pub fn sessions(
        &self,
        limits: crate::sessions::SessionLimits,
        ttl: std::time::Duration,
    ) -> anyhow::Result<crate::sessions::Sessions> {
        match self {
            Bus::Embedded(bus) => bus.sessions(limits, ttl),
            Bus::Redis(bus) => Ok(crate::sessions::Sessions::new(Arc::new(
                redis::sessions::RedisSessions::new(bus.clone(), limits),
            ))),
        }
    }

    /// The link to the other instances, if the backend has any.
    pub fn cluster(&self) -> Option<Arc<dyn ClusterLink>> {
        match self {
            Bus::Embedded(_) => None,
            Bus::Redis(bus) => Some(bus.clone()),
        }
    }

    /// The bus's part of `/api/ws/health`, and whether it is healthy.
    pub fn health(&self) -> (Value, bool) {
        match self {
            Bus::Embedded(bus) => bus.health(),
            Bus::Redis(bus) => bus.health(),
        }
    }

    pub fn counters(&self) -> BusCounters {
        match self {
            Bus::Embedded(_) => BusCounters {
                connected: true,
                ..BusCounters::default()
            },
            Bus::Redis(bus) => bus.counters(),
        }
    }

    /// Shutdown: wait until what this instance accepted has come back from the bus to its
    /// router (the embedded bus hands it over directly). `false` if `timeout` passed first.
    pub async fn drain(&self, timeout: Duration) -> bool {
        match self {
            Bus::Embedded(_) => true,
            Bus::Redis(bus) => bus.drain(timeout).await,
        }
    }

    /// The embedded bus's history on disk, if any.
    pub fn disk(&self) -> Option<&Arc<DiskLog>> {
        match self {
            Bus::Embedded(bus) => bus.disk(),
            Bus::Redis(_) => None,
        }
    }

    pub fn redis(&self) -> Option<&Arc<redis::RedisBus>> {
        match self {
            Bus::Redis(r) => Some(r),
            Bus::Embedded(_) => None,
        }
    }
}
