//! The process: where it listens, where it keeps state, how it logs and stops.

use std::path::PathBuf;

use super::group::{config_group, one_of, xdg_dir};

config_group! {
    /// The process as a whole.
    pub struct ServerConfig {
        /// Address to bind.
        host: String = "0.0.0.0".into();
        /// One port serves Socket.IO and the REST API (0 = any free port).
        port: u16 = 3000;
        /// Where state that must survive restarts is kept (development keys); empty =
        /// nowhere.
        data_dir: PathBuf = xdg_dir("XDG_STATE_HOME", ".local/state");
        /// `text` (human, coloured on a terminal) or `json` (one object per line) for the
        /// server's own log on stderr.
        log_format: String = "text".into(), one_of(&["text", "json"]);
        /// How long a graceful shutdown may take before the process exits anyway.
        shutdown_timeout_ms: u64 = 5000;
    }
}
