//! `log:pause`: hold matching logs (up to `pause_buffer`) until `log:resume`.

use super::{Answer, Arguments, ClientEvent, SocketConnection, ask_router};
use crate::protocol::{ClientError, Done, event};
use crate::router::ClientCommand;

pub struct Pause;

impl ClientEvent<SocketConnection> for Pause {
    const NAME: &'static str = event::PAUSE;

    fn decode(_: Arguments, _: &SocketConnection) -> Result<Self, ClientError> {
        Ok(Pause)
    }

    async fn apply(self, connection: &SocketConnection) -> Result<Answer, ClientError> {
        let sid = connection.socket.id;
        ask_router(&connection.app.router.control, |reply| {
            ClientCommand::Pause { sid, reply }
        })
        .await?;
        Ok(Answer::ack(&Done {
            success: true,
            paused: Some(true),
        }))
    }
}
