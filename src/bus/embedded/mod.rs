//! The embedded backend: everything in this process. The bus is the router's bounded queue
//! (or, with `history_dir`, the history's writer in front of it), idempotency keys are kept
//! beside it ([`PublishedKeys`], or by the writer on disk), and sessions live in memory
//! ([`sessions`], journalled beside the history on disk by [`journal`]). No cluster link:
//! every admin operation is local.

pub mod journal;
pub mod sessions;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::Sender;
use serde_json::json;

use super::{PublishError, PublishKey, Published, PublishedKeys, send_to_router};
use crate::history::disk::DiskLog;
use crate::history::disk::writer::Writer;
use crate::log_entry::LogRecord;
use crate::router::Inbound;
use crate::sessions::{SessionLimits, Sessions};
use sessions::MemorySessions;

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

/// The sessions' file in the history directory.
const SESSIONS_FILE: &str = "sessions.jsonl";

impl EmbeddedBus {
    /// Sessions in this process; with a history on disk, also in a journal beside it, with
    /// the sessions it held when the server stopped (they live `ttl` from now).
    pub fn sessions(&self, limits: SessionLimits, ttl: Duration) -> anyhow::Result<Sessions> {
        let store = match &self.disk {
            Some(disk) => {
                let path = disk.dir().join(SESSIONS_FILE);
                let (journal, kept) = journal::Journal::open(&path)
                    .with_context(|| format!("sessions file {}", path.display()))?;
                if !kept.is_empty() {
                    tracing::info!(sessions = kept.len(), "sessions kept across the restart");
                }
                MemorySessions::durable(limits, journal, kept, ttl, Instant::now())
            }
            None => MemorySessions::new(limits),
        };
        Ok(Sessions::new(Arc::new(store)))
    }

    /// Its part of `/api/ws/health`: a history on disk that cannot be written is unhealthy.
    pub fn health(&self) -> (serde_json::Value, bool) {
        match &self.disk {
            None => (json!({ "kind": "embedded", "history": "memory" }), true),
            Some(disk) => {
                let failure = disk.failure();
                (
                    json!({
                        "kind": "embedded",
                        "history": "disk",
                        "historyDir": disk.dir().display().to_string(),
                        "state": if failure.is_some() { "failing" } else { "ok" },
                        "lastError": failure,
                    }),
                    failure.is_none(),
                )
            }
        }
    }

    /// Publish `logs`, all or none; with `key`, only if the key was not published before.
    pub async fn publish_logs(
        &self,
        logs: Vec<Arc<LogRecord>>,
        key: Option<&PublishKey>,
    ) -> Result<Published, PublishError> {
        match (&self.writer, key) {
            (Some(writer), key) => Ok(writer.append(logs, key).await?),
            (None, None) => {
                send_to_router(&self.router, Inbound::Logs(logs)).map(|()| Published::Appended)
            }
            (None, Some(key)) => self.keys.publish_once(key, Instant::now(), || {
                send_to_router(&self.router, Inbound::Logs(logs))
            }),
        }
    }
}
