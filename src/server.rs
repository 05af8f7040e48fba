//! The server assembled, in named steps: [`start`] builds every part from the configuration
//! and starts its tasks; [`Running::shutdown`] takes them down in order, within a deadline.
//!
//! One [`CancellationToken`] (`stopping`, in the app state) marks the start of shutdown:
//! handshakes and ingest refuse from then on. A second one stops the background tasks, which
//! all run on one [`TaskTracker`] so shutdown can wait for them. Nothing on the way down
//! sleeps a fixed time: each step waits for the thing it needs, bounded by the deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::Sender;
use socketioxide::SocketIo;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{AppParts, AppState, HttpState};
use crate::auth::{Access, Keys};
use crate::bus::{self, Bus};
use crate::config::Config;
use crate::connections::Connections;
use crate::engine::{Plugin, RegistrationId};
use crate::metrics::Metrics;
use crate::plugins::reload::{HotReload, LiveSet};
use crate::protocol::SystemStats;
use crate::router::{
    self, Control, Inbound, PluginCommand, Registry, RouterHandle, RouterSettings,
};

/// Re-reads the configuration (the file and the layers above it) for SIGHUP.
pub type Reload = Arc<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;

/// How long a SIGHUP may take to read the configuration before it is given up.
const RELOAD_WITHIN: Duration = Duration::from_secs(5);

/// A started server.
pub struct Running {
    app: AppState,
    io: SocketIo,
    router: RouterHandle,
    router_thread: JoinHandle<()>,
    /// The history's writer on disk, and its thread.
    history_writer: Option<(crate::history::disk::writer::Writer, JoinHandle<()>)>,
    /// Every background task: HTTP server, stats, Redis reader, heartbeat, cluster admin.
    tasks: TaskTracker,
    /// Stops the background tasks (after the data path has drained).
    stop_tasks: CancellationToken,
    _hot_reload: Option<HotReload>,
    addr: SocketAddr,
}

/// The hot-reload watcher's view of the router.
struct RouterPlugins(Sender<Control>);

impl RouterPlugins {
    fn ask<T>(&self, build: impl FnOnce(oneshot::Sender<T>) -> PluginCommand) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.0.send(Control::Plugin(build(tx))).ok()?;
        rx.blocking_recv().ok()
    }
}

impl LiveSet for RouterPlugins {
    fn registrations(&self, filter: &str) -> Option<Vec<(RegistrationId, String)>> {
        self.ask(|reply| PluginCommand::Registrations {
            filter: filter.to_owned(),
            reply,
        })
    }

    fn install(
        &self,
        name: &str,
        plugin: Plugin,
        registered: Vec<RegistrationId>,
    ) -> Option<Result<(), String>> {
        self.ask(|reply| PluginCommand::Install {
            name: name.to_owned(),
            plugin,
            registered,
            reply,
        })
    }

    fn remove(&self, name: &str) -> Option<usize> {
        self.ask(|reply| PluginCommand::Remove {
            name: name.to_owned(),
            reply,
        })
    }
}

/// Build everything from `config` and start serving on `listener`. With `reload`, SIGHUP
/// re-reads the configuration and puts its ingest keys and scopes in force.
pub async fn start(
    config: Config,
    listener: tokio::net::TcpListener,
    reload: Option<Reload>,
) -> anyhow::Result<Running> {
    let addr = listener.local_addr()?;
    // TLS first: a certificate that does not load stops the start, naming the file.
    let tls = match (&config.edge.tls_cert, &config.edge.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(crate::edge::tls::Tls::load(cert, key)?)),
        _ => None,
    };
    let (config, dev) = crate::devmode::fill(config);
    let (keys, _) = Keys::from_config(&config)?;
    let access = Access::from_config(&config)?;
    let metrics = Arc::new(Metrics::default());
    let connections = Connections::new(
        config.edge.max_connections,
        config.edge.max_connections_per_user,
    );

    // Plugins, then the router that owns them.
    if !config.plugins.plugins_dir.is_dir() {
        tracing::warn!(
            dir = %config.plugins.plugins_dir.display(),
            cwd = %std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default(),
            "the plugins directory does not exist: only the built-in `default` filter is available \
             until it is created (set plugins_dir; relative paths are relative to the working directory, or to the config file)"
        );
    }
    let loaded = crate::plugins::load(&config)?;
    let mut registry = Registry::default();
    let mut plugin_names: Vec<String> = loaded.plugins.iter().map(|(n, _)| n.clone()).collect();
    plugin_names.sort();
    for (name, plugin) in loaded.plugins {
        registry.install(&name, plugin);
    }
    // An Engine.IO session that has not completed its Socket.IO handshake is ended by the
    // transport after this (the edge counts it as unauthenticated until then).
    let handshake_within = crate::socket::HANDSHAKE_TIMEOUT.min(Duration::from_millis(
        config.edge.unauthenticated_timeout_ms,
    ));
    let edge = crate::edge::Edge::new(&config.edge, handshake_within);
    // The embedded bus's history on disk, opened (and repaired) before anything is accepted.
    let disk = match (
        &config.redis.redis_url,
        config.history.dir(&config.server.data_dir),
    ) {
        (None, Some(dir)) => {
            let started = std::time::Instant::now();
            let keys_since = crate::history::disk::now_ms()
                .saturating_sub(crate::publish_key::IDEMPOTENCY_TTL.as_millis() as u64);
            let opened = crate::history::disk::DiskLog::open(&dir, keys_since)?;
            let (logs, bytes, _) = opened.log.totals();
            tracing::info!(
                dir = %dir.display(), logs, bytes, epoch = opened.log.epoch(),
                took_ms = started.elapsed().as_millis() as u64,
                "history on disk opened"
            );
            Some(opened)
        }
        _ => None,
    };
    let (emitter, emitter_task) = crate::delivery::Emitter::new(
        metrics.clone(),
        Duration::from_millis(config.delivery.slow_consumer_timeout_ms),
    );
    // Sharded streams: the router says which shards its clients need, the bus reads those.
    let shard_watch = (config.redis.redis_url.is_some() && config.redis.redis_stream_shards > 1)
        .then(|| tokio::sync::watch::channel(crate::shards::Wanted::default()));
    let (router, router_thread) = router::spawn(
        registry,
        RouterSettings {
            config: Arc::new(config.clone()),
            // With Redis the stream's epoch arrives from the bus once connected; on disk the
            // history keeps its own.
            epoch: disk
                .as_ref()
                .map_or_else(crate::history::new_epoch, |d| d.log.epoch().to_owned()),
            offsets_may_lead: config.redis.redis_url.is_some(),
            disk: disk.as_ref().map(|d| d.log.clone()),
            shards: shard_watch
                .as_ref()
                .map(|(tx, _)| (config.redis.redis_stream_shards, tx.clone())),
        },
        metrics.clone(),
        connections.clone(),
        edge.clone(),
        emitter.clone(),
    )
    .context("starting the router thread")?;
    // The emitter's task, for the runtime's life (the router hands it its last packets while
    // the server stops, before the runtime ends).
    tokio::spawn(emitter_task.run());

    let instance = if config.redis.instance_id.is_empty() {
        uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
    } else {
        config.redis.instance_id.clone()
    };
    let history_writer = match disk {
        Some(opened) => {
            let log = opened.log.clone();
            let inbound = router.inbound.clone();
            let (writer, thread) = crate::history::disk::writer::spawn(
                opened.log,
                opened.active,
                opened.keys,
                crate::history::disk::writer::WriterSettings {
                    fsync: config.history.fsync(),
                    limits: crate::history::HistoryLimits::from(&config.history),
                    segment_bytes: crate::history::disk::writer::segment_bytes(
                        config.history.history_max_bytes,
                    ),
                    queue: config.ingest.ingest_queue,
                },
                // Blocks while the router's queue is full (see the writer's doc).
                move |logs| inbound.send(router::Inbound::Logs(logs)).is_ok(),
            )
            .context("starting the history writer")?;
            Some((writer, thread, log))
        }
        None => None,
    };
    let bus = match &config.redis.redis_url {
        None => Bus::Embedded(match &history_writer {
            Some((writer, _, log)) => crate::bus::embedded::EmbeddedBus::durable(
                router.inbound.clone(),
                writer.clone(),
                log.clone(),
            ),
            None => crate::bus::embedded::EmbeddedBus::new(router.inbound.clone()),
        }),
        Some(url) => {
            let redis = bus::redis::RedisBus::new(url, &config, instance.clone())?;
            // A shard count other than the cluster's is refused before listening (a Redis
            // that is away is checked again before the first append and the first read).
            match redis.recorded_shards().await {
                Ok(Err(mismatch)) => anyhow::bail!("{mismatch}"),
                Ok(Ok(())) => {}
                Err(e) => tracing::warn!(error = %e, "could not check redis_stream_shards yet"),
            }
            Bus::Redis(redis)
        }
    };
    let session_limits = crate::sessions::SessionLimits::from_config(&config);
    let app = AppState::new(AppParts {
        emitter,
        config: config.clone(),
        keys,
        metrics,
        connections,
        router: router.clone(),
        bus: bus.clone(),
        plugins: loaded.catalog.clone(),
        instance: instance.clone(),
        stopping: CancellationToken::new(),
        access,
        sessions: bus.sessions(
            session_limits,
            Duration::from_millis(config.history.session_ttl_ms),
        )?,
        edge: edge.clone(),
        dev_tokens: dev.supplied.contains(&"jwt_secret"),
    });

    // Socket.IO: WebSocket frames and messages are bounded like long-polling payloads, so an
    // unauthenticated peer cannot make the server buffer more than `max_message_bytes`.
    let max_message = config.edge.max_message_bytes as usize;
    const WS_READ_BUFFER: usize = 1024;
    let (io_layer, io) = SocketIo::builder()
        .ping_interval(Duration::from_millis(config.edge.ping_interval_ms))
        .ping_timeout(Duration::from_millis(config.edge.ping_timeout_ms))
        .max_payload(config.edge.max_message_bytes)
        .ws_max_frame_size(max_message)
        .ws_max_message_size(max_message)
        // A client sends little (subscribe, pause, pings): a 1 KiB read buffer instead of
        // engineioxide's 4 KiB saves 3 KB per connection; a larger message grows it.
        .ws_read_buffer_size(WS_READ_BUFFER)
        .connect_timeout(handshake_within)
        .max_buffer_size(config.delivery.socket_queue)
        .with_state(app.clone())
        .build_layer();
    crate::socket::register(&io);

    // Watched even before it exists: its plugins load when it is created.
    let hot_reload = crate::plugins::reload::watch(
        &config.plugins.plugins_dir,
        loaded.runtime,
        config.plugins.plugin_max_failures,
        config.plugins.plugins_follow_symlinks,
        RouterPlugins(router.control.clone()),
        loaded.catalog.clone(),
    )
    .map_err(|e| tracing::warn!(error = %e, "plugins directory not watched; hot reload is off"))
    .ok();

    let http = crate::ingest::routes()
        .merge(crate::api::routes())
        .fallback(crate::api::error::not_found)
        .method_not_allowed_fallback(crate::api::error::method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(
            config.ingest.max_body_bytes,
        ))
        .with_state(HttpState {
            app: app.clone(),
            io: io.clone(),
        })
        .layer(io_layer)
        .layer(axum::middleware::from_fn_with_state(
            (edge.clone(), io.clone()),
            crate::edge::track,
        ))
        // Outside `track`, which counts a long-polling body's bytes as the socket's queue
        // sees them (uncompressed).
        .layer(crate::api::compression())
        .layer(crate::api::cors(&config));

    let tls_for_listener = tls.clone();
    let tasks = TaskTracker::new();
    let stop_tasks = CancellationToken::new();
    let stop = stop_tasks.clone();
    tasks.spawn(async move {
        let served = axum::serve(
            crate::edge::EdgeListener::new(
                listener,
                edge,
                tls_for_listener.map(|t| t.acceptor.clone()),
            ),
            http.into_make_service_with_connect_info::<crate::edge::Peer>(),
        )
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "http server ended with an error");
        }
    });
    tasks.spawn(stats_loop(app.clone(), io.clone(), stop_tasks.clone()));
    tasks.spawn(keep_sessions_alive(
        app.clone(),
        io.clone(),
        stop_tasks.clone(),
    ));
    if let Some(reload) = reload {
        tasks.spawn(reload_on_hangup(
            app.clone(),
            reload,
            tls.clone(),
            stop_tasks.clone(),
        ));
    }
    if let Some(redis) = app.bus.redis() {
        let started = redis.start(
            router.inbound.clone(),
            shard_watch.map(|(_, wanted)| wanted),
            &tasks,
            &stop_tasks,
        );
        tasks.spawn(crate::ingest::seed_channel::run(
            app.clone(),
            redis.clone(),
            started.seed_logs,
            stop_tasks.clone(),
        ));
        tasks.spawn(crate::cluster::serve_admin(
            app.clone(),
            io.clone(),
            redis.clone(),
            started.admin,
            stop_tasks.clone(),
        ));
        tracing::info!(%instance, "using the redis bus");
    }

    let scheme = if tls.is_some() { "https" } else { "http" };
    let base_url = format!("{scheme}://{addr}");
    // What a person on this machine opens: `0.0.0.0` is not an address a browser can use
    // (and the page offers the development token only to its own origin).
    let local_url = if addr.ip().is_unspecified() || addr.ip().is_loopback() {
        format!("{scheme}://localhost:{}", addr.port())
    } else {
        base_url.clone()
    };
    if dev.active() {
        let token = app
            .keys
            .mint("dev", Duration::from_secs(24 * 3600), &Default::default())
            .ok();
        print!(
            "{}",
            crate::devmode::banner(&dev, &config, token.as_deref(), &local_url)
        );
    }
    println!(
        "plugins: {} ({}){}",
        plugin_names.join(", "),
        config.plugins.plugins_dir.display(),
        if config.plugins.plugins_dir.is_dir() {
            ""
        } else {
            ": the directory does not exist yet; its plugins load when it is created"
        }
    );
    if !dev.active() {
        println!("the page: {local_url}/");
    }
    println!("logstream listening on {base_url}");
    tracing::info!(%addr, "listening");
    Ok(Running {
        app,
        io,
        router,
        router_thread,
        history_writer: history_writer.map(|(writer, thread, _)| (writer, thread)),
        tasks,
        stop_tasks,
        _hot_reload: hot_reload,
        addr,
    })
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop gracefully: refuse new work, deliver everything already accepted, close every
    /// client's transport, stop the tasks and the router. Bounded by `shutdown_timeout_ms`.
    pub async fn shutdown(self) {
        let deadline =
            Instant::now() + Duration::from_millis(self.app.config.server.shutdown_timeout_ms);
        // 1. Refuse handshakes and ingest; wait for the publishes under way.
        self.app.stopping.cancel();
        self.app.close_ingest(deadline).await;
        // 1b. Nothing more will be written: the history syncs and its writer ends.
        if let Some((writer, thread)) = self.history_writer {
            let joined = tokio::task::spawn_blocking(move || {
                writer.stop();
                thread.join()
            });
            if tokio::time::timeout_at(deadline.into(), joined)
                .await
                .is_err()
            {
                tracing::warn!("the history writer did not stop before the shutdown deadline");
            }
        }
        // 2. With Redis, what this instance published must come back before the drain.
        let left = deadline.saturating_duration_since(Instant::now());
        if !self.app.bus.drain(left).await {
            tracing::warn!(
                "could not confirm that the bus returned everything this instance published"
            );
        }
        // 3. Everything accepted is ahead of the drain marker: once answered, it is queued
        //    on the sockets.
        let (drained_tx, drained_rx) = oneshot::channel();
        // Queued from a blocking thread: the inbound queue may be full, and the router may be
        // waiting for the emitter's task on this runtime (a worker blocked here could be the
        // one it needs).
        let inbound = self.router.inbound.clone();
        let room_for = deadline.saturating_duration_since(std::time::Instant::now());
        let queued = tokio::task::spawn_blocking(move || {
            inbound
                .send_timeout(Inbound::Drain(drained_tx), room_for)
                .is_ok()
        });
        if matches!(queued.await, Ok(true))
            && tokio::time::timeout_at(deadline.into(), drained_rx)
                .await
                .is_err()
        {
            tracing::warn!("the router did not drain before the shutdown deadline");
        }
        // 4. Close the transports. A socket's writer sends what is queued before the close
        //    frame; a client that does not read is cut off at the deadline.
        if tokio::time::timeout_at(deadline.into(), self.io.close())
            .await
            .is_err()
        {
            tracing::warn!("some clients were still being written to at the shutdown deadline");
        }
        // 5. Background tasks and the HTTP server.
        self.stop_tasks.cancel();
        self.tasks.close();
        if tokio::time::timeout_at(deadline.into(), self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not stop before the shutdown deadline");
        }
        // 6. The router thread (the control queue may be full of disconnects: wait for room
        //    on a blocking thread, not on this worker).
        drop(self._hot_reload);
        let control = self.router.control.clone();
        let thread = self.router_thread;
        let joined = tokio::task::spawn_blocking(move || {
            let _ = control.send(Control::Stop);
            thread.join()
        });
        if tokio::time::timeout_at(deadline.into(), joined)
            .await
            .is_err()
        {
            tracing::warn!("the router thread did not stop before the shutdown deadline");
        }
        tracing::info!("stopped");
    }
}

/// Run on `listener` until `signal` resolves, then shut down gracefully.
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    signal: impl std::future::Future<Output = ()>,
    reload: Option<Reload>,
) -> anyhow::Result<()> {
    let running = start(config, listener, reload).await?;
    signal.await;
    running.shutdown().await;
    Ok(())
}

/// On SIGHUP, re-read the configuration and put in force what can change live (the
/// [`crate::config::RELOADABLE`] keys: ingest keys, device scopes, the TLS certificate, the
/// delivery rates); the log names the changed keys that wait for a restart. A configuration
/// that does not load keeps the old one, and the log says why.
async fn reload_on_hangup(
    app: AppState,
    reload: Reload,
    tls: Option<Arc<crate::edge::tls::Tls>>,
    stop: CancellationToken,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; configuration reload is off");
                return;
            }
        };
        // What is in force: the start's configuration, plus what reloads applied.
        let mut in_force = app.config.clone();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                got = hangups.recv() => if got.is_none() { return },
            }
            // Off the runtime: reading a file can block (a slow disk, a FIFO that slipped
            // past the check), and a worker blocked in `open()` would stall requests.
            let read = tokio::task::spawn_blocking({
                let reload = reload.clone();
                move || reload()
            });
            let loaded = match tokio::time::timeout(RELOAD_WITHIN, read).await {
                Ok(Ok(loaded)) => loaded,
                Ok(Err(e)) => Err(anyhow::anyhow!("reading the configuration: {e}")),
                Err(_) => Err(anyhow::anyhow!(
                    "reading the configuration took longer than {} s",
                    RELOAD_WITHIN.as_secs()
                )),
            };
            // Whether the certificate was put in force (`None`: the server serves no TLS, so
            // `tls_cert` and `tls_key` wait for a restart).
            let mut tls_reloaded = None;
            if let (Some(tls), Ok(config)) = (&tls, &loaded)
                && let (Some(cert), Some(key)) = (&config.edge.tls_cert, &config.edge.tls_key)
            {
                match tls.reload(cert, key) {
                    Ok(()) => {
                        tls_reloaded = Some(true);
                        tracing::info!(target: "audit", cert = %cert.display(), "TLS certificate reloaded (SIGHUP): new handshakes get it")
                    }
                    Err(e) => {
                        tls_reloaded = Some(false);
                        tracing::warn!(error = %format!("{e:#}"), "TLS certificate reload (SIGHUP) failed; the previous certificate stays in force")
                    }
                }
            }
            let config = match loaded {
                Ok(config) => config,
                Err(e) => {
                    tracing::warn!(
                        error = %format!("{e:#}"),
                        "configuration reload (SIGHUP) failed; the previous configuration stays in force"
                    );
                    continue;
                }
            };
            if let Err(e) = apply_reload(&app, &mut in_force, config, tls_reloaded).await {
                tracing::warn!(
                    error = %format!("{e:#}"),
                    "configuration reload (SIGHUP) failed; the previous keys and scopes stay in force"
                );
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (app, reload, tls);
        stop.cancelled().await;
    }
}

/// Put a re-read configuration in force: the ingest keys and scopes, and the delivery rates
/// (for clients that connect and those connected); say which changed keys wait for a
/// restart.
async fn apply_reload(
    app: &AppState,
    in_force: &mut Config,
    mut config: Config,
    tls_reloaded: Option<bool>,
) -> anyhow::Result<()> {
    // Development mode generated the keys the layers leave unset: they stay.
    for (key, kept) in [
        (&mut config.auth.jwt_secret, &in_force.auth.jwt_secret),
        (&mut config.auth.api_key, &in_force.auth.api_key),
        (&mut config.auth.admin_key, &in_force.auth.admin_key),
    ] {
        if key.is_none() {
            key.clone_from(kept);
        }
    }
    let access = Access::from_config(&config)?;
    let changed = in_force.changed_keys(&config);
    let tls_key = |k: &str| k == "tls_cert" || k == "tls_key";
    let (applied, mut need_restart): (Vec<String>, Vec<String>) =
        changed.into_iter().partition(|k| {
            crate::config::RELOADABLE.contains(&k.as_str())
                && (!tls_key(k) || tls_reloaded == Some(true))
        });
    // A failed certificate reload said so already; it is neither applied nor waiting.
    need_restart.retain(|k| !(tls_key(k) && tls_reloaded == Some(false)));
    app.set_access(access);
    let rates_changed = applied
        .iter()
        .any(|k| k == "rate_limit" || k == "max_client_rate_limit");
    in_force.take_reloadable(&config, tls_reloaded == Some(true));
    if rates_changed {
        let delivery = Arc::new(in_force.delivery.clone());
        app.set_delivery(delivery.clone());
        let (reply, answer) = tokio::sync::oneshot::channel();
        let command =
            Control::Client(crate::router::ClientCommand::SetDelivery { delivery, reply });
        if app.control(command).is_ok() {
            let _ = answer.await;
        }
    }
    tracing::info!(
        target: "audit",
        applied = %applied.join(","),
        ingest_keys = config.auth.ingest_keys.len(),
        rate_limit = in_force.delivery.rate_limit,
        "configuration reloaded (SIGHUP): ingest keys, scopes, TLS certificate and rates in force"
    );
    if !need_restart.is_empty() {
        tracing::warn!(
            keys = %need_restart.join(","),
            "configuration reload (SIGHUP): these changed keys take effect only after a restart; their old values stay in force until then"
        );
    }
    Ok(())
}

/// Keep the sessions of live connections from expiring (Redis), and drop expired ones
/// (memory), every third of `session_ttl_ms`.
async fn keep_sessions_alive(app: AppState, io: SocketIo, stop: CancellationToken) {
    let ttl = Duration::from_millis(app.config.history.session_ttl_ms);
    let mut tick = tokio::time::interval((ttl / 3).max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ids: Vec<String> = io
            .sockets()
            .iter()
            .filter_map(|s| s.extensions.get::<Arc<crate::socket::Session>>())
            .filter_map(|s| s.resume_id())
            .collect();
        app.sessions.keep_alive(&ids, ttl).await;
    }
}

/// `system:stats` every `stats_interval_ms` to every client, until `stop`: one slice of the
/// clients at a time (a broadcast to all at once made every socket's writer wake in the same
/// instant, a burst that delayed log delivery for everyone), and only to the clients whose
/// round did not already ride along with their logs (`system_stats`).
async fn stats_loop(app: AppState, io: SocketIo, stop: CancellationToken) {
    use crate::connections::ConnectionInfo;
    use crate::system_stats::{STATS_SLICES, stats_room};

    let feed = app.stats_feed.clone();
    // Never early: a slice's visit comes at or after its round is due. A late visit is made
    // up at once and the schedule stays on the feed's clock (drifting later, it could send a
    // round just before the next one rode along).
    let mut tick = tokio::time::interval_at(feed.start().into(), feed.slice_period());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut slice = 0usize;
    // Rates are sampled once per interval; visits made up in a burst after a stall do not
    // sample again (a window of milliseconds would make the rates noise).
    let half_interval = feed.slice_period() * (STATS_SLICES as u32) / 2;
    let mut sampled: Option<Instant> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let due = sampled.is_none_or(|at| at.elapsed() >= half_interval);
        if (slice == 0 && due) || feed.current().is_none() {
            sampled = Some(Instant::now());
            let rates = app.metrics.sample_rates(Instant::now());
            let stats = SystemStats {
                connections: app.connections.len(),
                logs_in_per_sec: rates.logs_in_per_sec,
                deliveries_per_sec: rates.deliveries_per_sec,
                drops_per_sec: rates.drops_per_sec,
                drops: app.metrics.drops(),
                uptime: app.started.elapsed().as_secs_f64(),
            };
            if let Some(raw) = crate::delivery::to_raw(&stats) {
                feed.publish(raw);
            }
        }
        if let (Some(payload), Some(round)) =
            (feed.current(), feed.round_due(slice, Instant::now()))
        {
            for socket in io.to(stats_room(slice)).sockets() {
                let Some(info) = socket.extensions.get::<Arc<ConnectionInfo>>() else {
                    continue;
                };
                if info.stats.claim(round) {
                    let _ = socket.emit(crate::protocol::event::SYSTEM_STATS, &*payload);
                }
            }
        }
        slice = (slice + 1) % STATS_SLICES;
    }
}
