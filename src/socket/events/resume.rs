//! `log:resume`: deliver what was held while paused, in order, then live logs.

use super::{Answer, Arguments, ClientEvent, SocketConnection, ask_router};
use crate::protocol::{ClientError, Done, event};
use crate::router::ClientCommand;

pub struct Resume;

impl ClientEvent<SocketConnection> for Resume {
    const NAME: &'static str = event::RESUME;

    fn decode(_: Arguments, _: &SocketConnection) -> Result<Self, ClientError> {
        Ok(Resume)
    }

    async fn apply(self, connection: &SocketConnection) -> Result<Answer, ClientError> {
        let sid = connection.socket.id;
        ask_router(&connection.app.router.control, |reply| {
            ClientCommand::Resume { sid, reply }
        })
        .await?;
        Ok(Answer::ack(&Done {
            success: true,
            paused: Some(false),
        }))
    }
}
