//! Shared application state handed to every HTTP and Socket.IO handler: cheap to clone,
//! everything behind one `Arc`.

use std::ops::Deref;
use std::sync::{Arc, RwLock};
use std::time::Instant;

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
    /// `false` once shutdown begins. Ingest holds the read lock across its publish, so
    /// taking the write lock waits for every in-flight publish to land.
    accepting: RwLock<bool>,
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
            accepting: RwLock::new(true),
        }))
    }

    /// Run `f` only while the server accepts work; `None` once shutdown has begun.
    pub fn while_accepting<T>(&self, f: impl FnOnce() -> T) -> Option<T> {
        let guard = self.accepting.read().unwrap_or_else(|p| p.into_inner());
        guard.then(f)
    }

    pub fn is_accepting(&self) -> bool {
        *self.accepting.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Stop accepting; returns once no publish is in flight.
    pub fn stop_accepting(&self) {
        *self.accepting.write().unwrap_or_else(|p| p.into_inner()) = false;
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
