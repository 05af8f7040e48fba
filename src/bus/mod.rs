//! The bus: where accepted logs and device statuses go between ingest and the router.
//!
//! The embedded bus is the router's bounded inbound queue: a publish either lands whole or is
//! refused whole (`Overloaded`), so ingest can answer 503 and nothing accepted is ever lost
//! silently.

use std::sync::Arc;

use crossbeam_channel::{Sender, TrySendError};

use crate::log_entry::LogRecord;
use crate::router::Inbound;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    #[error("the router queue is full; retry later")]
    Overloaded,
    #[error("the server is shutting down")]
    Closed,
}

#[derive(Clone)]
pub struct Bus {
    router: Sender<Inbound>,
}

impl Bus {
    pub fn embedded(router: Sender<Inbound>) -> Bus {
        Bus { router }
    }

    fn send(&self, msg: Inbound) -> Result<(), PublishError> {
        self.router.try_send(msg).map_err(|e| match e {
            TrySendError::Full(_) => PublishError::Overloaded,
            TrySendError::Disconnected(_) => PublishError::Closed,
        })
    }

    pub fn publish_logs(&self, logs: Vec<Arc<LogRecord>>) -> Result<(), PublishError> {
        self.send(Inbound::Logs(logs))
    }

    pub fn publish_status(&self, device_id: String, status: String) -> Result<(), PublishError> {
        self.send(Inbound::DeviceStatus { device_id, status })
    }
}
