//! The wire contract, in one place: the Socket.IO event names and payloads clients see, the
//! one error shape shared by Socket.IO and REST, and the typed operations instances exchange
//! on the Redis admin channel.
//!
//! Other tools (the seed's clients, dashboards, our tests) rely on these names: change them
//! here or nowhere.

use std::collections::BTreeMap;
use std::ops::AddAssign;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Socket.IO event names.
pub mod event {
    // Client → server.
    pub const SUBSCRIBE: &str = "log:subscribe";
    pub const UNSUBSCRIBE: &str = "log:unsubscribe";
    pub const PAUSE: &str = "log:pause";
    pub const RESUME: &str = "log:resume";
    pub const AUTH_REFRESH: &str = "auth:refresh";

    // Server → client.
    pub const SUBSCRIBED: &str = "log:subscribed";
    pub const UNSUBSCRIBED: &str = "log:unsubscribed";
    pub const NEW: &str = "log:new";
    pub const BATCH: &str = "log:batch";
    pub const DROPPED: &str = "log:dropped";
    pub const DEVICE_STATUS: &str = "device:status";
    pub const DEVICE_ONLINE: &str = "device:online";
    pub const DEVICE_OFFLINE: &str = "device:offline";
    pub const SYSTEM_STATS: &str = "system:stats";
    pub const ERROR: &str = "error";
    pub const AUTH_EXPIRED: &str = "auth:expired";

    /// Every event a client may send.
    pub const FROM_CLIENT: [&str; 5] = [SUBSCRIBE, UNSUBSCRIBE, PAUSE, RESUME, AUTH_REFRESH];

    /// Every event the server emits on its own; an admin broadcast may not impersonate them.
    pub const FROM_SERVER: [&str; 11] = [
        AUTH_EXPIRED,
        SUBSCRIBED,
        UNSUBSCRIBED,
        NEW,
        BATCH,
        DROPPED,
        DEVICE_STATUS,
        DEVICE_ONLINE,
        DEVICE_OFFLINE,
        SYSTEM_STATS,
        ERROR,
    ];

    /// Names Socket.IO clients reserve for themselves.
    pub const RESERVED: [&str; 6] = [
        "connect",
        "connect_error",
        "disconnect",
        "disconnecting",
        "newListener",
        "removeListener",
    ];
}

/// Every error code a client can receive, on a socket (`error` event, acknowledgement) or
/// from the REST API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    // Socket events.
    InvalidSubscription,
    InvalidPayload,
    UnknownEvent,
    RateLimited,
    Busy,
    NotConnected,
    UnknownFilter,
    InvalidParams,
    FilterUnavailable,
    UnknownTransform,
    InvalidTransform,
    TransformUnavailable,
    SessionExpired,
    TooManySessions,
    SubscriptionTooCostly,
    PluginFailed,
    SlowConsumer,
    FilterDisabled,
    FilterRemoved,
    // REST.
    Unauthorized,
    Forbidden,
    InvalidField,
    InvalidJson,
    InvalidId,
    BadBody,
    PayloadTooLarge,
    NotFound,
    MethodNotAllowed,
    Overloaded,
    ShuttingDown,
    BusUnavailable,
    HistoryUnavailable,
    BroadcastFailed,
    DisconnectFailed,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidSubscription => "invalid_subscription",
            Code::InvalidPayload => "invalid_payload",
            Code::UnknownEvent => "unknown_event",
            Code::RateLimited => "rate_limited",
            Code::Busy => "busy",
            Code::NotConnected => "not_connected",
            Code::UnknownFilter => "unknown_filter",
            Code::InvalidParams => "invalid_params",
            Code::FilterUnavailable => "filter_unavailable",
            Code::UnknownTransform => "unknown_transform",
            Code::InvalidTransform => "invalid_transform",
            Code::TransformUnavailable => "transform_unavailable",
            Code::SessionExpired => "session_expired",
            Code::TooManySessions => "too_many_sessions",
            Code::SubscriptionTooCostly => "subscription_too_costly",
            Code::PluginFailed => "plugin_failed",
            Code::SlowConsumer => "slow_consumer",
            Code::FilterDisabled => "filter_disabled",
            Code::FilterRemoved => "filter_removed",
            Code::Unauthorized => "unauthorized",
            Code::Forbidden => "forbidden",
            Code::InvalidField => "invalid_field",
            Code::InvalidJson => "invalid_json",
            Code::InvalidId => "invalid_id",
            Code::BadBody => "bad_body",
            Code::PayloadTooLarge => "payload_too_large",
            Code::NotFound => "not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::Overloaded => "overloaded",
            Code::ShuttingDown => "shutting_down",
            Code::BusUnavailable => "bus_unavailable",
            Code::HistoryUnavailable => "history_unavailable",
            Code::BroadcastFailed => "broadcast_failed",
            Code::DisconnectFailed => "disconnect_failed",
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The one error payload: `{ code, message, field?, filter?, transform? }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientError {
    pub code: Code,
    pub message: String,
    /// The offending field of the request (`deviceIds`, `[3].level`, `transform[0]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The filter plugin concerned, for plugin failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// The transform plugin concerned, for plugin failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<String>,
}

impl ClientError {
    pub fn new(code: Code, message: impl Into<String>) -> ClientError {
        ClientError {
            code,
            message: message.into(),
            field: None,
            filter: None,
            transform: None,
        }
    }

    pub fn field(mut self, field: impl Into<String>) -> ClientError {
        self.field = Some(field.into());
        self
    }

    pub fn for_filter(mut self, name: impl Into<String>) -> ClientError {
        self.filter = Some(name.into());
        self
    }

    pub fn for_transform(mut self, name: impl Into<String>) -> ClientError {
        self.transform = Some(name.into());
        self
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// A failed acknowledgement: `{ success: false, error }`.
#[derive(Debug, Serialize)]
pub struct Failure<'a> {
    pub success: bool,
    pub error: &'a ClientError,
}

impl<'a> Failure<'a> {
    pub fn of(error: &'a ClientError) -> Failure<'a> {
        Failure {
            success: false,
            error,
        }
    }
}

/// Why a matched log did not reach the client (`log:dropped`'s `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Over the client's logs-per-second limit.
    RateLimit,
    /// The client was paused and its hold buffer was full.
    PauseOverflow,
    /// The socket's outbound queue was full: the client reads slower than logs arrive.
    SlowConsumer,
    /// Held for the client (paused, or behind a replay) when a refreshed token narrowed what
    /// it may see: no longer its to receive.
    ScopeChanged,
    /// The filter's call on the batch failed (and triage could not clear this client's
    /// subscription): matches unknown, counted as every log of the batch in the client's scope.
    PluginFailed,
}

impl DropReason {
    /// The name on the wire (`log:dropped`'s `reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::RateLimit => "rate_limit",
            DropReason::PauseOverflow => "pause_overflow",
            DropReason::SlowConsumer => "slow_consumer",
            DropReason::ScopeChanged => "scope_changed",
            DropReason::PluginFailed => "plugin_failed",
        }
    }

    pub const ALL: [DropReason; 5] = [
        DropReason::RateLimit,
        DropReason::PauseOverflow,
        DropReason::SlowConsumer,
        DropReason::ScopeChanged,
        DropReason::PluginFailed,
    ];
}

/// `log:dropped`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Dropped {
    pub count: u64,
    pub reason: DropReason,
}

/// `device:status` (and `device:online` / `device:offline`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    pub device_id: String,
    pub status: String,
}

impl DeviceStatus {
    /// The extra event the seed sends for this status, if any.
    pub fn extra_event(&self) -> Option<&'static str> {
        match self.status.as_str() {
            "online" => Some(event::DEVICE_ONLINE),
            "offline" => Some(event::DEVICE_OFFLINE),
            _ => None,
        }
    }
}

/// One step of a transform chain as the client gave it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransformStep {
    pub name: String,
    /// A JSON object.
    pub params: Value,
}

/// What `log:subscribed` (and the acknowledgement) confirm.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscribed {
    pub success: bool,
    pub filter: String,
    pub params: Value,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub transform: Vec<TransformStep>,
    pub batch: bool,
    pub rate_limit: u32,
    /// `"gzip"` when `log:batch` comes as the gzip of its array (a binary attachment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoding: Option<&'static str>,
    /// With `since` (or a session resumed): whether everything missed was replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// Logs replayed from history before live delivery began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed: Option<u64>,
    /// A resumable subscription's session: reconnect with `auth: { token, session, offset }`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// The acknowledgement of argument-less events.
#[derive(Debug, Serialize)]
pub struct Done {
    pub success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

/// `auth:expired`: the connection's token runs out soon; send `auth:refresh` with a new one
/// or be disconnected at `expiresAt`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthExpiring {
    /// Unix seconds.
    pub expires_at: u64,
    pub seconds_left: u64,
}

/// The acknowledgement of `auth:refresh`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Refreshed {
    pub success: bool,
    /// Unix seconds.
    pub expires_at: u64,
    /// The device patterns now in force.
    pub devices: Vec<String>,
}

/// Drops by reason, as `system:stats` and the stats API show them.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Drops {
    pub rate_limit: u64,
    pub pause_overflow: u64,
    pub slow_consumer: u64,
    pub scope_changed: u64,
    #[serde(default)]
    pub plugin_failed: u64,
    pub total: u64,
}

impl AddAssign for Drops {
    fn add_assign(&mut self, o: Drops) {
        self.rate_limit += o.rate_limit;
        self.pause_overflow += o.pause_overflow;
        self.slow_consumer += o.slow_consumer;
        self.scope_changed += o.scope_changed;
        self.plugin_failed += o.plugin_failed;
        self.total += o.total;
    }
}

/// `system:stats`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemStats {
    pub connections: usize,
    pub logs_in_per_sec: f64,
    pub deliveries_per_sec: f64,
    pub drops_per_sec: f64,
    pub drops: Drops,
    pub uptime: f64,
}

/// One connection as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionView {
    pub id: String,
    pub user_id: String,
    pub ip: String,
    pub connected_at: String,
    pub subscription: Option<Value>,
    pub message_count: u64,
    /// Logs dropped for it (every reason). (Defaulted: instances of an older release do not
    /// send the last three.)
    #[serde(default)]
    pub dropped: u64,
    /// Bytes waiting in its socket's queue.
    #[serde(default)]
    pub queued_bytes: u64,
    /// `websocket` or `polling`, once known.
    #[serde(default)]
    pub transport: Option<String>,
    pub instance: String,
}

/// One instance's statistics (the seed's `getStats` plus throughput and drops).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStats {
    pub instance: String,
    pub total: u64,
    pub by_user: BTreeMap<String, u64>,
    /// Mean connection age, in milliseconds.
    pub average_uptime: f64,
    pub logs_in: u64,
    pub deliveries: u64,
    pub logs_in_per_sec: f64,
    pub deliveries_per_sec: f64,
    pub drops: Drops,
    /// Logs of ingest requests refused (503: router queue full, bus down, shutting down):
    /// never accepted, so not drops.
    #[serde(default)]
    pub ingest_rejected: u64,
    pub uptime: f64,
    pub history: HistoryStats,
    pub replays_served: u64,
    pub recoveries_failed: u64,
}

/// The kept history of one instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryStats {
    pub logs: u64,
    pub bytes: u64,
    pub oldest_offset: Option<String>,
    /// Age of the oldest log kept, in seconds.
    pub oldest_age_s: Option<f64>,
}

/// Statistics of the whole cluster: totals, plus each instance's own.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStats {
    pub total: u64,
    pub by_user: BTreeMap<String, u64>,
    pub average_uptime: f64,
    pub logs_in: u64,
    pub deliveries: u64,
    pub logs_in_per_sec: f64,
    pub deliveries_per_sec: f64,
    pub drops: Drops,
    pub ingest_rejected: u64,
    pub replays_served: u64,
    pub recoveries_failed: u64,
    pub instances: Vec<InstanceStats>,
}

impl ClusterStats {
    /// Sum the instances' statistics; connection age is weighted by connections.
    pub fn merge(parts: Vec<InstanceStats>) -> ClusterStats {
        let mut all = ClusterStats::default();
        let mut uptime_weighted = 0.0;
        for p in &parts {
            all.total += p.total;
            uptime_weighted += p.average_uptime * p.total as f64;
            for (user, n) in &p.by_user {
                *all.by_user.entry(user.clone()).or_default() += n;
            }
            all.logs_in += p.logs_in;
            all.deliveries += p.deliveries;
            all.logs_in_per_sec += p.logs_in_per_sec;
            all.deliveries_per_sec += p.deliveries_per_sec;
            all.drops += p.drops;
            all.ingest_rejected += p.ingest_rejected;
            all.replays_served += p.replays_served;
            all.recoveries_failed += p.recoveries_failed;
        }
        if all.total > 0 {
            all.average_uptime = uptime_weighted / all.total as f64;
        }
        all.instances = parts;
        all
    }
}

/// Operations on the Redis admin channel. Requests that expect answers name a `reply`
/// channel; each instance answers there.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ClusterOp {
    /// Emit `event` with `data` to every client of every instance.
    Broadcast { event: String, data: Value },
    /// Disconnect connection `id` wherever it is; answered with [`DisconnectReply`].
    Disconnect { id: String, reply: String },
    /// Describe connections and statistics; answered with [`DescribeReply`].
    Describe { reply: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DisconnectReply {
    pub instance: String,
    pub found: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DescribeReply {
    pub instance: String,
    pub connections: Vec<ConnectionView>,
    pub stats: InstanceStats,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn codes_and_reasons_serialize_as_their_names() {
        for code in [
            Code::UnknownEvent,
            Code::FilterUnavailable,
            Code::PayloadTooLarge,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
        }
        let d = Dropped {
            count: 3,
            reason: DropReason::SlowConsumer,
        };
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            json!({"count": 3, "reason": "slow_consumer"})
        );
        let e = ClientError::new(Code::InvalidParams, "x").field("params");
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"code": "invalid_params", "message": "x", "field": "params"})
        );
    }

    #[test]
    fn cluster_ops_are_tagged_and_stats_merge() {
        let op = ClusterOp::Describe { reply: "r".into() };
        assert_eq!(
            serde_json::to_value(&op).unwrap(),
            json!({"op": "describe", "reply": "r"})
        );
        let unknown = serde_json::from_value::<ClusterOp>(json!({"op": "format_disk"}));
        assert!(unknown.is_err());
        let a = InstanceStats {
            total: 1,
            average_uptime: 100.0,
            by_user: [("u".to_owned(), 1)].into(),
            drops: Drops {
                rate_limit: 2,
                total: 2,
                ..Drops::default()
            },
            ..InstanceStats::default()
        };
        let b = InstanceStats {
            total: 3,
            average_uptime: 300.0,
            by_user: [("u".to_owned(), 2), ("v".to_owned(), 1)].into(),
            ..InstanceStats::default()
        };
        let all = ClusterStats::merge(vec![a, b]);
        assert_eq!(all.total, 4);
        assert_eq!(all.by_user["u"], 3);
        assert_eq!(all.average_uptime, 250.0);
        assert_eq!(all.drops.rate_limit, 2);
        assert_eq!(all.instances.len(), 2);
    }
}
