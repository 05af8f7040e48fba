//! Shared application state handed to every HTTP and Socket.IO handler: cheap to clone,
//! everything behind one `Arc`.

use std::ops::Deref;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crossbeam_channel::TrySendError;
use socketioxide::SocketIo;
use tokio::sync::{Semaphore, SemaphorePermit, TryAcquireError};
use tokio_util::sync::CancellationToken;

use crate::auth::{Access, Keys};
use crate::bus::{Bus, PublishError};
use crate::config::{Config, DeliveryConfig};
use crate::connections::Connections;
use crate::metrics::Metrics;
use crate::router::{Control, RouterHandle};

/// Most ingest requests publishing at once; past it ingest answers 503 `overloaded`.
pub const INGEST_CONCURRENCY: u32 = 4096;

pub struct AppInner {
    pub config: Config,
    pub keys: Keys,
    pub metrics: Arc<Metrics>,
    pub connections: Connections,
    pub router: RouterHandle,
    /// Where the router's packets for sockets go (see `delivery::emitter`).
    pub emitter: Arc<crate::delivery::Emitter>,
    /// `log:batch` compressed once for every client of `encoding: "gzip"`.
    pub gzip_batches: Arc<crate::delivery::gzip_batches::GzipBatches>,
    /// `system:stats`: the latest figures and the rounds' clock.
    pub stats_feed: Arc<crate::system_stats::StatsFeed>,
    pub bus: Bus,
    /// The delivery keys every new client gets; the rates change on SIGHUP.
    delivery: RwLock<Arc<DeliveryConfig>>,
    pub started: Instant,
    pub plugins: crate::plugins::SharedCatalog,
    /// This instance's name in cluster views.
    pub instance: String,
    /// Cancelled when shutdown begins: handshakes and ingest are refused from then on.
    pub stopping: CancellationToken,
    /// One permit per ingest request publishing; shutdown takes them all (waiting for the
    /// requests under way) and closes it.
    ingest_gate: Semaphore,
    /// Scoped ingest keys and the default device scope; replaced whole on SIGHUP.
    access: RwLock<Arc<Access>>,
    /// Sessions of resumable subscriptions.
    pub sessions: crate::sessions::Sessions,
    /// Accepted connections: per-IP counts before authentication, bytes written per socket.
    pub edge: Arc<crate::edge::Edge>,
    /// Development mode made the JWT secret: the page may get a token on loopback.
    pub dev_tokens: bool,
}

#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

impl Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// The router's control queue is full.
#[derive(Debug)]
pub struct Busy;

/// What an [`AppState`] is made of.
pub struct AppParts {
    pub config: Config,
    pub keys: Keys,
    pub metrics: Arc<Metrics>,
    pub connections: Connections,
    pub router: RouterHandle,
    pub emitter: Arc<crate::delivery::Emitter>,
    pub bus: Bus,
    pub plugins: crate::plugins::SharedCatalog,
    pub instance: String,
    pub stopping: CancellationToken,
    pub access: Access,
    pub sessions: crate::sessions::Sessions,
    pub edge: Arc<crate::edge::Edge>,
    pub dev_tokens: bool,
}

impl AppState {
    pub fn new(parts: AppParts) -> AppState {
        let delivery = Arc::new(parts.config.delivery.clone());
        let stats_feed = Arc::new(crate::system_stats::StatsFeed::new(
            std::time::Duration::from_millis(parts.config.delivery.stats_interval_ms),
        ));
        AppState(Arc::new(AppInner {
            config: parts.config,
            keys: parts.keys,
            metrics: parts.metrics,
            connections: parts.connections,
            router: parts.router,
            emitter: parts.emitter,
            stats_feed,
            gzip_batches: Arc::default(),
            bus: parts.bus,
            delivery: RwLock::new(delivery),
            started: Instant::now(),
            plugins: parts.plugins,
            instance: parts.instance,
            stopping: parts.stopping,
            ingest_gate: Semaphore::new(INGEST_CONCURRENCY as usize),
            access: RwLock::new(Arc::new(parts.access)),
            sessions: parts.sessions,
            edge: parts.edge,
            dev_tokens: parts.dev_tokens,
        }))
    }

    /// The ingest keys and default scope in force.
    pub fn access(&self) -> Arc<Access> {
        self.access
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The delivery keys a client connecting now gets.
    pub fn delivery(&self) -> Arc<DeliveryConfig> {
        self.delivery
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// New delivery keys for clients that connect from now on (the router updates those
    /// connected).
    pub fn set_delivery(&self, delivery: Arc<DeliveryConfig>) {
        *self.delivery.write().unwrap_or_else(|p| p.into_inner()) = delivery;
    }

    /// Put a re-read configuration's keys and scopes in force.
    pub fn set_access(&self, access: Access) {
        *self.access.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(access);
    }

    /// A permit to publish; hold it until the publish has landed.
    pub fn ingest_permit(&self) -> Result<SemaphorePermit<'_>, PublishError> {
        if self.stopping.is_cancelled() {
            return Err(PublishError::Closed);
        }
        self.ingest_gate.try_acquire().map_err(|e| match e {
            TryAcquireError::Closed => PublishError::Closed,
            TryAcquireError::NoPermits => PublishError::Overloaded,
        })
    }

    pub fn is_accepting(&self) -> bool {
        !self.stopping.is_cancelled()
    }

    /// Shutdown's first step (after `stopping` is cancelled): wait until no publish is in
    /// flight, or `deadline`; then refuse every later one.
    pub async fn close_ingest(&self, deadline: Instant) {
        let all = tokio::time::timeout_at(
            deadline.into(),
            self.ingest_gate.acquire_many(INGEST_CONCURRENCY),
        )
        .await;
        if all.is_err() {
            tracing::warn!("ingest requests still publishing at the shutdown deadline");
        }
        self.ingest_gate.close();
    }

    /// Queue a control message without blocking the async worker.
    pub fn control(&self, msg: Control) -> Result<(), Busy> {
        self.router.control.try_send(msg).map_err(|e| match e {
            TrySendError::Full(_) | TrySendError::Disconnected(_) => Busy,
        })
    }

    /// Queue a control message that must not be lost (disconnects): when the queue is full,
    /// wait for room on a blocking thread.
    pub async fn control_reliably(&self, msg: Control) {
        match self.router.control.try_send(msg) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(msg)) => {
                let tx = self.router.control.clone();
                let _ = tokio::task::spawn_blocking(move || tx.send(msg).is_ok()).await;
            }
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
