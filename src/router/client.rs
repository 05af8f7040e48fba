//! Client lifecycle and subscription commands, from the socket handlers.

use std::sync::Arc;
use std::time::Instant;

use socketioxide::socket::Sid;
use tokio::sync::oneshot;

use super::{Router, SubscribeError};
use crate::auth::Scope;
use crate::delivery::Client;
use crate::protocol::{ClientError, Subscribed};
use crate::subscription::{SubscribeRequest, check_scope};

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
    /// A refreshed token changed what the client may see: its subscription is registered
    /// again under the new scope, or ended (the error comes back) if it names devices the
    /// new scope excludes.
    Rescope {
        sid: Sid,
        scope: Arc<Scope>,
        reply: oneshot::Sender<Option<ClientError>>,
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
                // The scope is checked here, where the client's current scope lives (a token
                // refresh may have just changed it).
                let in_scope = match self.clients.get(&sid) {
                    Some(c) => check_scope(&request.filter, &request.params, c.scope()),
                    None => Ok(()),
                };
                let result =
                    in_scope.and_then(|()| self.subscribe(sid, request).map_err(|e| e.to_client()));
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
            ClientCommand::Rescope { sid, scope, reply } => {
                let _ = reply.send(self.rescope(sid, scope));
            }
        }
    }

    fn rescope(&mut self, sid: Sid, scope: Arc<Scope>) -> Option<ClientError> {
        let client = self.clients.get_mut(&sid)?;
        if client.scope() == &scope {
            return None;
        }
        client.set_scope(scope.clone());
        let (filter, params, chain) = self.registry.subscription_of(sid)?;
        let kept = check_scope(&filter, &params, &scope).and_then(|()| {
            self.registry
                .subscribe(sid, &filter, &params, &chain, &scope)
                .map_err(|e| e.to_client())
        });
        match kept {
            Ok(()) => None,
            Err(error) => {
                self.registry.unsubscribe(sid);
                self.end_subscriptions(&[sid], &error);
                Some(error)
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
        let client = self
            .clients
            .get_mut(&sid)
            .ok_or(SubscribeError::NotConnected)?;
        self.registry.subscribe(
            sid,
            &request.filter,
            &request.params,
            &request.transform,
            client.scope(),
        )?;
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
