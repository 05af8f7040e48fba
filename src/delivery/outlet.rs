//! Where a client's events go: the socket, behind a small trait so that the delivery state
//! ([`super::Client`]) can be tested without one.
//!
//! Payloads arrive already serialized ([`RawValue`]): a log's JSON is built once at ingest and
//! shared by every client; a batch's array is built once per `log:batch`.

use std::sync::Arc;

use serde_json::value::RawValue;
use socketioxide::extract::SocketRef;
use socketioxide::{SendError, SocketError};

use crate::edge::Meter;

/// Why an event was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsent {
    /// The connection is gone; nothing more will be sent.
    Closed,
    /// The socket's outbound queue is full: the client reads slower than we write.
    Full,
}

/// The emitting side of one client.
pub trait Outlet: Send + Sync {
    /// Queue `event` with one argument, `data`.
    fn send(&self, event: &str, data: &RawValue) -> Result<(), Unsent>;
    /// Queue `event` with two arguments: `data` and `offset` (Socket.IO's recovery
    /// convention puts the offset last).
    fn send_with_offset(
        &self,
        event: &str,
        data: &RawValue,
        offset: &RawValue,
    ) -> Result<(), Unsent>;
    /// Whether the transport is still connected.
    fn is_connected(&self) -> bool;
    /// Bytes written to the network for this client so far, when the transport says.
    fn written(&self) -> Option<u64> {
        None
    }
    /// End the connection now, even when its queue is too full for a disconnect packet.
    fn cut(&self) {}
}

fn unsent(e: SendError) -> Unsent {
    match e {
        SendError::Socket(SocketError::Closed) => Unsent::Closed,
        _ => Unsent::Full,
    }
}

/// A socket and the meter of bytes its connection has written (see `edge`).
pub struct SocketOutlet {
    pub socket: SocketRef,
    pub meter: Arc<Meter>,
}

impl Outlet for SocketOutlet {
    fn send(&self, event: &str, data: &RawValue) -> Result<(), Unsent> {
        self.socket.emit(event, data).map_err(unsent)
    }

    fn send_with_offset(
        &self,
        event: &str,
        data: &RawValue,
        offset: &RawValue,
    ) -> Result<(), Unsent> {
        // A tuple is sent as that many arguments.
        self.socket.emit(event, &(data, offset)).map_err(unsent)
    }

    fn is_connected(&self) -> bool {
        self.socket.connected()
    }

    fn written(&self) -> Option<u64> {
        Some(self.meter.written())
    }

    fn cut(&self) {
        // A WebSocket is closed under the socket (its queue is too full for a disconnect
        // packet); a long-polling client that stopped polling ends by its heartbeat timeout.
        self.meter.close();
    }
}
