//! Admin operations across instances, over the Redis admin channel ([`ClusterOp`]).
//!
//! Each instance answers the requests it reads on the channel ([`serve_admin`]); the admin
//! API asks all instances and merges the answers ([`describe_all`], [`disconnect_anywhere`]).
//! Without Redis every operation is local.
//!
//! Per instance, by design: the connection limits, rate limits and plugins. Cluster-wide:
//! logs and device statuses (the bus), broadcast, disconnect, the connection and stats views.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use socketioxide::SocketIo;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::app::AppState;
use crate::bus::{ClusterLink, PublishError};
use crate::protocol::{ClusterOp, ConnectionView, DescribeReply, DisconnectReply, InstanceStats};

/// How long the admin API waits for other instances.
pub const REPLY_TIMEOUT: Duration = Duration::from_millis(1500);

/// This instance's connections, oldest first.
pub fn local_connections(app: &AppState) -> Vec<ConnectionView> {
    let mut list: Vec<ConnectionView> = app
        .connections
        .snapshot()
        .iter()
        .map(|c| c.view(&app.instance))
        .collect();
    list.sort_by(|a, b| a.connected_at.cmp(&b.connected_at));
    list
}

/// This instance's statistics (the seed's `getStats` plus throughput and drops).
pub fn local_stats(app: &AppState) -> InstanceStats {
    let conns = app.connections.snapshot();
    let mut by_user: BTreeMap<String, u64> = BTreeMap::new();
    let now = SystemTime::now();
    let mut uptime_ms = 0u128;
    for c in &conns {
        *by_user.entry(c.user_id.clone()).or_default() += 1;
        uptime_ms += now
            .duration_since(c.connected_at)
            .unwrap_or_default()
            .as_millis();
    }
    let average_uptime = if conns.is_empty() {
        0.0
    } else {
        uptime_ms as f64 / conns.len() as f64
    };
    let rates = app.metrics.rates();
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    InstanceStats {
        instance: app.instance.clone(),
        total: conns.len() as u64,
        by_user,
        average_uptime,
        logs_in: app.metrics.logs_in.load(relaxed),
        deliveries: app.metrics.deliveries.load(relaxed),
        logs_in_per_sec: rates.logs_in_per_sec,
        deliveries_per_sec: rates.deliveries_per_sec,
        drops: app.metrics.drops(),
        ingest_rejected: app.metrics.ingest_rejected.load(relaxed),
        uptime: app.started.elapsed().as_secs_f64(),
        history: {
            let h = app.metrics.history();
            crate::protocol::HistoryStats {
                logs: h.logs as u64,
                bytes: h.bytes as u64,
                oldest_age_s: h.oldest.as_ref().map(|(_, at)| at.elapsed().as_secs_f64()),
                oldest_offset: h.oldest.map(|(offset, _)| offset),
            }
        },
        replays_served: app.metrics.replays_served.load(relaxed),
        recoveries_failed: app.metrics.recoveries_failed.load(relaxed),
    }
}

/// The replies that parse as `R` (another instance's malformed answer is logged and left
/// out).
fn parsed<R: serde::de::DeserializeOwned>(replies: Vec<Vec<u8>>) -> Vec<R> {
    replies
        .iter()
        .filter_map(|r| {
            serde_json::from_slice(r)
                .inspect_err(|e| tracing::warn!(error = %e, "ignoring a malformed cluster reply"))
                .ok()
        })
        .collect()
}

/// Ask every live instance to describe itself; returns (connections, stats per instance).
pub async fn describe_all(
    bus: &dyn ClusterLink,
) -> Result<(Vec<ConnectionView>, Vec<InstanceStats>), PublishError> {
    let expected = bus.instances().await?.len().max(1);
    let replies: Vec<DescribeReply> = parsed(
        bus.request(
            Box::new(|reply| ClusterOp::Describe { reply }),
            expected,
            REPLY_TIMEOUT,
        )
        .await?,
    );
    let mut connections = Vec::new();
    let mut stats = Vec::new();
    for r in replies {
        connections.extend(r.connections);
        stats.push(r.stats);
    }
    Ok((connections, stats))
}

/// Disconnect `id` wherever it is. `Ok(Some(instance))` if some instance had it.
pub async fn disconnect_anywhere(
    bus: &dyn ClusterLink,
    id: &str,
) -> Result<Option<String>, PublishError> {
    let expected = bus.instances().await?.len().max(1);
    let id = id.to_owned();
    let replies: Vec<DisconnectReply> = parsed(
        bus.request(
            Box::new(|reply| ClusterOp::Disconnect { id, reply }),
            expected,
            REPLY_TIMEOUT,
        )
        .await?,
    );
    Ok(replies.into_iter().find(|r| r.found).map(|r| r.instance))
}

/// Answer admin requests read from the channel, until `stop`.
pub async fn serve_admin(
    app: AppState,
    io: SocketIo,
    bus: Arc<dyn ClusterLink>,
    mut rx: mpsc::Receiver<ClusterOp>,
    stop: CancellationToken,
) {
    loop {
        let op = tokio::select! {
            () = stop.cancelled() => return,
            op = rx.recv() => match op {
                Some(op) => op,
                None => return,
            },
        };
        let (reply, answer) = match op {
            ClusterOp::Broadcast { event, data } => {
                if let Err(e) = io.emit(event, &data).await {
                    tracing::warn!(error = %e, "cluster broadcast failed locally");
                }
                continue;
            }
            ClusterOp::Disconnect { id, reply } => {
                let socket = id.parse().ok().and_then(|sid| io.get_socket(sid));
                let found = match socket {
                    Some(s) => {
                        crate::socket::end_session(&s, &app).await;
                        s.disconnect().is_ok()
                    }
                    None => false,
                };
                let answer = DisconnectReply {
                    instance: app.instance.clone(),
                    found,
                };
                (reply, serde_json::to_string(&answer))
            }
            ClusterOp::Describe { reply } => {
                let answer = DescribeReply {
                    instance: app.instance.clone(),
                    connections: local_connections(&app),
                    stats: local_stats(&app),
                };
                (reply, serde_json::to_string(&answer))
            }
        };
        if let Ok(answer) = answer {
            let _ = bus.reply(&reply, answer).await;
        }
    }
}
