//! # logstream
//!
//! A real-time log push server. Logs come in over HTTP (and Redis), are matched against every
//! connected client's subscription by filter engines (WebAssembly components in production,
//! see `wit/`), and are pushed over Socket.IO v4.
//!
//! The modules follow the data:
//!
//! - [`ingest`]: `POST /api/logs` and device status; validates into [`log_entry::LogRecord`]s.
//! - [`bus`]: hands accepted records to the router (embedded queue, or Redis).
//! - [`router`]: one thread that owns subscriptions, cuts batches, runs each [`filter`] engine
//!   once per batch, and hands matches to [`delivery`].
//! - [`delivery`]: per-client rate limit, pause buffer, bounded socket queue, drop reports.
//! - [`socket`]: Socket.IO handshake auth and client events.
//! - [`plugins`]: the wasmtime host that runs filter components.
//! - [`cluster`]: admin operations across instances over Redis.
//! - [`api`]: admin and health REST endpoints.
//! - [`config`], [`auth`], [`connections`], [`stats`], [`shutdown`]: the supporting cast.

pub mod api;
pub mod app;
pub mod auth;
pub mod bus;
pub mod cluster;
pub mod config;
pub mod connections;
pub mod delivery;
pub mod filter;
pub mod ingest;
pub mod log_entry;
pub mod plugins;
pub mod router;
pub mod shutdown;
pub mod socket;
pub mod stats;
pub mod subscription;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use socketioxide::SocketIo;

use crate::app::AppState;
use crate::auth::{Generated, Keys};
use crate::config::Config;
use crate::connections::Connections;
use crate::router::{BatchLimits, Inbound};
use crate::stats::Metrics;

/// Print the development banner when keys were generated.
fn announce_generated(generated: &Generated, keys: &Keys) {
    if !generated.any() {
        return;
    }
    println!("WARNING: development setup; these keys were generated for this run only.");
    println!(
        "         Set LOGSTREAM_JWT_SECRET, LOGSTREAM_API_KEY and LOGSTREAM_ADMIN_KEY for production."
    );
    if let Some(secret) = &generated.jwt_secret {
        println!("  jwt secret : {secret}");
        if let Ok(token) = keys.mint("dev", Duration::from_secs(24 * 3600), &Default::default()) {
            println!("  client token (sub=dev, 24h): {token}");
        }
    }
    if let Some(k) = &generated.api_key {
        println!("  api key    : {k}   (X-API-Key for POST /api/logs)");
    }
    if let Some(k) = &generated.admin_key {
        println!("  admin key  : {k}   (X-API-Key for /api/ws/*)");
    }
}

/// Run the server on `listener` until `shutdown` resolves, then stop gracefully: refuse new
/// work, deliver everything already accepted, disconnect clients, return.
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (keys, generated) = Keys::from_config(&config)?;
    announce_generated(&generated, &keys);
    let metrics = Arc::new(Metrics::default());
    let connections = Connections::new(config.max_connections, config.max_connections_per_user);
    let (registry, catalog, wasm_runtime) = plugins::load(&config)?;
    let (router, router_thread) = router::spawn(
        registry,
        BatchLimits {
            max_logs: config.batch_max_logs,
            max_delay: Duration::from_millis(config.batch_max_delay_ms),
        },
        config.ingest_queue,
        metrics.clone(),
        connections.clone(),
    )
    .context("starting the router thread")?;
    let instance = if config.instance_id.is_empty() {
        uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
    } else {
        config.instance_id.clone()
    };
    let bus = match &config.redis_url {
        None => bus::Bus::Embedded(router.inbound.clone()),
        Some(url) => bus::Bus::Redis(bus::redis::RedisBus::new(url, &config, instance.clone())?),
    };

    let app = AppState::new(
        config.clone(),
        keys,
        metrics.clone(),
        connections,
        router.clone(),
        bus,
        router::delivery_limits(&config),
        catalog,
        instance.clone(),
    );
    let (io_layer, io) = SocketIo::builder()
        .ping_interval(Duration::from_millis(config.ping_interval_ms))
        .ping_timeout(Duration::from_millis(config.ping_timeout_ms))
        .max_payload(config.max_message_bytes)
        .max_buffer_size(config.socket_queue)
        .with_state(app.clone())
        .build_layer();
    socket::register(&io);
    // Hot reload of the plugins directory (if it exists and can be watched).
    let _hot_reload = if config.plugins_dir.is_dir() {
        plugins::reload::watch(
            &config.plugins_dir,
            wasm_runtime,
            config.plugin_max_failures,
            router.control.clone(),
            app.plugins.clone(),
        )
        .map_err(|e| tracing::warn!(error = %e, "plugins directory not watched; hot reload is off"))
        .ok()
    } else {
        None
    };

    let http = api::router(app::HttpState {
        app: app.clone(),
        io: io.clone(),
    })
    .layer(io_layer)
    .layer(api::cors(&config));
    let addr = listener.local_addr()?;
    println!("logstream listening on http://{addr}");
    tracing::info!(%addr, "listening");

    let stats_task = tokio::spawn(stats_loop(app.clone(), io.clone()));
    let mut redis_tasks = Vec::new();
    if let Some(redis) = app.bus.redis() {
        let (admin_tx, admin_rx) = tokio::sync::mpsc::channel(256);
        redis_tasks.push(redis.spawn_subscriber(router.inbound.clone(), admin_tx));
        redis_tasks.push(redis.spawn_heartbeat());
        redis_tasks.push(tokio::spawn(cluster::serve_admin(
            app.clone(),
            io.clone(),
            redis.clone(),
            admin_rx,
        )));
        tracing::info!(%instance, "using the redis bus");
    }
    let (stop_http_tx, stop_http_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(
            listener,
            http.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = stop_http_rx.await;
        })
        .into_future(),
    );

    shutdown.await;
    let deadline = Instant::now() + Duration::from_millis(config.shutdown_timeout_ms);
    app.stop_accepting(deadline).await;
    if let Some(redis) = app.bus.redis() {
        // What we published must come back through Redis before the router drains.
        let left = deadline.saturating_duration_since(Instant::now());
        if !redis.drain(left).await {
            tracing::warn!(
                "could not confirm that redis returned everything this instance published"
            );
        }
    }
    // Everything accepted before this point is ahead of the drain marker.
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel();
    if router.inbound.send(Inbound::Drain(drained_tx)).is_ok() {
        let _ = tokio::time::timeout_at(deadline.into(), drained_rx).await;
    }
    // Give sockets a moment to write out what was just queued, then close them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = tokio::time::timeout_at(deadline.into(), io.close()).await;
    let _ = stop_http_tx.send(());
    stats_task.abort();
    for task in redis_tasks {
        task.abort();
    }
    match tokio::time::timeout_at(deadline.into(), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "http server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "http server task failed"),
        Err(_) => tracing::warn!("http server did not stop in time"),
    }
    app.control_reliably(router::Control::Stop);
    drop(app);
    drop(router);
    let joined = tokio::task::spawn_blocking(move || router_thread.join());
    let _ = tokio::time::timeout_at((deadline + Duration::from_secs(1)).into(), joined).await;
    tracing::info!("stopped");
    Ok(())
}

async fn stats_loop(app: AppState, io: SocketIo) {
    let mut tick = tokio::time::interval(Duration::from_millis(app.config.stats_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let rates = app.metrics.sample_rates(Instant::now());
        let payload = json!({
            "connections": app.connections.len(),
            "logsInPerSec": rates.logs_in_per_sec,
            "deliveriesPerSec": rates.deliveries_per_sec,
            "dropsPerSec": rates.drops_per_sec,
            "drops": app.metrics.drops(),
            "uptime": app.started.elapsed().as_secs_f64(),
        });
        if let Err(e) = io.emit("system:stats", &payload).await {
            tracing::debug!(error = %e, "system:stats broadcast failed");
        }
    }
}
