//! Connections before and around authentication: how many, how large, how long, from where.

use std::path::PathBuf;

use super::group::{Check, config_group, positive};

config_group! {
    /// Connections and the Socket.IO transport.
    pub struct EdgeConfig {
        /// PEM certificate chain (the server's own certificate first) to serve HTTPS and WSS
        /// on the port; with `tls_key`. Re-read on SIGHUP.
        tls_cert: Option<PathBuf> = None;
        /// PEM private key of `tls_cert`.
        tls_key: Option<PathBuf> = None;
        /// Socket.IO connections accepted by this instance.
        max_connections: usize = 10_000, positive;
        /// Connections one user (JWT `sub`) may hold at once.
        max_connections_per_user: usize = 100, positive;
        /// Largest Socket.IO message a client may send, in bytes.
        max_message_bytes: u64 = 1_000_000, positive;
        /// Socket.IO ping interval.
        ping_interval_ms: u64 = 25_000, positive;
        /// Socket.IO ping timeout.
        ping_timeout_ms: u64 = 60_000, positive;
        /// Allowed CORS origins; empty = any origin.
        cors_origins: Vec<String> = Vec::new();
        /// Reverse proxies (addresses or CIDRs) whose `Forwarded` / `X-Forwarded-For` give
        /// the client's address; from any other peer those headers are ignored.
        trusted_proxies: Vec<String> = Vec::new(), cidrs;
        /// Client → server events per second one socket may send (burst: twice that).
        events_per_second: u32 = 20, positive;
        /// Connections from one IP address that have not (yet) authenticated; more are
        /// closed at once.
        max_unauthenticated_per_ip: usize = 64, positive;
        /// Bytes a Socket.IO connection may send before it has authenticated; more closes it.
        max_unauthenticated_bytes: usize = 64 << 10, positive;
        /// A connection that has not authenticated within this time is closed (and an
        /// Engine.IO session within the lesser of this and 10 s).
        unauthenticated_timeout_ms: u64 = 30_000, positive;
        /// New Engine.IO sessions one address may open per second before authenticating
        /// (a burst of `max_unauthenticated_per_ip`).
        unauthenticated_sessions_per_second: u32 = 20, positive;
        /// Engine.IO sessions not (yet) authenticated, for the whole instance.
        max_unauthenticated_sessions: usize = 10_000, positive;
    }
}

/// Each entry an address or a CIDR block.
fn cidrs(list: &[String]) -> Check {
    parse_cidrs(list).map(|_| ())
}

/// `trusted_proxies` as networks: CIDRs (`10.0.0.0/8`) or single addresses.
pub fn parse_cidrs(list: &[String]) -> Result<Vec<ipnet::IpNet>, String> {
    list.iter()
        .map(|entry| {
            let entry = entry.trim();
            entry
                .parse::<ipnet::IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("has {entry:?}, not an address or a CIDR block"))
        })
        .collect()
}
