//! An event this server does not know (a typo such as `log:subscibe`): say so rather than
//! leave the client waiting for an answer that never comes.

use super::{Answer, Arguments, ClientEvent, SocketConnection};
use crate::protocol::{ClientError, Code, event};

pub struct Unknown {
    name: String,
}

impl ClientEvent<SocketConnection> for Unknown {
    /// Registered as the fallback, not by name.
    const NAME: &'static str = "";

    fn decode(arguments: Arguments, _: &SocketConnection) -> Result<Self, ClientError> {
        Ok(Unknown {
            name: arguments.event,
        })
    }

    async fn apply(self, _: &SocketConnection) -> Result<Answer, ClientError> {
        let shown: String = self.name.chars().take(64).collect();
        Err(ClientError::new(
            Code::UnknownEvent,
            format!(
                "unknown event {shown:?}; this server handles {}",
                event::FROM_CLIENT.join(", ")
            ),
        ))
    }
}
