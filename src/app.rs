//! Shared application state handed to every HTTP and Socket.IO handler: cheap to clone,
//! everything behind one `Arc`.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::TrySendError;
use socketioxide::SocketIo;

use crate::auth::Keys;
use crate::bus::Bus;
use crate::config::Config;
use crate::connections::Connections;
use crate::delivery::client::DeliveryLimits;
use crate::router::{Control, RouterHandle};
use crate::stats::Metrics;

pub struct AppInner {
    pub config: Config,
    pub keys: Keys,
    pub metrics: Arc<Metrics>,
    pub connections: Connections,
    pub router: RouterHandle,
    pub bus: Bus,
    pub limits: DeliveryLimits,
    pub started: Instant,
    pub plugins: crate::plugins::SharedCatalog,
    /// This instance's name in cluster views.
    pub instance: String,
    /// `false` once shutdown begins.
    accepting: AtomicBool,
    /// Publishes under way ([`IngestPermit`]s alive); shutdown waits for them.
    in_flight: AtomicUsize,
}

#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

impl Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// Held while one ingest request publishes; see [`AppState::ingest_permit`].
pub struct IngestPermit(AppState);

impl Drop for IngestPermit {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The router's control queue is full.
#[derive(Debug)]
pub struct Busy;

impl AppState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        keys: Keys,
        metrics: Arc<Metrics>,
        connections: Connections,
        router: RouterHandle,
        bus: Bus,
        limits: DeliveryLimits,
        plugins: crate::plugins::SharedCatalog,
        instance: String,
    ) -> AppState {
        AppState(Arc::new(AppInner {
            config,
            keys,
            metrics,
            connections,
            router,
            bus,
            limits,
            started: Instant::now(),
            plugins,
            instance,
            accepting: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
        }))
    }

    /// A permit to publish, or `None` once shutdown has begun. Hold it until the publish
    /// has landed.
    pub fn ingest_permit(&self) -> Option<IngestPermit> {
        // Count first, then check: a shutdown that flips the flag after our check will see
        // our count and wait for it.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let permit = IngestPermit(self.clone());
        self.accepting.load(Ordering::SeqCst).then_some(permit)
    }

    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    /// Stop accepting; returns once no publish is in flight (or at `deadline`).
    pub async fn stop_accepting(&self, deadline: Instant) {
        self.accepting.store(false, Ordering::SeqCst);
        while self.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Queue a control message without blocking the async worker.
    pub fn control(&self, msg: Control) -> Result<(), Busy> {
        self.router.control.try_send(msg).map_err(|e| match e {
            TrySendError::Full(_) | TrySendError::Disconnected(_) => Busy,
        })
    }

    /// Queue a control message that must not be lost (disconnects): waits for room on a
    /// blocking thread if the queue is full.
    pub fn control_reliably(&self, msg: Control) {
        if let Err(TrySendError::Full(msg)) = self.router.control.try_send(msg) {
            let tx = self.router.control.clone();
            tokio::task::spawn_blocking(move || tx.send(msg));
        }
    }
}

/// State of the HTTP handlers: the app plus the Socket.IO handle (which only exists once the
/// Socket.IO layer, holding the [`AppState`], has been built).
#[derive(Clone)]
pub struct HttpState {
    pub app: AppState,
    pub io: SocketIo,
}

impl Deref for HttpState {
    type Target = AppState;
    fn deref(&self) -> &AppState {
        &self.app
    }
}
