//! Admin operations across instances, over the Redis admin channel.
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

use serde_json::{Value, json};
use socketioxide::SocketIo;
use tokio::sync::mpsc;

use crate::app::AppState;
use crate::bus::PublishError;
use crate::bus::redis::RedisBus;

/// How long the admin API waits for other instances.
pub const REPLY_TIMEOUT: Duration = Duration::from_millis(1500);

/// This instance's connections, each tagged with the instance.
pub fn local_connections(app: &AppState, instance: &str) -> Vec<Value> {
    let mut list: Vec<Value> = app
        .connections
        .snapshot()
        .iter()
        .map(|c| {
            let mut v = serde_json::to_value(c.view()).unwrap_or_default();
            v["instance"] = Value::String(instance.to_owned());
            v
        })
        .collect();
    list.sort_by(|a, b| a["connectedAt"].as_str().cmp(&b["connectedAt"].as_str()));
    list
}

/// This instance's statistics (the seed's `getStats` plus throughput and drops).
pub fn local_stats(app: &AppState, instance: &str) -> Value {
    let conns = app.connections.snapshot();
    let mut by_user: BTreeMap<String, usize> = BTreeMap::new();
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
    json!({
        "instance": instance,
        "total": conns.len(),
        "byUser": by_user,
        "averageUptime": average_uptime,
        "logsIn": app.metrics.logs_in.load(relaxed),
        "deliveries": app.metrics.deliveries.load(relaxed),
        "logsInPerSec": rates.logs_in_per_sec,
        "deliveriesPerSec": rates.deliveries_per_sec,
        "drops": app.metrics.drops(),
        "uptime": app.started.elapsed().as_secs_f64(),
    })
}

/// Merge per-instance stats into cluster totals; the per-instance views stay under `instances`.
pub fn merge_stats(parts: Vec<Value>) -> Value {
    let mut total = 0u64;
    let mut by_user: BTreeMap<String, u64> = BTreeMap::new();
    let mut uptime_weighted = 0.0;
    let (mut logs_in, mut deliveries, mut in_rate, mut out_rate) = (0u64, 0u64, 0.0, 0.0);
    for p in &parts {
        let n = p["total"].as_u64().unwrap_or(0);
        total += n;
        uptime_weighted += p["averageUptime"].as_f64().unwrap_or(0.0) * n as f64;
        if let Some(users) = p["byUser"].as_object() {
            for (u, c) in users {
                *by_user.entry(u.clone()).or_default() += c.as_u64().unwrap_or(0);
            }
        }
        logs_in += p["logsIn"].as_u64().unwrap_or(0);
        deliveries += p["deliveries"].as_u64().unwrap_or(0);
        in_rate += p["logsInPerSec"].as_f64().unwrap_or(0.0);
        out_rate += p["deliveriesPerSec"].as_f64().unwrap_or(0.0);
    }
    let mut drops = json!({ "rateLimit": 0, "pauseOverflow": 0, "slowConsumer": 0, "ingestRejected": 0, "total": 0 });
    for p in &parts {
        for key in [
            "rateLimit",
            "pauseOverflow",
            "slowConsumer",
            "ingestRejected",
            "total",
        ] {
            let sum = drops[key].as_u64().unwrap_or(0) + p["drops"][key].as_u64().unwrap_or(0);
            drops[key] = sum.into();
        }
    }
    json!({
        "total": total,
        "byUser": by_user,
        "averageUptime": if total == 0 { 0.0 } else { uptime_weighted / total as f64 },
        "logsIn": logs_in,
        "deliveries": deliveries,
        "logsInPerSec": in_rate,
        "deliveriesPerSec": out_rate,
        "drops": drops,
        "instances": parts,
    })
}

/// Ask every live instance to describe itself; returns (connections, stats parts).
pub async fn describe_all(bus: &Arc<RedisBus>) -> Result<(Vec<Value>, Vec<Value>), PublishError> {
    let expected = bus.instances().await?.len().max(1);
    let replies = bus
        .request(json!({ "op": "describe" }), expected, REPLY_TIMEOUT)
        .await?;
    let mut connections = Vec::new();
    let mut stats = Vec::new();
    for r in replies {
        if let Some(list) = r["connections"].as_array() {
            connections.extend(list.iter().cloned());
        }
        stats.push(r["stats"].clone());
    }
    Ok((connections, stats))
}

/// Disconnect `id` wherever it is. `Ok(Some(instance))` if some instance had it.
pub async fn disconnect_anywhere(
    bus: &Arc<RedisBus>,
    id: &str,
) -> Result<Option<String>, PublishError> {
    let expected = bus.instances().await?.len().max(1);
    let replies = bus
        .request(
            json!({ "op": "disconnect", "id": id }),
            expected,
            REPLY_TIMEOUT,
        )
        .await?;
    Ok(replies
        .iter()
        .find(|r| r["found"] == true)
        .and_then(|r| r["instance"].as_str().map(str::to_owned)))
}

/// Answer admin requests read from the channel.
pub async fn serve_admin(
    app: AppState,
    io: SocketIo,
    bus: Arc<RedisBus>,
    mut rx: mpsc::Receiver<Value>,
) {
    while let Some(msg) = rx.recv().await {
        let reply_to = msg["reply"].as_str().map(str::to_owned);
        let answer = match msg["op"].as_str() {
            Some("broadcast") => {
                if let Some(event) = msg["event"].as_str()
                    && let Err(e) = io.emit(event, &msg["data"]).await
                {
                    tracing::warn!(error = %e, "cluster broadcast failed locally");
                }
                None
            }
            Some("disconnect") => {
                let found = msg["id"]
                    .as_str()
                    .and_then(|id| id.parse().ok())
                    .and_then(|sid| io.get_socket(sid))
                    .map(|s| s.disconnect().is_ok())
                    .unwrap_or(false);
                Some(json!({ "instance": bus.instance, "found": found }))
            }
            Some("describe") => Some(json!({
                "instance": bus.instance,
                "connections": local_connections(&app, &bus.instance),
                "stats": local_stats(&app, &bus.instance),
            })),
            other => {
                tracing::debug!(op = ?other, "ignoring unknown admin operation");
                None
            }
        };
        if let (Some(reply), Some(answer)) = (reply_to, answer) {
            let _ = bus.publish(&reply, answer.to_string()).await;
        }
    }
}
