//! The router: one dedicated thread that owns every subscription and every client's
//! delivery state, cuts the incoming stream into batches, evaluates each filter once per
//! batch for all its subscriptions, and hands each client its matches in ingest order.
//!
//! Why one thread: a single owner makes ordering and atomicity trivial. A subscription change,
//! a pause or a resume is a [`Control`] message applied *between* two batches, so a client
//! never sees a gap or a duplicate. And because it is a plain OS thread, plugin code never
//! runs on the async runtime's workers.
//!
//! The router decides what each client gets, in order, and accounts for it; it does not put
//! packets in the sockets' queues itself. Each turn of its loop hands what it sent to the
//! emitter's task on the async runtime (`delivery::emitter`): writing every socket's queue
//! from this thread cost a cross-core hand-off per packet. Refusals come back through the
//! emitter and are counted at the start of the next turn; an answer to a socket handler goes
//! out after what was sent before it ([`Router::answer`]).
//!
//! Batching costs no latency when idle. Evaluation batches are cut at
//! `evaluation_batch_max_logs` or as soon as the inbound queue is empty. Under load, a large
//! batch lets each client get its share back to back, so its socket's writer finds several
//! frames to send at once instead of waking for each (one `sendto` per frame was most of the
//! cost at high rates: BENCHMARKS.md §8). Plugins still see at most `batch_max_logs` logs per
//! call, so a call's CPU budget, memory and answer limits keep their meaning.
//!
//! For `batch: true` clients, `log:batch` messages follow the seed's "50 logs or 100 ms"
//! per client as a leading-edge throttle: the first logs after a quiet `batch_max_delay_ms`
//! go out at once, later ones wait for the window (or for `batch_max_logs` to pile up, or
//! for the oldest to have waited 4/5 of the window since it was received: see
//! [`Client::outbox_due`]). That cuts messages, the dominant cost of fan-out, without
//! delaying a lone log.
//!
//! Control messages come in three kinds, one file each: [`client_command`] (connect,
//! subscribe, pause, ...), [`admin_query`] (queries for the REST API) and [`plugin_command`]
//! (hot swap of plugins). Beside them: [`registry`] (plugins and registrations), [`replay`]
//! (history replays in slices), [`costs`] (what subscriptions cost) and [`followups`] (the
//! clients the tick must come back to).

pub mod admin_query;
pub mod client_command;
pub mod costs;
pub mod failures;
pub mod followups;
pub mod outboxes;
pub mod plugin_command;
pub mod registry;
pub mod replay;
pub mod shard_interest;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select_biased};
use serde_json::value::RawValue;
use socketioxide::socket::Sid;
use tokio::sync::oneshot;

use crate::config::Config;
use crate::delivery::{Client, Emitter, to_raw};
use crate::engine::{EngineError, Matches, RegistrationId, Triage};
use crate::history::HistoryLimits;
use crate::history::disk::DiskLog;
use crate::history::store::History;
use crate::log_entry::LogRecord;
use crate::log_entry::{Position, Stamp};
use crate::metrics::Metrics;
use crate::protocol::{ClientError, DeviceStatus, DropReason, event};
pub use admin_query::AdminQuery;
pub use client_command::ClientCommand;
use costs::SubscriptionCosts;
use failures::{FailedFilter, FailedTransform};
use followups::Followups;
pub use plugin_command::PluginCommand;
pub use registry::{Registry, SubscribeError};

/// Data, in ingest order.
pub enum Inbound {
    Logs(Vec<Arc<LogRecord>>),
    /// Logs accepted before this instance started (read from the Redis stream at start):
    /// history only, not delivered.
    Backfill(Vec<Arc<LogRecord>>),
    /// The history's epoch (the Redis stream's); a change empties the kept history.
    Epoch(String),
    /// Logs of a shard the bus starts reading, older than what it delivered already:
    /// history only, merged in position order; replays from before `unknown_before` are
    /// not exact (the shard was trimmed).
    ShardBackfill {
        logs: Vec<Arc<LogRecord>>,
        unknown_before: Option<Position>,
    },
    /// The shards in the bus's order, answering the router's request `generation` (see
    /// [`shard_interest`]).
    Shards {
        ready: u64,
        generation: u64,
    },
    DeviceStatus(DeviceStatus),
    /// Answered once everything queued before it has been handed to the sockets.
    Drain(oneshot::Sender<()>),
}

/// Changes and questions; each is applied between two batches.
pub enum Control {
    Client(ClientCommand),
    Admin(AdminQuery),
    Plugin(PluginCommand),
    /// Deliver what is pending and end the thread.
    Stop,
}

/// How the router is set up.
pub struct RouterSettings {
    /// The server's configuration: batches (`evaluation_batch_max_logs`, `batch_max_logs`,
    /// `batch_max_delay_ms`), the queues (`ingest_queue`), history and replays, subscription
    /// costs, `max_queued_bytes`.
    pub config: Arc<Config>,
    /// The history's epoch; logs that arrive unstamped are numbered in it by the router.
    pub epoch: String,
    /// Offsets may be ahead of this router's history (several readers of one stream: the
    /// one that delivered may be ahead of this one).
    pub offsets_may_lead: bool,
    /// The history on disk (`history_dir`), whose writer stamps and hands on every log.
    pub disk: Option<Arc<DiskLog>>,
    /// Sharded streams (`redis_stream_shards` > 1): their number, and where the router says
    /// which it needs.
    pub shards: Option<(usize, tokio::sync::watch::Sender<crate::shards::Wanted>)>,
}

/// The senders into the router thread.
#[derive(Clone)]
pub struct RouterHandle {
    pub inbound: Sender<Inbound>,
    pub control: Sender<Control>,
}

pub struct Router {
    registry: Registry,
    clients: HashMap<Sid, Client>,
    pending: Vec<Arc<LogRecord>>,
    pending_since: Option<Instant>,
    /// The keys the router reads (see [`RouterSettings::config`]).
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    /// The admin table, to prune entries of clients that never finished connecting.
    connections: crate::connections::Connections,
    /// To forget the byte meters of those pruned clients.
    edge: Arc<crate::edge::Edge>,
    /// The clients to come back to: due outboxes, slow consumers, drop reports.
    followups: Followups,
    /// Reused across batches.
    matches: Vec<Matches>,
    /// Recent logs, for replays.
    history: History,
    /// The history's epoch (part of every offset).
    epoch: String,
    /// The last position the router gave a log (embedded bus).
    next_seq: u64,
    /// Replays under way, served a slice at a time.
    replays: VecDeque<replay::Replay>,
    offsets_may_lead: bool,
    /// What subscriptions cost, and the users cooling down after a failure they caused.
    costs: SubscriptionCosts,
    /// Clients registered by a handshake, oldest first: each is checked once, after the
    /// grace period, for a CONNECT that never completed.
    handshakes: VecDeque<(Instant, Sid)>,
    /// Packets for sockets are handed over here at the end of each turn of the loop.
    emitter: Arc<Emitter>,
    /// With sharded streams: the shards needed, and the commands waiting for them.
    shard_interest: Option<(
        usize,
        shard_interest::ShardInterest<client_command::ClientCommand>,
    )>,
}

/// Start the router thread. It ends on [`Control::Stop`] (or when every [`RouterHandle`] is
/// dropped, which the running server never does: the emitter's task holds none, but the
/// app state does for the server's whole life).
pub fn spawn(
    registry: Registry,
    settings: RouterSettings,
    metrics: Arc<Metrics>,
    connections: crate::connections::Connections,
    edge: Arc<crate::edge::Edge>,
    emitter: Arc<Emitter>,
) -> std::io::Result<(RouterHandle, JoinHandle<()>)> {
    let config = settings.config;
    let (inbound_tx, inbound_rx) = crossbeam_channel::bounded(config.ingest.ingest_queue);
    let (control_tx, control_rx) = crossbeam_channel::bounded(config.ingest.ingest_queue);
    let router = Router {
        registry,
        clients: HashMap::new(),
        pending: Vec::new(),
        pending_since: None,
        metrics,
        connections,
        edge,
        followups: Followups::default(),
        matches: Vec::new(),
        history: match settings.disk {
            Some(disk) => {
                let mut history =
                    History::on_disk(disk.clone(), HistoryLimits::from(&config.history));
                // The cache starts with the newest logs on disk.
                let newest = disk.newest(crate::history::store::CACHE_LOGS);
                if let Some(first) = newest.first().and_then(|l| l.stamp.get()) {
                    history.mark_unknown_before(first.position);
                }
                let now = Instant::now();
                for log in newest {
                    if let Some(stamp) = log.stamp.get() {
                        let position = stamp.position;
                        history.push(position, log, now);
                    }
                }
                history
            }
            None => History::memory(HistoryLimits::from(&config.history)),
        },
        epoch: settings.epoch,
        next_seq: 0,
        replays: VecDeque::new(),
        offsets_may_lead: settings.offsets_may_lead,
        costs: SubscriptionCosts::new(
            config.routing.max_subscription_bytes,
            config.routing.max_user_subscription_bytes,
        ),
        handshakes: VecDeque::new(),
        emitter,
        config,
        shard_interest: settings
            .shards
            .map(|(n, wanted)| (n, shard_interest::ShardInterest::new(n, wanted))),
    };
    let join = std::thread::Builder::new()
        .name("logstream-router".into())
        .spawn(move || router.run(inbound_rx, control_rx))?;
    Ok((
        RouterHandle {
            inbound: inbound_tx,
            control: control_tx,
        },
        join,
    ))
}

impl Router {
    fn run(mut self, inbound: Receiver<Inbound>, control: Receiver<Control>) {
        let ticker = crossbeam_channel::tick(Duration::from_secs(1));
        loop {
            // Wake up for due outboxes and replays even when no message arrives (messages
            // still come first).
            let now = Instant::now();
            let mut wait = Duration::from_secs(3600);
            if let Some(at) = self.followups.outboxes.next_due() {
                wait = wait.min(at.saturating_duration_since(now));
            }
            if let Some(at) = self.next_replay_at() {
                wait = wait.min(at.saturating_duration_since(now));
            }
            self.take_refused();
            select_biased! {
                recv(control) -> msg => match msg {
                    Ok(Control::Stop) | Err(_) => break,
                    Ok(c) => { self.flush_pending(); self.apply(c); }
                },
                recv(inbound) -> msg => match msg {
                    Ok(m) => self.on_inbound(m, &inbound),
                    Err(_) => break,
                },
                recv(ticker) -> _ => self.tick(),
                default(wait) => {}
            }
            self.flush_due_outboxes();
            // (A replay reads history up to the seam fixed when it began; logs pending here
            // are after it, so they need not be cut into a batch early.)
            if !self.replays.is_empty() {
                self.replay_step();
            }
            // Everything this turn sent, to the sockets in one job.
            self.emitter.flush();
        }
        self.flush_pending();
        self.flush_outboxes();
        self.emitter.settle();
        // What the last jobs had refused is counted too.
        self.take_refused();
        tracing::debug!("router stopped");
    }

    /// Answer a socket handler once what was sent before is in the sockets' queues: the
    /// handler may emit after the answer, and must not overtake it.
    fn answer<T: Send + 'static>(&self, reply: oneshot::Sender<T>, value: T) {
        self.emitter.then(move || {
            let _ = reply.send(value);
        });
    }

    /// Count what sockets refused after the router handed it on (see `delivery::emitter`).
    fn take_refused(&mut self) {
        for r in self.emitter.take_refused() {
            match self.clients.get_mut(&r.sid) {
                Some(client) => {
                    client.count_refusal(&r);
                    self.followups.note(client);
                }
                // Gone meanwhile: its logs still count as dropped.
                None => self
                    .metrics
                    .dropped(DropReason::SlowConsumer, u64::from(r.logs)),
            }
        }
    }

    fn apply(&mut self, control: Control) {
        match control {
            Control::Client(c) => self.apply_client(c),
            Control::Admin(q) => self.apply_admin(q),
            Control::Plugin(p) => self.apply_plugin(p),
            Control::Stop => {}
        }
    }

    fn on_inbound(&mut self, msg: Inbound, queue: &Receiver<Inbound>) {
        match msg {
            Inbound::Logs(logs) => {
                self.metrics.add_logs_in(logs.len() as u64);
                if self.pending.is_empty() {
                    self.pending_since = Some(Instant::now());
                }
                self.pending.extend(logs);
                let max_logs = self.config.routing.evaluation_batch_max_logs;
                while self.pending.len() >= max_logs {
                    let rest = self.pending.split_off(max_logs);
                    let full = std::mem::replace(&mut self.pending, rest);
                    self.evaluate(&full);
                    self.pending_since = Some(Instant::now());
                }
                let waited = self.pending_since.map(|t| t.elapsed()).unwrap_or_default();
                if queue.is_empty() || waited >= self.config.delivery.batch_window() {
                    self.flush_pending();
                }
            }
            Inbound::DeviceStatus(status) => {
                self.flush_pending();
                let Some(payload) = to_raw(&status).map(Arc::<RawValue>::from) else {
                    return;
                };
                let extra = status.extra_event();
                let in_scope = self
                    .clients
                    .values()
                    .filter(|c| c.scope().matches(&status.device_id));
                for client in in_scope {
                    client.send_raw(event::DEVICE_STATUS, &payload);
                    if let Some(event) = extra {
                        client.send_raw(event, &payload);
                    }
                }
            }
            Inbound::Backfill(logs) => {
                self.flush_pending();
                let now = Instant::now();
                // Older entries may have been trimmed from the stream: only the first chunk of
                // a load marks where exact replays begin.
                if self.history.is_empty()
                    && let Some(first) = logs.first().and_then(|l| l.stamp.get())
                {
                    self.history.mark_unknown_before(first.position);
                }
                for log in logs {
                    if let Some(stamp) = log.stamp.get() {
                        let position = stamp.position;
                        self.history.push(position, log, now);
                    }
                }
            }
            Inbound::ShardBackfill {
                logs,
                unknown_before,
            } => {
                self.flush_pending();
                if let Some(p) = unknown_before {
                    self.history.mark_unknown_before(p);
                }
                self.history.merge(logs, Instant::now());
            }
            Inbound::Shards { ready, generation } => {
                self.flush_pending();
                let released = match &mut self.shard_interest {
                    Some((_, interest)) => interest.on_ready(ready, generation),
                    None => Vec::new(),
                };
                for command in released {
                    self.apply_client(command);
                }
            }
            Inbound::Epoch(epoch) => {
                self.flush_pending();
                if epoch != self.epoch {
                    // At start the router takes the stream's epoch before it has handed out
                    // any offset: nothing changes for clients then.
                    if self.history.is_empty() && self.next_seq == 0 {
                        tracing::debug!(epoch = %epoch, "history epoch from the bus");
                    } else {
                        tracing::info!(old = %self.epoch, new = %epoch, "history epoch changed; older offsets can no longer be replayed");
                    }
                    self.history.reset();
                    self.epoch = epoch;
                }
            }
            Inbound::Drain(reply) => {
                self.flush_pending();
                self.flush_outboxes();
                self.answer(reply, ());
            }
        }
    }

    fn flush_pending(&mut self) {
        if !self.pending.is_empty() {
            let batch = std::mem::take(&mut self.pending);
            self.evaluate(&batch);
        }
        self.pending_since = None;
    }

    /// Give each log of `batch` its place in history (unless the bus already did) and keep it.
    fn record_history(&mut self, batch: &[Arc<LogRecord>]) {
        let now = Instant::now();
        for log in batch {
            let position = match log.stamp.get() {
                Some(stamp) => stamp.position,
                None => {
                    self.next_seq += 1;
                    let position = Position {
                        major: self.next_seq,
                        minor: 0,
                    };
                    let _ = log.stamp.set(Stamp::new(&self.epoch, position));
                    position
                }
            };
            self.history.push(position, log.clone(), now);
        }
    }

    /// Evaluate every filter that has registrations once, then deliver per client.
    fn evaluate(&mut self, batch: &[Arc<LogRecord>]) {
        self.metrics.add_batch(batch.len());
        self.record_history(batch);
        let mut matches = std::mem::take(&mut self.matches);
        // Plugins see the batch in slices of `plugin_max_logs` (their limits are per call);
        // what each registration delivers is gathered over the slices, in order, and handed
        // to its clients at once.
        let mut deliveries: Vec<(RegistrationId, Vec<Arc<LogRecord>>)> = Vec::new();
        let mut slot: HashMap<RegistrationId, usize> = HashMap::new();
        let mut failed_filters: Vec<FailedFilter> = Vec::new();
        let mut failed_transforms: Vec<FailedTransform> = Vec::new();
        for slice in batch.chunks(self.config.delivery.batch_max_logs.max(1)) {
            matches.clear();
            let failed = self.registry.evaluate(slice, &mut matches);
            // A failed call: find the subscriptions at fault before anything is delivered,
            // so that the others get this batch's matches in order.
            for (filter, error) in failed {
                let triage = match error {
                    EngineError::Trap(_) | EngineError::Timeout(_) => {
                        self.registry.triage(&filter, slice, &mut matches)
                    }
                    _ => Triage::default(),
                };
                failed_filters.push(FailedFilter {
                    filter,
                    error,
                    triage,
                    slice,
                });
            }
            for m in &matches {
                match self.registry.deliverable(m, slice) {
                    Ok(logs) if logs.is_empty() => {}
                    // The first slice's logs are kept as they are (usually the only slice).
                    Ok(logs) => match slot.entry(m.registration) {
                        std::collections::hash_map::Entry::Occupied(i) => {
                            deliveries[*i.get()].1.extend(logs)
                        }
                        std::collections::hash_map::Entry::Vacant(v) => {
                            v.insert(deliveries.len());
                            deliveries.push((m.registration, logs));
                        }
                    },
                    Err((step, error)) => failed_transforms.push(FailedTransform {
                        registration: m.registration,
                        step,
                        error,
                        dropped: m.entries.len() as u64,
                    }),
                }
            }
        }
        let now = Instant::now();
        for (registration, logs) in &deliveries {
            for sid in self.registry.clients(*registration) {
                if let Some(client) = self.clients.get_mut(sid) {
                    client.deliver(logs, now);
                    self.followups.note(client);
                }
            }
        }
        self.matches = matches;
        let handed = Instant::now();
        for log in batch {
            self.metrics
                .ingest_to_emit
                .observe(handed.saturating_duration_since(log.received).as_secs_f64());
        }
        for failed in failed_filters {
            self.filter_failed(&failed);
        }
        for failed in failed_transforms {
            self.transform_failed(&failed);
        }
    }

    /// Send `error` to each of `sids` (serialized once).
    fn notify(&self, sids: &[Sid], error: &ClientError) {
        let Some(payload) = to_raw(error).map(Arc::<RawValue>::from) else {
            return;
        };
        for sid in sids {
            if let Some(client) = self.clients.get(sid) {
                client.send_raw(event::ERROR, &payload);
            }
        }
    }

    /// The subscriptions of `sids` have ended (the registry already forgot them): tell each
    /// client why and clear what the admin API shows.
    fn end_subscriptions(&mut self, sids: &[Sid], error: &ClientError) {
        self.notify(sids, error);
        for sid in sids {
            self.cancel_replay(*sid, replay::Cancel::Ended(error.clone()));
            self.costs.release(*sid);
            if let Some(client) = self.clients.get(sid) {
                client.info.set_subscription(None);
            }
        }
    }

    /// Send every waiting outbox now (before a stop or a drain).
    fn flush_outboxes(&mut self) {
        let now = Instant::now();
        for sid in self.followups.outboxes.take_all() {
            self.flush_outbox_of(sid, now, true);
        }
    }

    /// Send the outboxes whose time has come: only those, however many clients wait.
    fn flush_due_outboxes(&mut self) {
        let now = Instant::now();
        while let Some(sid) = self.followups.outboxes.pop_due(now) {
            self.flush_outbox_of(sid, now, false);
        }
    }

    fn flush_outbox_of(&mut self, sid: Sid, now: Instant, force: bool) {
        let Some(client) = self.clients.get_mut(&sid) else {
            return;
        };
        client.flush_outbox(now, force);
        self.followups.note(client);
    }

    /// Once a second: drop reports, history expiry and its figures, and pruning of
    /// handshakes that never completed.
    fn tick(&mut self) {
        // Refusals of the last turns first: whether a client caught up depends on them.
        self.take_refused();
        let now = Instant::now();
        self.costs.prune(now);
        self.followups.check_slow(now, &mut self.clients);
        // Each client's share of the queued bytes is brought up to date when it is sent
        // something; one that drained since still counts what it had. Only under pressure
        // are all shares refreshed (the only walk over every client, and only then).
        if self
            .metrics
            .queued_bytes
            .load(std::sync::atomic::Ordering::Relaxed) as usize
            > self.config.delivery.max_queued_bytes / 2
        {
            for client in self.clients.values_mut() {
                client.account_exactly();
            }
        }
        self.history.expire(now);
        self.shard_tick(now);
        let (logs, bytes) = self.history.totals();
        self.metrics
            .set_history(logs, bytes, self.history.oldest(&self.epoch, now));
        while let Some((at, sid)) = self.handshakes.front().copied() {
            if now.saturating_duration_since(at) <= crate::delivery::client::HANDSHAKE_GRACE {
                break;
            }
            self.handshakes.pop_front();
            if self.clients.get(&sid).is_some_and(|c| c.is_stale(now)) {
                self.registry.unsubscribe(sid);
                self.clients.remove(&sid);
                self.refresh_interest(sid);
                self.connections.remove(&sid.to_string());
                self.edge.forget(sid);
                tracing::debug!(%sid, "pruned a client whose handshake never completed");
            }
        }
        self.followups.report_drops(&mut self.clients);
    }
}
