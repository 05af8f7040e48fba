//! Client lifecycle and subscription commands, from the socket handlers.

use std::sync::Arc;
use std::time::Instant;

use socketioxide::socket::Sid;
use tokio::sync::oneshot;

use super::replay::{Cancel, Plan, Replay};
use super::{Router, SubscribeError};
use crate::auth::Scope;
use crate::delivery::{Client, DeliveryOptions};
use crate::history::store::After;
use crate::protocol::{ClientError, Code, Subscribed, event};
use crate::subscription::{SubscribeRequest, check_scope};

pub enum ClientCommand {
    /// A handshake passed authentication and admission.
    Connect(Box<Client>),
    Disconnect(Sid),
    /// Answered (and `log:subscribed` sent by the router) once any replay has ended.
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
    /// New delivery rates (`rate_limit`, `max_client_rate_limit`, SIGHUP) for every
    /// connected client; answers how many.
    SetDelivery {
        delivery: Arc<crate::config::DeliveryConfig>,
        reply: oneshot::Sender<usize>,
    },
}

impl ClientCommand {
    /// The client the command is about.
    fn sid(&self) -> Option<Sid> {
        match self {
            ClientCommand::Connect(client) => Some(client.sid),
            ClientCommand::Disconnect(sid)
            | ClientCommand::Subscribe { sid, .. }
            | ClientCommand::Unsubscribe { sid, .. }
            | ClientCommand::Pause { sid, .. }
            | ClientCommand::Resume { sid, .. }
            | ClientCommand::Rescope { sid, .. } => Some(*sid),
            ClientCommand::SetDelivery { .. } => None,
        }
    }
}

impl Router {
    /// Apply `command`, or, with sharded streams, hold it until the shards it needs are
    /// read (see [`super::shard_interest`]).
    pub(super) fn apply_client(&mut self, command: ClientCommand) {
        let sid = command.sid();
        if let (Some(sid), Some((shards, interest))) = (sid, &mut self.shard_interest) {
            let now = Instant::now();
            // Only a subscribe waits for shards, and only one its scope allows (a refused
            // one is answered at once, and makes the bus read nothing). A token refresh is
            // applied at once whatever it needs: a narrower scope must never wait, and a
            // wider one gets the new shards' logs from when they are read.
            let need = match &command {
                ClientCommand::Subscribe { request, .. } => self.clients.get(&sid).map_or(0, |c| {
                    match check_scope(&request.filter, &request.params, c.scope()) {
                        Ok(()) => crate::shards::needed_by(
                            &request.filter,
                            &request.params,
                            c.scope(),
                            *shards,
                        ),
                        Err(_) => 0,
                    }
                }),
                _ => 0,
            };
            if matches!(command, ClientCommand::Disconnect(_)) {
                // Its held commands go unanswered: the socket is gone.
                drop(interest.drop_parked(sid, now));
            } else if interest.has_parked(sid) || !interest.is_ready(need) {
                // Past the client's cap the command is dropped: its handler answers busy.
                drop(interest.park(sid, need, command, now));
                return;
            }
        }
        self.apply_client_now(command);
        if let Some(sid) = sid {
            self.refresh_interest(sid);
        }
    }

    /// Tell the shard interest what `sid`'s subscription needs now.
    pub(super) fn refresh_interest(&mut self, sid: Sid) {
        let Some((shards, _)) = &self.shard_interest else {
            return;
        };
        let need = match (self.registry.subscription_of(sid), self.clients.get(&sid)) {
            (Some((filter, params, _)), Some(client)) => Some(crate::shards::needed_by(
                &filter,
                &params,
                client.scope(),
                *shards,
            )),
            _ => None,
        };
        if let Some((_, interest)) = &mut self.shard_interest {
            interest.set(sid, need, Instant::now());
        }
    }

    /// Once a second: shards past their grace are let go, commands that waited too long
    /// for theirs are refused (and what they held up goes on).
    pub(super) fn shard_tick(&mut self, now: Instant) {
        let Some((_, interest)) = &mut self.shard_interest else {
            return;
        };
        let (expired, released) = interest.tick(now);
        for command in expired {
            let error = ClientError::new(
                Code::BusUnavailable,
                format!(
                    "the logs this subscription needs could not be read from redis within {} s; retry later",
                    super::shard_interest::PARK_TIMEOUT.as_secs()
                ),
            );
            match command {
                ClientCommand::Subscribe { reply, .. } => self.answer(reply, Err(error)),
                other => self.apply_client_now(other),
            }
        }
        for command in released {
            self.apply_client(command);
        }
    }

    fn apply_client_now(&mut self, command: ClientCommand) {
        match command {
            ClientCommand::Connect(client) => {
                self.handshakes.push_back((Instant::now(), client.sid));
                self.clients.insert(client.sid, *client);
            }
            ClientCommand::Disconnect(sid) => {
                self.cancel_replay(sid, Cancel::Superseded { replays: false });
                self.costs.release(sid);
                self.registry.unsubscribe(sid);
                self.clients.remove(&sid);
                self.followups.forget(&sid);
            }
            ClientCommand::Subscribe {
                sid,
                request,
                reply,
            } => {
                tracing::debug!(%sid, "subscribe reached the router");
                let replays = request.since.is_some() || request.tail.is_some();
                // The scope is checked here, where the client's current scope lives (a token
                // refresh may have just changed it).
                let in_scope = match self.clients.get(&sid) {
                    Some(c) => check_scope(&request.filter, &request.params, c.scope()),
                    None => Ok(()),
                };
                let user = self
                    .clients
                    .get(&sid)
                    .map(|c| c.info.user_id.clone())
                    .unwrap_or_default();
                let result = in_scope
                    .and_then(|()| self.costs.admit(sid, &user, &request, Instant::now()))
                    .and_then(|cost| {
                        let subscribed = self.subscribe(sid, request).map_err(|e| e.to_client())?;
                        self.costs.charge(sid, &user, cost);
                        // Only now that the new subscription is in force does the old one's
                        // replay stop.
                        self.cancel_replay(sid, Cancel::Superseded { replays });
                        Ok(subscribed)
                    });
                match result {
                    Err(e) => {
                        self.answer(reply, Err(e));
                    }
                    Ok((subscribed, None)) => {
                        if let Some(client) = self.clients.get(&sid) {
                            client.emit(event::SUBSCRIBED, &subscribed);
                        }
                        self.answer(reply, Ok(subscribed));
                    }
                    Ok((subscribed, Some(plan))) => self.start_replay(sid, plan, subscribed, reply),
                }
            }
            ClientCommand::Unsubscribe { sid, reply } => {
                self.cancel_replay(sid, Cancel::Superseded { replays: false });
                self.costs.release(sid);
                if let Some(client) = self.clients.get_mut(&sid) {
                    client.flush_outbox(Instant::now(), true);
                    client.info.set_subscription(None);
                }
                let had = self.registry.unsubscribe(sid);
                self.answer(reply, had);
            }
            ClientCommand::Pause { sid, reply } => {
                let found = self.clients.get_mut(&sid).map(Client::pause).is_some();
                self.answer(reply, found);
            }
            ClientCommand::Resume { sid, reply } => {
                let found = self.clients.get_mut(&sid).map(Client::resume).is_some();
                self.answer(reply, found);
            }
            ClientCommand::Rescope { sid, scope, reply } => {
                let error = self.rescope(sid, scope);
                self.answer(reply, error);
            }
            ClientCommand::SetDelivery { delivery, reply } => {
                // Once per SIGHUP: every client's rate is worked out again.
                for client in self.clients.values_mut() {
                    client.set_limits(delivery.clone());
                }
                let _ = reply.send(self.clients.len());
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
            Ok(()) => {
                self.rescope_replay(sid);
                None
            }
            Err(error) => {
                self.registry.unsubscribe(sid);
                self.end_subscriptions(&[sid], &error);
                Some(error)
            }
        }
    }

    /// Install the subscription; with `since` or `tail`, also say what to replay first.
    fn subscribe(
        &mut self,
        sid: Sid,
        request: SubscribeRequest,
    ) -> Result<(Subscribed, Option<Plan>), SubscribeError> {
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
        let resumable = request.resumable();
        let options = DeliveryOptions {
            batch: request.batch,
            with_offsets: resumable,
            rate: request.rate_limit,
            gzip: request.gzip,
        };
        let rate_limit = client.configure(options, Instant::now());
        let mut subscribed = Subscribed {
            success: true,
            filter: request.filter,
            params: request.params,
            transform: request.transform,
            batch: request.batch,
            rate_limit,
            encoding: request.gzip.then_some("gzip"),
            recovered: None,
            replayed: None,
            session: request.session,
        };
        client
            .info
            .set_subscription(crate::delivery::to_raw(&subscribed));
        // Everything the router has processed is in history; what comes next is live.
        let end = self.history.newest().unwrap_or_default();
        let plan = match (&request.since, request.tail) {
            (Some(since), _) => {
                let exact = crate::history::parse(since)
                    .filter(|(epoch, _)| *epoch == self.epoch)
                    .map(|(_, after)| (after, self.history.after(after)));
                match exact {
                    Some((after, After::Replay)) => Some(Plan::Since { after, end }),
                    Some((_, After::UpToDate)) => {
                        subscribed.recovered = Some(true);
                        subscribed.replayed = Some(0);
                        None
                    }
                    // Another instance delivered up to there and this one has not read that
                    // far yet: nothing to replay, and what it reads up to there the client
                    // already has.
                    Some((after, After::Ahead)) if self.offsets_may_lead => {
                        if let Some(client) = self.clients.get_mut(&sid) {
                            client.skip_through(after);
                        }
                        subscribed.recovered = Some(true);
                        subscribed.replayed = Some(0);
                        None
                    }
                    // Another epoch (a restart of an in-memory history), or older than what
                    // is kept.
                    _ => {
                        self.metrics.replay_served(false);
                        subscribed.recovered = Some(false);
                        subscribed.replayed = Some(0);
                        None
                    }
                }
            }
            (None, Some(n)) if !self.history.is_empty() => Some(Plan::Tail { n, end }),
            (None, Some(_)) => {
                subscribed.replayed = Some(0);
                None
            }
            (None, None) => None,
        };
        Ok((subscribed, plan))
    }

    fn start_replay(
        &mut self,
        sid: Sid,
        plan: Plan,
        subscribed: Subscribed,
        reply: oneshot::Sender<Result<Subscribed, ClientError>>,
    ) {
        let (Some(registration), Some(client)) = (
            self.registry.registration_of(sid),
            self.clients.get_mut(&sid),
        ) else {
            return;
        };
        client.start_replay();
        self.replays.push_back(Replay {
            sid,
            registration,
            filter: subscribed.filter.clone(),
            epoch: self.epoch.clone(),
            plan,
            found: Default::default(),
            back_from: None,
            sent: 0,
            backlog: Vec::new(),
            retry_at: None,
            recovered: true,
            finished: false,
            subscribed,
            reply: Some(reply),
        });
    }
}
