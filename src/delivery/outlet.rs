//! Where a client's events go: the socket, behind a small trait so that the delivery state
//! ([`super::Client`]) can be tested without one.
//!
//! A socket's packets are handed to the [`Emitter`], which puts them in the sockets' queues
//! from a task on the async runtime (see `emitter` for why); only replays, which must stop
//! at a full socket, put theirs in the queue at once ([`Outlet::send_now`]).

use std::sync::Arc;

use socketioxide::extract::SocketRef;

use super::emitter::Emitter;
use super::packet::{Packet, Unsent, emit};
use crate::edge::Meter;

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
    /// Whether it is a WebSocket (else long-polling), when the transport says.
    fn is_websocket(&self) -> Option<bool> {
        None
    }
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
        if self.emitter.has_parked(self.socket.id) {
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

    fn is_websocket(&self) -> Option<bool> {
        Some(self.socket.transport_type() == socketioxide::TransportType::Websocket)
    }

    fn cut(&self) {
        // A WebSocket is closed under the socket (its queue is too full for a disconnect
        // packet); a long-polling client that stopped polling ends by its heartbeat timeout.
        self.meter.close();
    }
}
