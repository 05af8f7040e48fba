//! The router: one dedicated thread that owns every subscription and every client's
//! delivery state, cuts the incoming stream into batches, evaluates each filter engine once
//! per batch for all its subscriptions, and hands each client its matches in ingest order.
//!
//! Why one thread: a single owner makes ordering and atomicity trivial. A subscription change,
//! a pause or a resume is a [`Control`] message applied *between* two batches, so a client
//! never sees a gap or a duplicate. And because it is a plain OS thread, filter code (native
//! or WebAssembly) never runs on the async runtime's workers.
//!
//! Batching costs no latency when idle. Evaluation batches are cut at `batch_max_logs` or
//! as soon as the inbound queue is empty. For `batch: true` clients, `log:batch` messages
//! follow the seed's "50 logs or 100 ms" per client as a leading-edge throttle: the first
//! logs after a quiet `batch_max_delay_ms` go out at once, later ones wait for the window
//! (or for `batch_max_logs` to pile up). That cuts messages, the dominant cost of fan-out,
//! without delaying a lone log.

pub mod registry;

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select_biased};
use serde::Serialize;
use serde_json::{Value, json};
use socketioxide::socket::Sid;
use tokio::sync::oneshot;

use crate::delivery::client::DeliveryLimits;
use crate::delivery::{Client, DropReason};
use crate::filter::{FilterEngine, Matches, RegistrationId};
use crate::log_entry::LogRecord;
use crate::stats::Metrics;
use crate::subscription::SubscribeRequest;
pub use registry::{Registry, SubscribeError};

/// Data, in ingest order.
pub enum Inbound {
    Logs(Vec<Arc<LogRecord>>),
    DeviceStatus {
        device_id: String,
        status: String,
    },
    /// Answered once everything queued before it has been delivered.
    Drain(oneshot::Sender<()>),
}

/// Changes to clients and subscriptions; each takes effect between two batches.
pub enum Control {
    Connect(Box<Client>),
    Disconnect(Sid),
    Subscribe {
        sid: Sid,
        request: SubscribeRequest,
        reply: oneshot::Sender<Result<Subscribed, SubscribeError>>,
    },
    Unsubscribe {
        sid: Sid,
        reply: oneshot::Sender<bool>,
    },
    Pause {
        sid: Sid,
        reply: oneshot::Sender<bool>,
    },
    Resume {
        sid: Sid,
        reply: oneshot::Sender<bool>,
    },
    /// Registration counts per filter, for the admin API.
    Counts(oneshot::Sender<HashMap<String, usize>>),
    /// Deliver what is pending and end the thread.
    Stop,
    /// The registrations of one filter (id, params), so a new version of the plugin can be
    /// prepared off this thread.
    Registrations {
        filter: String,
        reply: oneshot::Sender<Vec<(RegistrationId, String)>>,
    },
    /// Switch `filter` to `engine` between two batches. `registered` are the registrations
    /// already added to it; the router adds those created since and removes those gone. If
    /// the new engine refuses one, nothing changes and the reason comes back.
    Install {
        filter: String,
        engine: Box<dyn FilterEngine>,
        registered: Vec<RegistrationId>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Switch transform `name` to a new version between two batches (transforms keep no
    /// state, so nothing needs re-registering).
    InstallTransform {
        name: String,
        transform: Box<crate::plugins::transform::WasmTransform>,
        reply: oneshot::Sender<()>,
    },
    /// Unload `filter` (a filter or a transform): its subscribers get an `error` and lose
    /// their subscription.
    Remove {
        filter: String,
        reply: oneshot::Sender<usize>,
    },
}

/// What `log:subscribed` confirms.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscribed {
    pub filter: String,
    pub params: Value,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub transform: Vec<crate::subscription::TransformStep>,
    pub batch: bool,
    pub rate_limit: u32,
}

/// Run `logs` through each step of `chain`; on failure, the failing step and why.
fn apply_chain(
    transforms: &mut std::collections::BTreeMap<String, crate::plugins::transform::WasmTransform>,
    chain: &[(String, String)],
    mut logs: Vec<Arc<LogRecord>>,
) -> Result<Vec<Arc<LogRecord>>, (String, crate::filter::EngineError)> {
    for (name, params) in chain {
        let Some(transform) = transforms.get_mut(name) else {
            return Err((
                name.clone(),
                crate::filter::EngineError::Disabled("unloaded".into()),
            ));
        };
        logs = transform
            .apply(params, &logs)
            .map_err(|e| (name.clone(), e))?;
        if logs.is_empty() {
            break;
        }
    }
    Ok(logs)
}

/// How often waiting batch-mode outboxes are checked; bounds how late a `log:batch` can be
/// past its interval.
const OUTBOX_TICK: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_logs: usize,
    pub max_delay: Duration,
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
    batch: BatchLimits,
    metrics: Arc<Metrics>,
    /// The admin table, to prune entries of clients that never finished connecting.
    connections: crate::connections::Connections,
    /// Batch-mode clients with logs waiting in their outbox.
    outboxes: std::collections::HashSet<Sid>,
    next_outbox_check: Instant,
    matches: Vec<Matches>,
}

/// Start the router thread. It ends when every [`RouterHandle`] is dropped.
pub fn spawn(
    registry: Registry,
    batch: BatchLimits,
    queue: usize,
    metrics: Arc<Metrics>,
    connections: crate::connections::Connections,
) -> std::io::Result<(RouterHandle, JoinHandle<()>)> {
    let (inbound_tx, inbound_rx) = crossbeam_channel::bounded(queue);
    let (control_tx, control_rx) = crossbeam_channel::bounded(queue);
    let router = Router {
        registry,
        clients: HashMap::new(),
        pending: Vec::new(),
        pending_since: None,
        batch,
        metrics,
        connections,
        outboxes: Default::default(),
        next_outbox_check: Instant::now(),
        matches: Vec::new(),
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
            // Wake up for due outboxes even when no message arrives.
            let wait = if self.outboxes.is_empty() {
                Duration::from_secs(3600)
            } else {
                self.next_outbox_check
                    .saturating_duration_since(Instant::now())
            };
            select_biased! {
                recv(control) -> msg => match msg {
                    Ok(Control::Stop) | Err(_) => break,
                    Ok(c) => { self.flush_all(); self.apply(c); }
                },
                recv(inbound) -> msg => match msg {
                    Ok(m) => self.on_inbound(m, &inbound),
                    Err(_) => break,
                },
                recv(ticker) -> _ => self.report_drops(),
                default(wait) => {}
            }
            if !self.outboxes.is_empty() && Instant::now() >= self.next_outbox_check {
                self.flush_outboxes(false);
            }
        }
        self.flush_all();
        self.flush_outboxes(true);
        tracing::debug!("router stopped");
    }

    fn on_inbound(&mut self, msg: Inbound, queue: &Receiver<Inbound>) {
        match msg {
            Inbound::Logs(logs) => {
                self.metrics
                    .logs_in
                    .fetch_add(logs.len() as u64, std::sync::atomic::Ordering::Relaxed);
                if self.pending.is_empty() {
                    self.pending_since = Some(Instant::now());
                }
                self.pending.extend(logs);
                while self.pending.len() >= self.batch.max_logs {
                    let rest = self.pending.split_off(self.batch.max_logs);
                    let full = std::mem::replace(&mut self.pending, rest);
                    self.flush(&full);
                    self.pending_since = Some(Instant::now());
                }
                let waited = self.pending_since.map(|t| t.elapsed()).unwrap_or_default();
                if queue.is_empty() || waited >= self.batch.max_delay {
                    self.flush_all();
                }
            }
            Inbound::DeviceStatus { device_id, status } => {
                self.flush_all();
                let payload = json!({ "deviceId": device_id, "status": status });
                let extra = match status.as_str() {
                    "online" => Some("device:online"),
                    "offline" => Some("device:offline"),
                    _ => None,
                };
                for client in self.clients.values() {
                    client.emit("device:status", &payload);
                    if let Some(event) = extra {
                        client.emit(event, &payload);
                    }
                }
            }
            Inbound::Drain(reply) => {
                self.flush_all();
                self.flush_outboxes(true);
                let _ = reply.send(());
            }
        }
    }

    fn flush_all(&mut self) {
        if !self.pending.is_empty() {
            let batch = std::mem::take(&mut self.pending);
            self.flush(&batch);
        }
        self.pending_since = None;
    }

    /// Evaluate every engine that has registrations once, then deliver per client.
    fn flush(&mut self, batch: &[Arc<LogRecord>]) {
        self.metrics
            .batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.matches.clear();
        let mut failed = Vec::new();
        let mut failed_transforms = Vec::new();
        for (name, engine) in self.registry.engines.iter_mut() {
            if let Err(e) = engine.evaluate(batch, &mut self.matches) {
                failed.push((name.clone(), e));
            }
        }
        let now = Instant::now();
        for m in &self.matches {
            let Some(reg) = self.registry.registrations.get(&m.registration) else {
                continue;
            };
            let matched = m.entries.iter().filter_map(|i| batch.get(*i as usize));
            let logs: Vec<Arc<LogRecord>> = if reg.chain.is_empty() {
                matched.cloned().collect()
            } else {
                let chain = reg.chain.clone();
                match apply_chain(
                    &mut self.registry.transforms,
                    &chain,
                    matched.cloned().collect(),
                ) {
                    Ok(logs) => logs,
                    Err((step, error)) => {
                        failed_transforms.push((m.registration, step, error));
                        continue;
                    }
                }
            };
            let Some(reg) = self.registry.registrations.get(&m.registration) else {
                continue;
            };
            for sid in &reg.clients {
                if let Some(client) = self.clients.get_mut(sid) {
                    client.deliver(&logs, now);
                    if client.has_outbox() && self.outboxes.insert(*sid) && self.outboxes.len() == 1
                    {
                        self.next_outbox_check = now + OUTBOX_TICK;
                    }
                }
            }
        }
        for (filter, error) in failed {
            self.filter_failed(&filter, &error);
        }
        for (registration, step, error) in failed_transforms {
            self.transform_failed(registration, &step, &error);
        }
    }

    /// A transform failed on one registration's logs: they were not delivered; say so.
    fn transform_failed(
        &mut self,
        registration: RegistrationId,
        step: &str,
        error: &crate::filter::EngineError,
    ) {
        let disabled = self
            .registry
            .transforms
            .get(step)
            .and_then(|t| t.disabled().map(str::to_owned));
        let (code, message, sids) = match disabled {
            Some(reason) => (
                "filter_disabled",
                format!("transform `{step}` was disabled ({reason}); subscribe again without it"),
                self.registry.drop_transform_users(step),
            ),
            None => (
                "plugin_failed",
                format!(
                    "transform `{step}` failed ({error}); the logs it was given were not delivered"
                ),
                self.registry
                    .registrations
                    .get(&registration)
                    .map(|r| r.clients.clone())
                    .unwrap_or_default(),
            ),
        };
        let payload = json!({ "code": code, "message": message, "transform": step });
        for sid in sids {
            if let Some(client) = self.clients.get(&sid) {
                client.emit("error", &payload);
            }
        }
    }

    /// Tell the subscribers of a failed filter; end their subscriptions if it is disabled.
    fn filter_failed(&mut self, filter: &str, error: &crate::filter::EngineError) {
        let disabled = self
            .registry
            .engines
            .get(filter)
            .and_then(|e| e.disabled().map(str::to_owned));
        let (code, message, sids) = match disabled {
            Some(reason) => (
                "filter_disabled",
                format!(
                    "filter `{filter}` was disabled ({reason}); subscribe again with another filter"
                ),
                self.registry.drop_filter(filter),
            ),
            None => (
                "plugin_failed",
                format!(
                    "filter `{filter}` failed on a batch ({error}); it was restarted and those logs were skipped"
                ),
                self.registry.clients_of(filter),
            ),
        };
        let payload = json!({ "code": code, "message": message, "filter": filter });
        for sid in sids {
            if let Some(client) = self.clients.get(&sid) {
                client.emit("error", &payload);
                if code == "filter_disabled"
                    && let Ok(mut s) = client.info.subscription.lock()
                {
                    *s = None;
                }
            }
        }
    }

    /// Send the outboxes that are due (all of them with `force`).
    fn flush_outboxes(&mut self, force: bool) {
        let now = Instant::now();
        let clients = &mut self.clients;
        self.outboxes.retain(|sid| {
            clients
                .get_mut(sid)
                .is_some_and(|c| c.flush_outbox(now, force))
        });
        self.next_outbox_check = now + OUTBOX_TICK;
    }

    fn report_drops(&mut self) {
        let now = Instant::now();
        let stale: Vec<Sid> = self
            .clients
            .values()
            .filter(|c| c.is_stale(now))
            .map(|c| c.sid)
            .collect();
        for sid in stale {
            self.registry.unsubscribe(sid);
            self.clients.remove(&sid);
            self.connections.remove(&sid.to_string());
            tracing::debug!(%sid, "pruned a client whose handshake never completed");
        }
        for client in self.clients.values_mut() {
            if client.is_paused() {
                client.report_drops(&[DropReason::RateLimit, DropReason::SlowConsumer]);
            } else {
                client.report_drops(&DropReason::ALL);
            }
        }
    }

    fn apply(&mut self, control: Control) {
        match control {
            Control::Connect(client) => {
                self.clients.insert(client.sid, *client);
            }
            Control::Disconnect(sid) => {
                self.registry.unsubscribe(sid);
                self.clients.remove(&sid);
            }
            Control::Subscribe {
                sid,
                request,
                reply,
            } => {
                let result = self.subscribe(sid, request);
                let _ = reply.send(result);
            }
            Control::Unsubscribe { sid, reply } => {
                if let Some(client) = self.clients.get_mut(&sid) {
                    client.flush_outbox(Instant::now(), true);
                }
                let had = self.registry.unsubscribe(sid);
                if let Some(client) = self.clients.get(&sid)
                    && let Ok(mut s) = client.info.subscription.lock()
                {
                    *s = None;
                }
                let _ = reply.send(had);
            }
            Control::Pause { sid, reply } => {
                let found = self.clients.get_mut(&sid).map(Client::pause).is_some();
                let _ = reply.send(found);
            }
            Control::Resume { sid, reply } => {
                let found = self.clients.get_mut(&sid).map(Client::resume).is_some();
                let _ = reply.send(found);
            }
            Control::Counts(reply) => {
                let _ = reply.send(self.registry.counts());
            }
            Control::Stop => {}
            Control::Registrations { filter, reply } => {
                let _ = reply.send(self.registry.params_of(&filter));
            }
            Control::Install {
                filter,
                engine,
                registered,
                reply,
            } => {
                let result = self.install(&filter, engine, &registered);
                let _ = reply.send(result);
            }
            Control::InstallTransform {
                name,
                transform,
                reply,
            } => {
                self.registry.transforms.insert(name, *transform);
                let _ = reply.send(());
            }
            Control::Remove { filter, reply } => {
                let mut sids = self.registry.drop_filter(&filter);
                sids.extend(self.registry.drop_transform_users(&filter));
                self.registry.engines.remove(&filter);
                self.registry.transforms.remove(&filter);
                let payload = json!({
                    "code": "filter_removed",
                    "message": format!("filter `{filter}` was removed from the server; subscribe again with another filter"),
                    "filter": filter,
                });
                for sid in &sids {
                    if let Some(client) = self.clients.get(sid) {
                        client.emit("error", &payload);
                        if let Ok(mut s) = client.info.subscription.lock() {
                            *s = None;
                        }
                    }
                }
                let _ = reply.send(sids.len());
            }
        }
    }

    /// Bring `engine` up to date with the live registrations of `filter` and switch to it.
    fn install(
        &mut self,
        filter: &str,
        mut engine: Box<dyn FilterEngine>,
        registered: &[RegistrationId],
    ) -> Result<(), String> {
        let live = self.registry.params_of(filter);
        for (id, params) in &live {
            if !registered.contains(id) {
                engine.add(*id, params).map_err(|e| match e {
                    crate::filter::AddError::Rejected(m)
                    | crate::filter::AddError::Unavailable(m) => {
                        format!("the new version refuses a live subscription ({params}): {m}")
                    }
                })?;
            }
        }
        for id in registered {
            if !live.iter().any(|(l, _)| l == id) {
                engine.remove(*id);
            }
        }
        self.registry.engines.insert(filter.to_owned(), engine);
        Ok(())
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
        let rate_limit = client.configure(request.batch, request.rate_limit);
        let subscribed = Subscribed {
            filter: request.filter,
            params: request.params,
            transform: request.transform,
            batch: request.batch,
            rate_limit,
        };
        if let Ok(mut s) = client.info.subscription.lock() {
            *s = serde_json::to_value(&subscribed).ok();
        }
        Ok(subscribed)
    }
}

/// Limits for [`Client`]s, from configuration.
pub fn delivery_limits(config: &crate::config::Config) -> DeliveryLimits {
    DeliveryLimits {
        max_rate: config.rate_limit,
        pause_buffer: config.pause_buffer,
        batch_max_logs: config.batch_max_logs,
        batch_interval: Duration::from_millis(config.batch_max_delay_ms),
    }
}
