//! `log:unsubscribe`: end the subscription (and its session: nothing to resume); answered
//! with the seed's `log:unsubscribed`.

use super::{Answer, Arguments, ClientEvent, SocketConnection, ask_router};
use crate::protocol::{ClientError, Done, event};
use crate::router::ClientCommand;

pub struct Unsubscribe;

impl ClientEvent<SocketConnection> for Unsubscribe {
    const NAME: &'static str = event::UNSUBSCRIBE;

    fn decode(_: Arguments, _: &SocketConnection) -> Result<Self, ClientError> {
        Ok(Unsubscribe)
    }

    async fn apply(self, connection: &SocketConnection) -> Result<Answer, ClientError> {
        crate::socket::end_session(&connection.socket, &connection.app).await;
        let sid = connection.socket.id;
        ask_router(&connection.app.router.control, |reply| {
            ClientCommand::Unsubscribe { sid, reply }
        })
        .await?;
        Ok(Answer::with_event(
            event::UNSUBSCRIBED,
            &Done {
                success: true,
                paused: None,
            },
        ))
    }
}
