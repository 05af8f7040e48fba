//! History, replays and resumable sessions.

use super::group::{config_group, positive};

config_group! {
    /// What is kept for `since`, `tail` and resumed sessions.
    pub struct HistoryConfig {
        /// Most logs kept in history (for `since`, `tail` and resumed sessions).
        history_max_logs: usize = 100_000, positive;
        /// Most bytes of logs kept in history.
        history_max_bytes: usize = 64 << 20, positive;
        /// Oldest log kept in history, in seconds.
        history_max_age_s: u64 = 3600, positive;
        /// Most logs one replay (`since`, a resumed session) sends; past it
        /// `recovered: false`.
        replay_max_logs: usize = 10_000, positive;
        /// Largest `tail` a subscription may ask for.
        tail_max: usize = 1000, positive;
        /// How long a resumable subscription's session outlives its connection.
        session_ttl_ms: u64 = 120_000, positive;
        /// Resumable sessions one user (`sub`) may hold (twice `max_connections_per_user`'s
        /// default); past it the user's idle session nearest its expiry ends.
        max_sessions_per_user: usize = 200, positive;
        /// Resumable sessions this instance (or, with Redis, the cluster) keeps.
        max_sessions: usize = 100_000, positive;
        /// Bytes of the subscriptions all kept sessions hold together.
        max_sessions_bytes: usize = 256 << 20, positive;
    }
}
