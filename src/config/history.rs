//! History, replays and resumable sessions.

use std::path::PathBuf;
use std::time::Duration;

use super::group::{between, config_group, one_of, positive};

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
        /// Where the embedded bus keeps its history and sessions on disk (unset:
        /// `<data_dir>/history`; empty: in memory, a new epoch at each start). Not used with
        /// Redis, whose stream is the history.
        history_dir: Option<PathBuf> = None;
        /// When the history on disk is synced: `always` (before the 202), `interval` (at most
        /// every `history_fsync_interval_ms`), `never` (when the OS likes).
        history_fsync: String = "always".into(), one_of(&["always", "interval", "never"]);
        /// The most time between two syncs under `history_fsync = "interval"`.
        history_fsync_interval_ms: u64 = 100, between(1, 60_000, "");
    }
}

/// When the history on disk is synced (`history_fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Before the publish is answered (publishes arriving together share one sync).
    Always,
    /// At most this often.
    Interval(Duration),
    /// Never: the OS writes when it likes.
    Never,
}

impl HistoryConfig {
    /// The history directory, if the history is on disk (`data_dir` gives the default).
    pub fn dir(&self, data_dir: &std::path::Path) -> Option<PathBuf> {
        match &self.history_dir {
            Some(dir) if dir.as_os_str().is_empty() => None,
            Some(dir) => Some(dir.clone()),
            None if data_dir.as_os_str().is_empty() => None,
            None => Some(data_dir.join("history")),
        }
    }

    /// `history_fsync` as a policy.
    pub fn fsync(&self) -> Fsync {
        match self.history_fsync.as_str() {
            "interval" => Fsync::Interval(Duration::from_millis(self.history_fsync_interval_ms)),
            "never" => Fsync::Never,
            _ => Fsync::Always,
        }
    }
}
