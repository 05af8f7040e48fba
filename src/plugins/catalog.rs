//! What is loaded and what was refused, with each plugin's counters: shared between the
//! plugin engines (which count), the hot-reload watcher (which records versions and
//! failures) and the admin API (which shows them in `GET /api/plugins`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::INTERFACE;

/// Counters of one loaded plugin, shared with the admin API.
#[derive(Debug, Default)]
pub struct PluginStats {
    pub name: String,
    pub source: String,
    pub size_bytes: usize,
    /// Hash of the component's bytes, to skip reloading an unchanged file.
    pub content_hash: u64,
    /// When this version was loaded (RFC 3339).
    pub loaded_at: String,
    pub calls: AtomicU64,
    pub busy_ns: AtomicU64,
    pub failures: AtomicU64,
    pub restarts: AtomicU64,
    /// Logs of batches whose evaluation failed (not delivered through this plugin).
    pub logs_failed: AtomicU64,
    /// Answers dropped because they named unknown subscriptions or bad indices.
    pub bad_output: AtomicU64,
    /// `host.log` lines refused by the rate limit (current instance).
    pub log_dropped: AtomicU64,
    /// How long each batch call (`evaluate`, `apply`) took.
    pub call_seconds: CallSeconds,
    disabled: Mutex<Option<String>>,
    recovers_at: Mutex<Option<std::time::Instant>>,
    kind: Mutex<&'static str>,
    /// The WIT package version the plugin was built for (empty until known).
    interface: Mutex<&'static str>,
}

/// The histogram of a plugin's batch-call durations, from 10 µs to ~5 s.
#[derive(Debug, Clone)]
pub struct CallSeconds(pub prometheus_client::metrics::histogram::Histogram);

impl Default for CallSeconds {
    fn default() -> CallSeconds {
        CallSeconds(prometheus_client::metrics::histogram::Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(1e-5, 2.0, 20),
        ))
    }
}

impl PluginStats {
    /// `filter` (the default) or `transform`.
    pub fn kind(&self) -> &'static str {
        let k = *self.kind.lock().unwrap_or_else(|p| p.into_inner());
        if k.is_empty() { "filter" } else { k }
    }

    pub fn set_kind(&self, kind: &'static str) {
        *self.kind.lock().unwrap_or_else(|p| p.into_inner()) = kind;
    }

    /// `logstream:plugin@0.2.0` or `@0.1.0` (the default).
    pub fn interface(&self) -> &'static str {
        let i = *self.interface.lock().unwrap_or_else(|p| p.into_inner());
        if i.is_empty() { INTERFACE } else { i }
    }

    pub fn set_interface(&self, interface: &'static str) {
        *self.interface.lock().unwrap_or_else(|p| p.into_inner()) = interface;
    }

    pub fn set_disabled(&self, reason: &str) {
        *self.disabled.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_owned());
    }

    pub fn set_enabled(&self) {
        *self.disabled.lock().unwrap_or_else(|p| p.into_inner()) = None;
        *self.recovers_at.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The plugin will be restarted on its own at `at`.
    pub fn set_recovery(&self, at: std::time::Instant) {
        *self.recovers_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
    }

    /// Why the plugin is disabled, unless its restart is already due (it serves again on its
    /// next call).
    pub fn disabled(&self) -> Option<String> {
        let due = self
            .recovers_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| std::time::Instant::now() >= at);
        if due {
            return None;
        }
        self.disabled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A plugin file that was not loaded, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    pub file: String,
    pub reason: String,
}

/// What is loaded and what was refused, for `GET /api/plugins`.
#[derive(Default)]
pub struct Catalog {
    pub loaded: Vec<Arc<PluginStats>>,
    pub rejected: Vec<Rejected>,
    /// Last failed reload per plugin name (the previous version stayed in service).
    pub reload_errors: HashMap<String, String>,
}

impl Catalog {
    /// Record a newly loaded version of `stats.name` (replacing any previous one).
    pub fn loaded(&mut self, stats: Arc<PluginStats>) {
        self.loaded.retain(|s| s.name != stats.name);
        self.rejected.retain(|r| r.file != stats.source);
        self.reload_errors.remove(&stats.name);
        self.loaded.push(stats);
        self.loaded.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// Forget plugin `name` loaded from `file` (the file was removed).
    pub fn forget(&mut self, name: &str, file: &str) {
        self.loaded.retain(|s| s.name != name);
        self.rejected.retain(|r| r.file != file);
        self.reload_errors.remove(name);
    }

    /// A load of `name` from `file` failed: a reload error if a version is in service,
    /// else a rejected file.
    pub fn failed(&mut self, name: &str, file: &str, reason: String) {
        if self.loaded.iter().any(|s| s.name == name) {
            self.reload_errors.insert(name.to_owned(), reason);
        } else {
            self.rejected.retain(|r| r.file != file);
            self.rejected.push(Rejected {
                file: file.to_owned(),
                reason,
            });
        }
    }

    pub fn content_hash(&self, name: &str) -> Option<u64> {
        self.loaded
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.content_hash)
    }
}

/// A stable hash of a plugin's bytes.
pub fn content_hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Fresh counters for a version of a plugin.
pub fn new_stats(name: &str, source: String, bytes: &[u8]) -> Arc<PluginStats> {
    Arc::new(PluginStats {
        name: name.to_owned(),
        source,
        size_bytes: bytes.len(),
        content_hash: content_hash(bytes),
        loaded_at: crate::log_entry::now_rfc3339(),
        ..PluginStats::default()
    })
}

pub type SharedCatalog = Arc<Mutex<Catalog>>;

/// JSON view of the catalog plus live subscription counts.
pub fn describe(catalog: &Catalog, counts: &HashMap<String, usize>) -> serde_json::Value {
    let loaded: Vec<serde_json::Value> = catalog
        .loaded
        .iter()
        .map(|s| {
            let calls = s.calls.load(Ordering::Relaxed);
            let busy_ns = s.busy_ns.load(Ordering::Relaxed);
            serde_json::json!({
                "name": s.name,
                "source": s.source,
                "interface": s.interface(),
                "kind": s.kind(),
                "world": format!("{}-plugin", s.kind()),
                "sizeBytes": s.size_bytes,
                "loadedAt": s.loaded_at,
                "reloadError": catalog.reload_errors.get(&s.name),
                "status": if s.disabled().is_some() { "disabled" } else { "active" },
                "disabledReason": s.disabled(),
                "subscriptions": counts.get(&s.name).copied().unwrap_or(0),
                "calls": calls,
                "timeSpentMs": busy_ns as f64 / 1e6,
                "averageCallUs": if calls == 0 { 0.0 } else { busy_ns as f64 / calls as f64 / 1e3 },
                "failures": s.failures.load(Ordering::Relaxed),
                "restarts": s.restarts.load(Ordering::Relaxed),
                "logsFailed": s.logs_failed.load(Ordering::Relaxed),
                "badOutput": s.bad_output.load(Ordering::Relaxed),
                "logLinesDropped": s.log_dropped.load(Ordering::Relaxed),
            })
        })
        .collect();
    serde_json::json!({ "plugins": loaded, "rejected": catalog.rejected })
}
