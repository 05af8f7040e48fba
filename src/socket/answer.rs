//! Answers to a client's own requests (acknowledgements, `log:subscribed`, `log:unsubscribed`,
//! `error`) wait for room in its socket's queue instead of being lost.
//!
//! Why: socketioxide puts every packet in the socket's bounded queue (`socket_queue`
//! packets) and, when the queue is full, refuses it; `AckSender::send` then drops the
//! acknowledgement. A client whose queue a replay or a burst of logs has just filled would
//! never hear back about its request (the official JS client's `emitWithAck` waits for
//! ever). Logs may be dropped and reported when a client reads too slowly; the answer to a
//! request may not. So an answer is tried again while the queue is full, or
//! while the emitter has earlier packets parked for the socket (it must not overtake them), for
//! as long as a client may stay behind (`slow_consumer_timeout_ms`: past that it is cut
//! anyway), and given up only if the socket closes or that time passes (logged).
//!
//! The cost stays with the client that causes it: at most [`MAX_WAITING`] answers wait per
//! socket (more are tried once), and each backs off from 2 to 50 ms between tries.
//!
//! [`Ack`] is an extractor like socketioxide's `AckSender` that keeps what it needs to make
//! an `AckSender` again for each attempt (one can only be sent once).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{AckSender, SocketRef};
use socketioxide::handler::{FromMessageParts, Value};
use socketioxide::socket::Socket;
use socketioxide::{SendError, SocketError};

use crate::delivery::Emitter;

/// The first pause between two tries of a refused answer, and the longest.
const RETRY_FIRST: Duration = Duration::from_millis(2);
const RETRY_MAX: Duration = Duration::from_millis(50);

/// Answers that may wait at once for one socket.
pub const MAX_WAITING: usize = 8;

/// Answers waiting for room on one socket (kept in its extensions).
#[derive(Clone, Default)]
struct WaitingAnswers(Arc<AtomicUsize>);

/// How long an answer may wait, and who says whether earlier packets are still parked.
pub struct Patience<'a> {
    pub within: Duration,
    pub emitter: &'a Emitter,
}

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

/// What one try to send an answer found.
#[derive(PartialEq, Eq)]
enum Attempt {
    /// In the queue (or nothing was to be sent).
    Sent,
    /// The queue is full, or earlier packets for the socket are parked: try again.
    NoRoom,
    /// It cannot be sent at all (the socket is closed).
    Refused,
}

fn attempt(sent: Result<(), SendError>) -> Attempt {
    match sent {
        Ok(()) => Attempt::Sent,
        Err(SendError::Socket(SocketError::InternalChannelFull)) => Attempt::NoRoom,
        Err(_) => Attempt::Refused,
    }
}

/// One of the socket's waiting answers, counted while it lives.
struct WaitingSlot(WaitingAnswers);

impl WaitingSlot {
    /// A slot, unless [`MAX_WAITING`] answers wait for `socket` already.
    fn take(socket: &Socket) -> Option<WaitingSlot> {
        let waiting = socket
            .extensions
            .get::<WaitingAnswers>()
            .unwrap_or_else(|| {
                let w = WaitingAnswers::default();
                socket.extensions.insert(w.clone());
                w
            });
        let slot = WaitingSlot(waiting);
        (slot.0.0.fetch_add(1, Ordering::Relaxed) < MAX_WAITING).then_some(slot)
    }
}

impl Drop for WaitingSlot {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Try `send` until it is queued, the socket refuses it for good, or `within` has passed.
async fn patiently(
    what: &str,
    socket: &Socket,
    patience: &Patience<'_>,
    mut send: impl FnMut() -> Attempt,
) {
    let mut try_once = || {
        if patience.emitter.has_parked(socket.id) {
            Attempt::NoRoom
        } else {
            send()
        }
    };
    if try_once() != Attempt::NoRoom {
        return;
    }
    let Some(_slot) = WaitingSlot::take(socket) else {
        tracing::debug!(sid = %socket.id, what, "an answer not sent: its client's queue is full and {MAX_WAITING} answers wait already");
        return;
    };
    let deadline = Instant::now() + patience.within;
    let mut pause = RETRY_FIRST;
    loop {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RETRY_MAX);
        if !socket.connected() || try_once() != Attempt::NoRoom {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(sid = %socket.id, what, waited_ms = patience.within.as_millis() as u64, "gave up an answer: the client's queue stayed full");
            return;
        }
    }
}

impl Ack {
    /// Send `data` as the acknowledgement, waiting for room as `patience` allows.
    pub async fn send<T: Serialize + ?Sized>(self, data: &T, patience: &Patience<'_>) {
        if self.id.is_none() {
            return;
        }
        patiently("acknowledgement", &self.socket, patience, || {
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

/// Emit `event` with `data` to `socket`, waiting for room as `patience` allows.
pub async fn emit<T: Serialize + ?Sized>(
    socket: &SocketRef,
    event: &str,
    data: &T,
    patience: &Patience<'_>,
) {
    patiently(event, socket, patience, || {
        attempt(socket.emit(event, data))
    })
    .await;
}
