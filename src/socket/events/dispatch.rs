//! Client events on a real socket: the handler socketioxide calls for each event, the
//! [`Connection`] of a socket, and the answer written back (waiting for room in a full
//! queue, see `answer`).

use std::sync::Arc;
use std::time::Instant;

use socketioxide::extract::{Event, SocketRef, State, TryData};

use super::arguments::FirstArgument;
use super::{Arguments, ClientEvent, Connection, Outcome, handle};
use crate::app::AppState;
use crate::protocol::{ClientError, Code, Failure, event};
use crate::socket::answer::{self, Ack, Patience};
use crate::socket::peer;
use crate::socket::session::{EventAdmission, Session};

/// How long an event waits for its socket to be marked connected (socketioxide does it right
/// after sending CONNECT; a socket not marked by then never will be).
const SETTLE_AT_MOST: std::time::Duration = std::time::Duration::from_secs(1);

/// A socket, the app, and the socket's session: what an event is applied with.
pub struct SocketConnection {
    pub socket: SocketRef,
    pub app: AppState,
    pub session: Arc<Session>,
}

impl Connection for SocketConnection {
    async fn settled(&self) {
        if self.socket.connected() {
            return;
        }
        if tokio::time::timeout(SETTLE_AT_MOST, self.session.connected())
            .await
            .is_err()
        {
            tracing::debug!(sid = %self.socket.id, "an event came for a socket not marked connected within a second");
        }
    }

    fn admit_event(&self) -> EventAdmission {
        self.session.admit_event(Instant::now())
    }
}

impl SocketConnection {
    /// How long an answer may wait for room in the client's queue.
    pub fn patience(&self) -> Patience<'_> {
        Patience {
            within: self.app.config.delivery.slow_consumer_timeout(),
            emitter: &self.app.emitter,
        }
    }

    /// Write `outcome` back: the answer (its event, then the acknowledgement) or the error
    /// (an `error` event and a failed acknowledgement).
    async fn reply(&self, outcome: Outcome, ack: Ack) {
        let patience = self.patience();
        match outcome {
            Outcome::Answered(answer) => {
                if let Some(event) = answer.event {
                    answer::emit(&self.socket, event, &answer.payload, &patience).await;
                }
                ack.send(&answer.payload, &patience).await;
            }
            Outcome::Failed(error) => {
                answer::emit(&self.socket, event::ERROR, &error, &patience).await;
                ack.send(&Failure::of(&error), &patience).await;
            }
            // Neither waits for room in a full queue.
            Outcome::Refused { notify } => {
                self.app
                    .metrics
                    .events_rejected
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let error = ClientError::new(Code::RateLimited, "too many events; slow down");
                if notify {
                    let _ = self.socket.emit(event::ERROR, &error);
                }
                ack.try_send(&Failure::of(&error));
            }
            Outcome::Abusive => {
                tracing::info!(target: "audit", sid = %self.socket.id, user = %self.session.user, peer = %peer(&self.socket), "disconnecting a socket that keeps flooding events");
                let error = ClientError::new(Code::RateLimited, "too many events; disconnecting");
                let _ = self.socket.emit(event::ERROR, &error);
                let _ = self.socket.clone().disconnect();
            }
        }
    }
}

/// Handle `E` on `socket`.
pub fn on<E: ClientEvent<SocketConnection> + 'static>(socket: &SocketRef) {
    socket.on(E::NAME, dispatch::<E>);
}

/// Handle every event no other handler takes with `E`.
pub fn on_unknown<E: ClientEvent<SocketConnection> + 'static>(socket: &SocketRef) {
    socket.on_fallback(dispatch::<E>);
}

async fn dispatch<E: ClientEvent<SocketConnection>>(
    socket: SocketRef,
    Event(name): Event,
    TryData(first): TryData<FirstArgument>,
    ack: Ack,
    State(app): State<AppState>,
) {
    tracing::debug!(sid = %socket.id, event = %name, "client event");
    let Some(session) = socket.extensions.get::<Arc<Session>>() else {
        return;
    };
    let arguments = Arguments::new(name, first.map_err(|e| e.to_string()));
    let connection = SocketConnection {
        socket,
        app,
        session,
    };
    let outcome = handle::<_, E>(&connection, arguments).await;
    connection.reply(outcome, ack).await;
}
