//! Answers to a client's own requests (acknowledgements, `log:paused`, `error`, …) wait for
//! room in its socket's queue instead of being lost.
//!
//! Why: socketioxide puts every packet in the socket's bounded queue (`socket_queue`
//! packets) and, when the queue is full, refuses it; `AckSender::send` then drops the
//! acknowledgement. A client whose queue a replay or a burst of logs has just filled never
//! heard back about its request (the official JS client's `emitWithAck` waits for ever: a
//! test run hung on it). Logs may be dropped and reported when a client reads too slowly;
//! the answer to a request may not. So an answer is tried again while the queue is full,
//! for as long as a client may stay behind (`slow_consumer_timeout_ms`: past that it is cut
//! anyway), and given up only if the socket closes or that time passes (logged).
//!
//! [`Ack`] is an extractor like socketioxide's `AckSender` that keeps what it needs to make
//! an `AckSender` again for each attempt (one can only be sent once).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{AckSender, SocketRef};
use socketioxide::handler::{FromMessageParts, Value};
use socketioxide::socket::Socket;
use socketioxide::{SendError, SocketError};

/// How long a refused answer waits before it is tried again.
const RETRY_EVERY: Duration = Duration::from_millis(2);

/// The acknowledgement the client asked for with its event, if it asked for one.
pub struct Ack {
    socket: Arc<Socket>,
    id: Option<i64>,
}

impl FromMessageParts<LocalAdapter> for Ack {
    type Error = Infallible;

    fn from_message_parts(
        socket: &Arc<Socket>,
        _: &mut Value,
        id: &Option<i64>,
    ) -> Result<Self, Infallible> {
        Ok(Ack {
            socket: socket.clone(),
            id: *id,
        })
    }
}

/// One try: `Ok` if the packet is in the queue (or there was nothing to send), `Err(true)`
/// if the queue is full, `Err(false)` if it cannot be sent at all.
type Attempt = Result<(), bool>;

fn attempt(sent: Result<(), SendError>) -> Attempt {
    match sent {
        Ok(()) => Ok(()),
        Err(SendError::Socket(SocketError::InternalChannelFull)) => Err(true),
        Err(_) => Err(false),
    }
}

/// Try `send` until it is queued, the socket refuses it for good, or `within` has passed.
async fn patiently(
    what: &str,
    socket: &Socket,
    within: Duration,
    mut send: impl FnMut() -> Attempt,
) {
    let deadline = Instant::now() + within;
    loop {
        match send() {
            Ok(()) | Err(false) => return,
            Err(true) if Instant::now() >= deadline => {
                tracing::warn!(sid = %socket.id, what, waited_ms = within.as_millis() as u64, "gave up an answer: the client's queue stayed full");
                return;
            }
            Err(true) => tokio::time::sleep(RETRY_EVERY).await,
        }
    }
}

impl Ack {
    /// Send `data` as the acknowledgement, waiting for room for at most `within`.
    pub async fn send<T: Serialize + ?Sized>(self, data: &T, within: Duration) {
        if self.id.is_none() {
            return;
        }
        patiently("acknowledgement", &self.socket, within, || {
            attempt(self.sender().send(data))
        })
        .await;
    }

    /// Send `data` as the acknowledgement if there is room now (a refusal to a client that
    /// floods events is not worth waiting for).
    pub fn try_send<T: Serialize + ?Sized>(self, data: &T) {
        let _ = self.sender().send(data);
    }

    fn sender(&self) -> AckSender {
        match AckSender::from_message_parts(
            &self.socket,
            &mut Value::Bytes(Default::default()),
            &self.id,
        ) {
            Ok(sender) => sender,
            Err(never) => match never {},
        }
    }
}

/// Emit `event` with `data` to `socket`, waiting for room for at most `within`.
pub async fn emit<T: Serialize + ?Sized>(
    socket: &SocketRef,
    event: &str,
    data: &T,
    within: Duration,
) {
    patiently(event, socket, within, || attempt(socket.emit(event, data))).await;
}
