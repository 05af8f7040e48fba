//! `auth:refresh` with `{ token }` (or the token itself): a newer token for the same user
//! keeps the connection past the old one's `exp`; its scope applies at once.

use serde_json::Value;

use super::{Answer, Arguments, ClientEvent, SocketConnection, busy};
use crate::protocol::{ClientError, Code, Refreshed, event};
use crate::router::{ClientCommand, Control};
use crate::socket::peer;
use crate::socket::session::Grant;

pub struct Refresh {
    token: String,
}

impl ClientEvent<SocketConnection> for Refresh {
    const NAME: &'static str = event::AUTH_REFRESH;

    fn decode(arguments: Arguments, _: &SocketConnection) -> Result<Self, ClientError> {
        // Anything else than a token is a refused token, said so below.
        let token = match arguments.first() {
            Ok(Some(Value::String(t))) => t,
            Ok(Some(v)) => v
                .get("token")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            Ok(None) | Err(_) => String::new(),
        };
        Ok(Refresh { token })
    }

    async fn apply(self, connection: &SocketConnection) -> Result<Answer, ClientError> {
        let SocketConnection {
            socket,
            app,
            session,
        } = connection;
        // One refresh at a time per connection, so the grant and the router's scope move
        // together.
        let _one_at_a_time = session.refreshing.lock().await;
        let (user, grant) = match Grant::verify(app, &self.token) {
            Ok(v) => v,
            Err(e) => {
                tracing::info!(target: "audit", user = %session.user, peer = %peer(socket), reason = e.reason(), "token refresh refused");
                return Err(ClientError::new(
                    Code::Unauthorized,
                    format!("the new token was refused ({})", e.reason()),
                )
                .field("token"));
            }
        };
        if user != session.user {
            tracing::info!(target: "audit", user = %session.user, other = %user, peer = %peer(socket), "token refresh for another user refused");
            return Err(
                ClientError::new(Code::Forbidden, "the new token is for another user")
                    .field("token"),
            );
        }
        if grant.expires_at < session.grant().expires_at {
            return Err(ClientError::new(
                Code::Unauthorized,
                "the new token expires before the current one",
            )
            .field("token"));
        }
        // The router first (it holds what the client is sent), then the grant (its expiry).
        // This one must not be refused for a full queue: it waits for room.
        let (tx, rx) = tokio::sync::oneshot::channel();
        app.control_reliably(Control::Client(ClientCommand::Rescope {
            sid: socket.id,
            scope: grant.scope.clone(),
            reply: tx,
        }))
        .await;
        let ended = rx.await.map_err(|_| busy())?;
        if let Some(error) = &ended {
            tracing::info!(target: "audit", user = %session.user, peer = %peer(socket), code = %error.code, reason = %error.message, "subscription ended on token refresh");
        }
        session.set_grant(grant.clone());
        Ok(Answer::ack(&Refreshed {
            success: true,
            expires_at: grant.expires_at,
            devices: grant.scope.patterns().to_vec(),
        }))
    }
}
