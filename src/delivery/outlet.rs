//! Where a client's events go: the socket, behind a small trait so that the delivery state
//! ([`super::Client`]) can be tested without one.
//!
//! Payloads arrive already serialized ([`RawValue`]): a log's JSON is built once at ingest and
//! shared by every client (a [`Packet`] holds the record, not a copy); a batch's array is
//! built once per `log:batch`.
//!
//! A socket's packets are handed to the [`Emitter`], which puts them in the sockets' queues
//! from a task on the async runtime (see `emitter` for why); only replays, which must stop
//! at a full socket, put theirs in the queue at once ([`Outlet::send_now`]).

use std::sync::Arc;

use serde_json::value::RawValue;
use socketioxide::extract::SocketRef;
use socketioxide::{SendError, SocketError};

use super::emitter::Emitter;
use crate::edge::Meter;
use crate::log_entry::LogRecord;
use crate::protocol::DropReason;

/// Why an event was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsent {
    /// The connection is gone; nothing more will be sent.
    Closed,
    /// The socket's outbound queue is full: the client reads slower than we write.
    Full,
}

/// What a packet carries as its first argument.
pub enum Data {
    /// One log (`log:new`): its JSON, shared with every other client.
    Log(Arc<LogRecord>),
    /// Anything else, serialized for this packet.
    Owned(Box<RawValue>),
    /// Serialized once for many clients (`system:stats`, device status, shared errors).
    Shared(Arc<RawValue>),
}

/// One event for one client, with what its delivery means for the client's accounting.
pub struct Packet {
    pub event: &'static str,
    pub data: Data,
    /// For a resumable subscription: the log whose offset goes last (Socket.IO's recovery
    /// convention).
    pub offset_of: Option<Arc<LogRecord>>,
    /// Logs it carries: counted as delivered once the socket takes it, as `slow_consumer`
    /// drops if it refuses it.
    pub logs: u32,
    /// Bytes counted against the client's queue for it.
    pub bytes: u64,
    /// A `log:dropped` report: its count is reported again if the socket refuses it.
    pub report: Option<(DropReason, u64)>,
}

impl Packet {
    /// An event that carries no logs.
    pub fn event(event: &'static str, data: Data) -> Packet {
        Packet {
            event,
            data,
            offset_of: None,
            logs: 0,
            bytes: 0,
            report: None,
        }
    }

    /// An answer or notice rather than logs: when the socket's queue is full it waits for
    /// room (see `waiting`) instead of being refused. (Logs are refused, dropped and
    /// reported; a refused `log:dropped` report is reported again.)
    pub fn waits_for_room(&self) -> bool {
        self.logs == 0 && self.report.is_none()
    }

    pub fn data(&self) -> &RawValue {
        match &self.data {
            Data::Log(log) => &log.json,
            Data::Owned(raw) => raw,
            Data::Shared(raw) => raw,
        }
    }

    pub fn offset(&self) -> Option<&RawValue> {
        let log = self.offset_of.as_ref()?;
        log.stamp.get().map(|s| &*s.offset)
    }
}

/// The emitting side of one client.
pub trait Outlet: Send + Sync {
    /// Hand `packet` on, after everything handed before. The delivery stage puts it in the
    /// socket's queue soon after, counts it as delivered, and reports a refusal back to the
    /// router (see `emitter`); an error here means it was not taken at all.
    fn send(&self, packet: Packet) -> Result<(), Unsent>;
    /// Put `packet` in the socket's queue now, after everything handed before, and say
    /// whether it fit (replays stop at a full socket). The caller counts it as delivered.
    fn send_now(&self, packet: Packet) -> Result<(), Unsent>;
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

/// Put `packet` in `socket`'s queue.
pub fn emit(socket: &SocketRef, packet: &Packet) -> Result<(), Unsent> {
    let data = packet.data();
    let sent = match packet.offset() {
        // A tuple is sent as that many arguments.
        Some(offset) => socket.emit(packet.event, &(data, offset)),
        None => socket.emit(packet.event, data),
    };
    sent.map_err(unsent)
}

/// A socket, the meter of bytes its connection has written (see `edge`), and the emitter
/// its packets go through.
pub struct SocketOutlet {
    pub socket: SocketRef,
    pub meter: Arc<Meter>,
    pub emitter: Arc<Emitter>,
}

impl Outlet for SocketOutlet {
    fn send(&self, packet: Packet) -> Result<(), Unsent> {
        self.emitter.push(self.socket.clone(), packet);
        Ok(())
    }

    fn send_now(&self, packet: Packet) -> Result<(), Unsent> {
        // What was handed before goes first; while some of it waits for room, so does this.
        self.emitter.settle();
        if self.emitter.holds(self.socket.id) {
            return Err(Unsent::Full);
        }
        emit(&self.socket, &packet)
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
