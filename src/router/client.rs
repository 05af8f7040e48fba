//! Client lifecycle and subscription commands, from the socket handlers.

use std::time::Instant;

use socketioxide::socket::Sid;
use tokio::sync::oneshot;

use super::{Router, SubscribeError};
use crate::delivery::Client;
use crate::protocol::{ClientError, Subscribed};
use crate::subscription::SubscribeRequest;

pub enum ClientCommand {
    /// A handshake passed authentication and admission.
    Connect(Box<Client>),
    Disconnect(Sid),
    Subscribe {
        sid: Sid,
        request: SubscribeRequest,
        reply: oneshot::Sender<Result<Subscribed, ClientError>>,
    },
    /// Answers whether the client had a subscription.
    Unsubscribe {
        sid: Sid,
        reply: oneshot::Sender<bool>,
    },
    /// Answers whether the client is known.
    Pause {
        sid: Sid,
        reply: oneshot::Sender<bool>,
    },
    /// Answers whether the client is known.
    Resume {
        sid: Sid,
        reply: oneshot::Sender<bool>,
    },
}

impl Router {
    pub(super) fn apply_client(&mut self, command: ClientCommand) {
        match command {
            ClientCommand::Connect(client) => {
                self.clients.insert(client.sid, *client);
            }
            ClientCommand::Disconnect(sid) => {
                self.registry.unsubscribe(sid);
                self.clients.remove(&sid);
                self.outboxes.remove(&sid);
            }
            ClientCommand::Subscribe {
                sid,
                request,
                reply,
            } => {
                let result = self.subscribe(sid, request).map_err(|e| e.to_client());
                let _ = reply.send(result);
            }
            ClientCommand::Unsubscribe { sid, reply } => {
                if let Some(client) = self.clients.get_mut(&sid) {
                    client.flush_outbox(Instant::now(), true);
                    client.info.set_subscription(None);
                }
                let _ = reply.send(self.registry.unsubscribe(sid));
            }
            ClientCommand::Pause { sid, reply } => {
                let found = self.clients.get_mut(&sid).map(Client::pause).is_some();
                let _ = reply.send(found);
            }
            ClientCommand::Resume { sid, reply } => {
                let found = self.clients.get_mut(&sid).map(Client::resume).is_some();
                let _ = reply.send(found);
            }
        }
    }

    fn subscribe(
        &mut self,
        sid: Sid,
        request: SubscribeRequest,
    ) -> Result<Subscribed, SubscribeError> {
        if !self.clients.contains_key(&sid) {
            return Err(SubscribeError::NotConnected);
        }
        self.registry
            .subscribe(sid, &request.filter, &request.params, &request.transform)?;
        let client = self
            .clients
            .get_mut(&sid)
            .ok_or(SubscribeError::NotConnected)?;
        let rate_limit = client.configure(request.batch, request.rate_limit, Instant::now());
        let subscribed = Subscribed {
            success: true,
            filter: request.filter,
            params: request.params,
            transform: request.transform,
            batch: request.batch,
            rate_limit,
        };
        client
            .info
            .set_subscription(serde_json::to_value(&subscribed).ok());
        Ok(subscribed)
    }
}
