//! `log:subscribe`: a new subscription replaces the previous one atomically, between two
//! batches. A resumable one (`resume`, `since`, `tail`) gets a session, saved before the
//! router answers (a replay may take a while, and the client may reconnect elsewhere as soon
//! as it has `log:subscribed`); a refused subscription puts back what the session held. The
//! router sends `log:subscribed` itself, ahead of any log of the subscription.

use serde_json::Value;

use super::{Answer, Arguments, ClientEvent, SocketConnection, ask_router};
use crate::log_entry::FieldError;
use crate::protocol::{ClientError, Code, event};
use crate::router::ClientCommand;
use crate::socket::peer;
use crate::subscription::SubscribeRequest;

pub struct Subscribe {
    request: SubscribeRequest,
    /// What a session keeps: the subscription without its one-off replay request.
    kept: Value,
}

impl ClientEvent<SocketConnection> for Subscribe {
    const NAME: &'static str = event::SUBSCRIBE;

    fn decode(arguments: Arguments, connection: &SocketConnection) -> Result<Self, ClientError> {
        // No argument at all: the seed's "everything" subscription.
        let data = arguments.first()?.unwrap_or(Value::Null);
        let mut kept = data.clone();
        if let Some(obj) = kept.as_object_mut() {
            obj.remove("since");
            obj.remove("tail");
        }
        let tail_max = connection.app.config.history.tail_max;
        let request =
            SubscribeRequest::parse(data, tail_max).map_err(|FieldError { field, message }| {
                ClientError::new(Code::InvalidSubscription, format!("{field}: {message}"))
                    .field(field)
            })?;
        Ok(Subscribe { request, kept })
    }

    async fn apply(self, connection: &SocketConnection) -> Result<Answer, ClientError> {
        let SocketConnection {
            socket,
            app,
            session,
        } = connection;
        let Subscribe { mut request, kept } = self;
        if request.resumable() {
            request.session = Some(session.resume_id().unwrap_or_else(crate::sessions::new_id));
        }
        let session_id = request.session.clone();
        let ttl = std::time::Duration::from_millis(app.config.history.session_ttl_ms);
        let previous = match &session_id {
            Some(id) => {
                let before = app.sessions.load(id, &session.user).await;
                let saved = crate::sessions::Saved {
                    user: session.user.clone(),
                    subscription: kept,
                };
                app.sessions
                    .save(id, &saved, ttl)
                    .await
                    .map_err(|refused| {
                        tracing::info!(target: "audit", user = %session.user, peer = %peer(socket), %refused, "resumable subscription refused");
                        ClientError::new(Code::TooManySessions, refused.to_string())
                    })?;
                before
            }
            None => None,
        };
        let sid = socket.id;
        let answer = ask_router(&app.router.control, |reply| ClientCommand::Subscribe {
            sid,
            request,
            reply,
        })
        .await
        .and_then(|answer| answer);
        if answer.is_err()
            && let Some(id) = &session_id
        {
            match previous {
                Some(saved) => {
                    let _ = app.sessions.save(id, &saved, ttl).await;
                }
                None => app.sessions.end(id).await,
            }
        }
        let subscribed = match answer {
            Ok(subscribed) => subscribed,
            Err(e) => {
                if e.code == Code::Forbidden {
                    tracing::info!(target: "audit", user = %session.user, peer = %peer(socket), reason = %e.message, "subscription refused");
                }
                return Err(e);
            }
        };
        match session_id {
            Some(id) => {
                session.set_resume_id(Some(id.clone()));
                // The connection went while this was under way: the session lives on for
                // its ttl, not for ever.
                if session.is_closed() {
                    app.sessions.detach(&id, ttl).await;
                }
            }
            None => {
                if let Some(old) = session.set_resume_id(None) {
                    app.sessions.end(&old).await;
                }
            }
        }
        // The router sent `log:subscribed` itself, ahead of any log.
        Ok(Answer::ack(&subscribed))
    }
}
