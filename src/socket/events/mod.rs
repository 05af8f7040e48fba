//! Client events: one way in for every event a client sends, and one file per event.
//!
//! Every event goes through [`handle`], in the same order: wait until the socket is marked
//! connected (an event can arrive between socketioxide's CONNECT and that mark), spend one
//! unit of the socket's event budget, decode the argument, apply the event (usually by
//! asking the router, [`ask_router`]), and answer: the event's own answer and, when the
//! client passed a callback, the acknowledgement (`dispatch`). A new event is one file that
//! implements [`ClientEvent`] plus one line in [`register`].

mod arguments;
mod dispatch;
mod pause;
mod refresh;
mod resume;
mod subscribe;
mod unknown;
mod unsubscribe;

use std::future::Future;

use crossbeam_channel::Sender;
use serde::Serialize;
use serde_json::value::RawValue;
use socketioxide::extract::SocketRef;
use tokio::sync::oneshot;

pub use arguments::Arguments;
pub use dispatch::SocketConnection;

use super::session::EventAdmission;
use crate::protocol::{ClientError, Code};
use crate::router::{ClientCommand, Control};

/// Install the handler of every client event on `socket`.
pub fn register(socket: &SocketRef) {
    dispatch::on::<subscribe::Subscribe>(socket);
    dispatch::on::<unsubscribe::Unsubscribe>(socket);
    dispatch::on::<pause::Pause>(socket);
    dispatch::on::<resume::Resume>(socket);
    dispatch::on::<refresh::Refresh>(socket);
    dispatch::on_unknown::<unknown::Unknown>(socket);
}

/// What handling an event needs of its connection (a trait so that [`handle`] can be tested
/// without a socket).
pub trait Connection: Sync {
    /// Wait until socketioxide has marked the socket connected (emits before that are
    /// refused as if it were closed).
    fn settled(&self) -> impl Future<Output = ()> + Send;
    /// Spend one unit of the socket's event budget.
    fn admit_event(&self) -> EventAdmission;
}

/// One event a client may send.
pub trait ClientEvent<C: Connection>: Sized + Send {
    /// Its name on the wire (see `protocol::event`).
    const NAME: &'static str;
    /// Read and check the event's arguments (`connection` gives the limits they are checked
    /// against); a refusal is answered as is and nothing is applied.
    fn decode(arguments: Arguments, connection: &C) -> Result<Self, ClientError>;
    /// Do what the event asks; the answer goes back to the client.
    fn apply(self, connection: &C) -> impl Future<Output = Result<Answer, ClientError>> + Send;
}

/// What a successful event answers: its acknowledgement and, for some events, the same
/// payload as an event of their own (the seed's `log:unsubscribed`).
#[derive(Debug)]
pub struct Answer {
    pub event: Option<&'static str>,
    pub payload: Box<RawValue>,
}

impl Answer {
    /// `payload` as the acknowledgement only.
    pub fn ack<T: Serialize>(payload: &T) -> Answer {
        Answer {
            event: None,
            payload: crate::delivery::to_raw(payload).unwrap_or_else(|| {
                RawValue::from_string("null".into()).expect("`null` is valid JSON")
            }),
        }
    }

    /// `payload` as the acknowledgement and as `event`.
    pub fn with_event<T: Serialize>(event: &'static str, payload: &T) -> Answer {
        Answer {
            event: Some(event),
            ..Answer::ack(payload)
        }
    }
}

/// What became of an event.
#[derive(Debug)]
pub enum Outcome {
    Answered(Answer),
    Failed(ClientError),
    /// Over the event budget; `notify` at most once a second, so that a flood is not
    /// answered by a flood.
    Refused {
        notify: bool,
    },
    /// Over the event budget for too long: disconnect it.
    Abusive,
}

/// Settle, spend the event budget, decode, apply: the one way in for every client event.
pub async fn handle<C: Connection, E: ClientEvent<C>>(
    connection: &C,
    arguments: Arguments,
) -> Outcome {
    connection.settled().await;
    match connection.admit_event() {
        EventAdmission::Allowed => {}
        EventAdmission::Refused { notify } => return Outcome::Refused { notify },
        EventAdmission::Abusive => return Outcome::Abusive,
    }
    let event = match E::decode(arguments, connection) {
        Ok(event) => event,
        Err(error) => return Outcome::Failed(error),
    };
    match event.apply(connection).await {
        Ok(answer) => Outcome::Answered(answer),
        Err(error) => Outcome::Failed(error),
    }
}

/// The error of a request the router could not take (its queue is full) or dropped.
pub fn busy() -> ClientError {
    ClientError::new(Code::Busy, "server busy, try again")
}

/// Ask the router (the command is applied between two batches) and wait for its answer.
pub async fn ask_router<T>(
    control: &Sender<Control>,
    build: impl FnOnce(oneshot::Sender<T>) -> ClientCommand,
) -> Result<T, ClientError> {
    let (tx, rx) = oneshot::channel();
    if control.try_send(Control::Client(build(tx))).is_err() {
        return Err(busy());
    }
    rx.await.map_err(|_| {
        tracing::warn!("the router dropped a request");
        busy()
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::protocol::Done;

    /// A connection whose budget the test sets, and a router queue the test holds.
    struct Fake {
        settled: AtomicBool,
        budget: Mutex<Vec<EventAdmission>>,
        control: Sender<Control>,
    }

    impl Connection for Fake {
        async fn settled(&self) {
            self.settled.store(true, Ordering::Relaxed);
        }
        fn admit_event(&self) -> EventAdmission {
            assert!(self.settled.load(Ordering::Relaxed), "settled first");
            self.budget
                .lock()
                .unwrap()
                .pop()
                .unwrap_or(EventAdmission::Allowed)
        }
    }

    /// An event that asks the router to pause, answering `{ success, paused }`.
    struct Ping;

    impl ClientEvent<Fake> for Ping {
        const NAME: &'static str = "test:ping";
        fn decode(arguments: Arguments, _: &Fake) -> Result<Self, ClientError> {
            match arguments.first()? {
                None => Ok(Ping),
                Some(_) => Err(ClientError::new(
                    Code::InvalidPayload,
                    "no argument expected",
                )),
            }
        }
        async fn apply(self, connection: &Fake) -> Result<Answer, ClientError> {
            let sid = socketioxide::socket::Sid::new();
            ask_router(&connection.control, |reply| ClientCommand::Pause {
                sid,
                reply,
            })
            .await?;
            Ok(Answer::with_event(
                "test:pong",
                &Done {
                    success: true,
                    paused: Some(true),
                },
            ))
        }
    }

    fn fake(queue: usize) -> (Fake, crossbeam_channel::Receiver<Control>) {
        let (control, rx) = crossbeam_channel::bounded(queue);
        let fake = Fake {
            settled: AtomicBool::new(false),
            budget: Mutex::new(Vec::new()),
            control,
        };
        (fake, rx)
    }

    /// Answer every pause the router queue receives, as the router would.
    fn router(rx: crossbeam_channel::Receiver<Control>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            while let Ok(Control::Client(ClientCommand::Pause { reply, .. })) = rx.recv() {
                let _ = reply.send(true);
            }
        })
    }

    #[tokio::test]
    async fn an_event_is_answered_with_its_event_and_ack() {
        let (conn, rx) = fake(4);
        let router = router(rx);
        let outcome = handle::<_, Ping>(&conn, Arguments::none(Ping::NAME)).await;
        let Outcome::Answered(answer) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(answer.event, Some("test:pong"));
        assert_eq!(answer.payload.get(), r#"{"success":true,"paused":true}"#);
        drop(conn);
        router.join().unwrap();
    }

    #[tokio::test]
    async fn the_event_budget_comes_before_anything_else() {
        let (conn, _rx) = fake(4);
        *conn.budget.lock().unwrap() = vec![
            EventAdmission::Abusive,
            EventAdmission::Refused { notify: false },
            EventAdmission::Refused { notify: true },
        ];
        // Undecodable arguments: the budget answers first, and nothing reaches the router.
        let bad = || Arguments::undecodable(Ping::NAME, "nested too deep");
        assert!(matches!(
            handle::<_, Ping>(&conn, bad()).await,
            Outcome::Refused { notify: true }
        ));
        assert!(matches!(
            handle::<_, Ping>(&conn, bad()).await,
            Outcome::Refused { notify: false }
        ));
        assert!(matches!(
            handle::<_, Ping>(&conn, bad()).await,
            Outcome::Abusive
        ));
        assert!(_rx.is_empty());
    }

    #[tokio::test]
    async fn an_undecodable_argument_is_refused_as_invalid_payload() {
        let (conn, rx) = fake(4);
        let outcome =
            handle::<_, Ping>(&conn, Arguments::undecodable(Ping::NAME, "nested too deep")).await;
        let Outcome::Failed(error) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(error.code, Code::InvalidPayload);
        assert!(error.message.contains("nested too deep"), "{error:?}");
        let outcome = handle::<_, Ping>(
            &conn,
            Arguments::with(Ping::NAME, serde_json::json!({"x": 1})),
        )
        .await;
        assert!(matches!(outcome, Outcome::Failed(e) if e.code == Code::InvalidPayload));
        assert!(rx.is_empty(), "nothing reached the router");
    }

    #[tokio::test]
    async fn a_full_router_queue_answers_busy() {
        let (conn, rx) = fake(1);
        conn.control.try_send(Control::Stop).unwrap();
        let outcome = handle::<_, Ping>(&conn, Arguments::none(Ping::NAME)).await;
        assert!(matches!(outcome, Outcome::Failed(e) if e.code == Code::Busy));
        // A router that drops the request is busy too.
        let (conn, rx2) = fake(4);
        let dropper = std::thread::spawn(move || drop(rx2.recv()));
        let outcome = handle::<_, Ping>(&conn, Arguments::none(Ping::NAME)).await;
        assert!(matches!(outcome, Outcome::Failed(e) if e.code == Code::Busy));
        dropper.join().unwrap();
        drop(rx);
    }
}
