//! One event for one client ([`Packet`]), how it is built from logs, and how it goes into a
//! socket's queue ([`emit`]). Every other file of `delivery` builds on these; this one
//! imports none of them.
//!
//! Payloads arrive already serialized ([`RawValue`]): a log's JSON is built once at ingest and
//! shared by every client (a [`Packet`] holds the record, not a copy); a batch's array is
//! built once per `log:batch`.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use socketioxide::extract::SocketRef;
use socketioxide::{SendError, SocketError};

use super::gzip_batches::GzipBatches;
use crate::log_entry::LogRecord;
use crate::protocol::{DropReason, event};

/// Socket.IO's framing around an event's name and data, `2["…",…]`: counted with the
/// payload against a socket's byte bound. (The engine.io packet type and the WebSocket frame
/// header come on top; the bound is a lower estimate of what the transport buffers.)
pub const SOCKET_IO_FRAMING: usize = 6;

/// What stands for a binary attachment in a Socket.IO packet's JSON.
const BINARY_PLACEHOLDER: &str = r#"{"_placeholder":true,"num":0}"#;

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
    /// A binary attachment: the gzip of a `log:batch` array (`encoding: "gzip"`), shared by
    /// every client sent the same batch.
    Gzip(Bytes),
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

    /// `logs` as one packet: a `log:batch` array when `batch` (gzip-compressed by `gzip`
    /// when given), else `log:new` of the one log; with `with_offset`, the last log's offset
    /// as the last argument. Its `bytes` are what it carries at least.
    pub fn logs(
        logs: &[&Arc<LogRecord>],
        batch: bool,
        with_offset: bool,
        gzip: Option<&GzipBatches>,
    ) -> Packet {
        debug_assert!(!logs.is_empty() && (batch || logs.len() == 1));
        let (event, data) = match (batch, gzip) {
            (true, Some(gzip)) => (event::BATCH, Data::Gzip(gzip.compress(logs))),
            (true, None) => (event::BATCH, Data::Owned(json_array(logs))),
            (false, _) => (event::NEW, Data::Log(Arc::clone(logs[0]))),
        };
        let offset_of = match logs.last() {
            Some(last) if with_offset => Some(Arc::clone(last)),
            _ => None,
        };
        let mut packet = Packet {
            event,
            data,
            offset_of,
            logs: logs.len() as u32,
            bytes: 0,
            report: None,
        };
        packet.bytes = (packet.payload_len()
            + event.len()
            + SOCKET_IO_FRAMING
            + packet.offset().map_or(0, |o| o.get().len() + 1)) as u64;
        packet
    }

    /// Bytes of its first argument (JSON text, or a binary attachment and its placeholder).
    pub fn payload_len(&self) -> usize {
        match &self.data {
            Data::Gzip(bytes) => bytes.len() + BINARY_PLACEHOLDER.len(),
            _ => self.json().map_or(0, |j| j.get().len()),
        }
    }

    /// An answer or notice rather than logs: when the socket's queue is full it waits for
    /// room (see `waiting`) instead of being refused. (Logs are refused, dropped and
    /// reported; a refused `log:dropped` report is reported again.)
    pub fn waits_for_room(&self) -> bool {
        self.logs == 0 && self.report.is_none()
    }

    /// Its first argument as JSON (`None` for a binary attachment).
    pub fn json(&self) -> Option<&RawValue> {
        match &self.data {
            Data::Log(log) => Some(&log.json),
            Data::Owned(raw) => Some(raw),
            Data::Shared(raw) => Some(raw),
            Data::Gzip(_) => None,
        }
    }

    pub fn offset(&self) -> Option<&RawValue> {
        let log = self.offset_of.as_ref()?;
        log.stamp.get().map(|s| &*s.offset)
    }
}

fn unsent(e: SendError) -> Unsent {
    match e {
        SendError::Socket(SocketError::Closed) => Unsent::Closed,
        _ => Unsent::Full,
    }
}

/// Put `packet` in `socket`'s queue.
pub fn emit(socket: &SocketRef, packet: &Packet) -> Result<(), Unsent> {
    // A tuple is sent as that many arguments; `Bytes` as a binary attachment.
    let sent = match (&packet.data, packet.offset()) {
        (Data::Gzip(bytes), Some(offset)) => socket.emit(packet.event, &(bytes, offset)),
        (Data::Gzip(bytes), None) => socket.emit(packet.event, bytes),
        (_, offset) => match (packet.json(), offset) {
            (Some(data), Some(offset)) => socket.emit(packet.event, &(data, offset)),
            (Some(data), None) => socket.emit(packet.event, data),
            // Only a binary attachment has no JSON, and it is matched above.
            (None, _) => return Ok(()),
        },
    };
    sent.map_err(unsent)
}

/// Serialize once, for sharing among clients.
pub fn to_raw<T: Serialize + ?Sized>(data: &T) -> Option<Box<RawValue>> {
    serde_json::value::to_raw_value(data).ok()
}

/// `[a,b,c]` from the logs' own JSON, without re-serializing them.
fn json_array(logs: &[&Arc<LogRecord>]) -> Box<RawValue> {
    let mut text =
        String::with_capacity(logs.iter().map(|l| l.json.get().len() + 1).sum::<usize>() + 2);
    text.push('[');
    for (i, log) in logs.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(log.json.get());
    }
    text.push(']');
    // Valid JSON values joined by commas inside brackets are a valid JSON array.
    RawValue::from_string(text)
        .unwrap_or_else(|_| RawValue::from_string("[]".to_owned()).expect("`[]` is valid JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(message: &str) -> Arc<LogRecord> {
        Arc::new(
            LogRecord::from_value(serde_json::json!({"deviceId": "d", "message": message}))
                .unwrap(),
        )
    }

    #[test]
    fn a_batch_is_the_logs_own_json_joined_and_its_size_counts_the_framing() {
        let (a, b) = (log("a"), log("b"));
        let packet = Packet::logs(&[&a, &b], true, false, None);
        let array = format!("[{},{}]", a.json.get(), b.json.get());
        assert_eq!(packet.json().unwrap().get(), array);
        assert_eq!(packet.logs, 2);
        // What `2["log:batch",[…]]` carries.
        let framed = format!("2[\"{}\",{array}]", event::BATCH);
        assert_eq!(packet.bytes as usize, framed.len());
        let single = Packet::logs(&[&a], false, false, None);
        assert_eq!(single.event, event::NEW);
        assert_eq!(single.json().unwrap().get(), a.json.get());
    }
}
