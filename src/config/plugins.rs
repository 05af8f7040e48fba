//! The wasm plugins: where they are, and what one call may spend.

use std::path::PathBuf;

use super::group::{between, config_group, positive, xdg_dir};

config_group! {
    /// Filter and transform plugins.
    pub struct PluginsConfig {
        /// Directory of plugins (`*.wasm`, named by file stem). Relative paths given in a
        /// config file are relative to that file.
        plugins_dir: PathBuf = PathBuf::from("./plugins");
        /// Follow symbolic links in the plugins directory (off: a link is refused, so the
        /// server never reads a file an operator did not put there).
        plugins_follow_symlinks: bool = false;
        /// CPU budget of one plugin call, in milliseconds (epoch deadline).
        plugin_timeout_ms: u64 = 50, positive;
        /// Linear memory one plugin instance may grow to, in MiB.
        plugin_memory_mb: u64 = 64, between(1, 4096, "");
        /// Consecutive failures after which a plugin is disabled.
        plugin_max_failures: u32 = 3;
        /// `host.log` lines per second one plugin may write; the rest are counted and dropped.
        plugin_log_per_second: u32 = 20;
        /// Largest answer one plugin call may return (filter indices at 4 bytes each,
        /// transform entries by their text); a larger one is a failure of that call.
        plugin_max_output_bytes: usize = 16 << 20, positive;
        /// Where compiled plugins are cached (keyed by content and engine); empty = no cache.
        /// A directory only this user can write, since cached artifacts are native code.
        plugin_cache_dir: PathBuf = xdg_dir("XDG_CACHE_HOME", ".cache");
    }
}
