//! The bus: where accepted logs and device statuses go between ingest and the router.
//!
//! - Embedded (default): the router's bounded inbound queue. A publish lands whole or is
//!   refused whole (`Overloaded`), so ingest can answer 503 and nothing accepted is lost.
//!   With `history_dir` (the default), a publish goes to the history's writer first
//!   ([`crate::history::disk::writer`]): it is answered once on disk, and the writer hands
//!   it to the router.
//! - Redis ([`redis::RedisBus`]): ingest appends to a Redis Stream ([`stream`]) and every
//!   instance, this one included, delivers what it reads from the stream to its own clients.
//!   So each log reaches each client of the cluster once, wherever it came in, and survives
//!   the death of the instance that took it. A publish Redis did not confirm answers 503,
//!   never a silent 202.
//!
//! A publish may carry a key that is published at most once ([`crate::publish_key`]).

pub mod connector;
pub mod merge;
pub mod redis;
pub mod replicated;
pub mod shard_reader;
pub mod sharded;
pub mod stream;

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Sender, TrySendError};

use crate::history::disk::DiskLog;
use crate::history::disk::writer::{WriteError, Writer};
use crate::log_entry::LogRecord;
use crate::protocol::DeviceStatus;
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

/// The in-process bus: the router's queue, and the keys published through it; or, with a
/// history on disk, its writer (which keeps the keys itself, on disk too).
#[derive(Clone)]
pub struct EmbeddedBus {
    pub router: Sender<Inbound>,
    keys: Arc<PublishedKeys>,
    writer: Option<Writer>,
    disk: Option<Arc<DiskLog>>,
}

impl EmbeddedBus {
    pub fn new(router: Sender<Inbound>) -> EmbeddedBus {
        EmbeddedBus {
            router,
            keys: Arc::default(),
            writer: None,
            disk: None,
        }
    }

    /// Publishes go through the writer of the history on disk `disk`.
    pub fn durable(router: Sender<Inbound>, writer: Writer, disk: Arc<DiskLog>) -> EmbeddedBus {
        EmbeddedBus {
            router,
            keys: Arc::default(),
            writer: Some(writer),
            disk: Some(disk),
        }
    }

    /// The history on disk, if the bus writes one.
    pub fn disk(&self) -> Option<&Arc<DiskLog>> {
        self.disk.as_ref()
    }
}

#[derive(Clone)]
pub enum Bus {
    Embedded(EmbeddedBus),
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
            (
                Bus::Embedded(EmbeddedBus {
                    writer: Some(writer),
                    ..
                }),
                key,
            ) => Ok(writer.append(logs, key).await?),
            (Bus::Embedded(bus), None) => {
                send_to_router(&bus.router, Inbound::Logs(logs)).map(|()| Published::Appended)
            }
            (Bus::Embedded(bus), Some(key)) => bus.keys.publish_once(key, Instant::now(), || {
                send_to_router(&bus.router, Inbound::Logs(logs))
            }),
            (Bus::Redis(bus), key) => bus.publish_logs(&logs, key).await,
        }
    }

    pub async fn publish_status(&self, status: DeviceStatus) -> Result<(), PublishError> {
        match self {
            Bus::Embedded(bus) => send_to_router(&bus.router, Inbound::DeviceStatus(status)),
            Bus::Redis(bus) => bus.publish_status(&status).await,
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
