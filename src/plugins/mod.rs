//! Filter plugins: WebAssembly components implementing `wit/plugin.wit`, run in wasmtime.
//!
//! At start the built-in `default` filter (compiled from `filters-wasm/default` and embedded
//! in the binary) is loaded, then every `*.wasm` in the plugins directory, each named by its
//! file stem. A file that is not a valid component, or implements another world or version,
//! is logged with its reason, listed as rejected in `GET /api/plugins`, and skipped.
//!
//! - [`runtime`]: engine, epoch ticker, sandboxed store, linking, compile cache.
//! - [`filter`]: one plugin as a [`crate::filter::FilterEngine`].

pub mod check;
pub mod filter;
pub mod guard;
pub mod reload;
pub mod runtime;
pub mod scaffold;
pub mod transform;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::router::Registry;
use crate::subscription::{DEFAULT_FILTER, valid_filter_name};
pub use runtime::{INTERFACE, PluginLimits, Runtime};

/// The `default` filter component, built by `build.rs` from `filters-wasm/default`.
pub const BUILTIN_DEFAULT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default.wasm"));

/// Largest plugin file accepted.
pub const MAX_PLUGIN_BYTES: u64 = 256 << 20;

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
    disabled: Mutex<Option<String>>,
    kind: Mutex<&'static str>,
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

    pub fn set_disabled(&self, reason: &str) {
        *self.disabled.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_owned());
    }

    pub fn disabled(&self) -> Option<String> {
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
    pub reload_errors: std::collections::HashMap<String, String>,
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

pub fn limits(config: &Config) -> PluginLimits {
    PluginLimits {
        call_timeout: Duration::from_millis(config.plugin_timeout_ms),
        memory_bytes: (config.plugin_memory_mb as usize) << 20,
        log_per_second: config.plugin_log_per_second,
        max_output_bytes: config.plugin_max_output_bytes,
    }
}

/// Load the built-in default and every plugin in `config.plugins_dir` into a registry.
pub fn load(config: &Config) -> anyhow::Result<(Registry, SharedCatalog, Arc<Runtime>)> {
    let cache =
        (!config.plugin_cache_dir.as_os_str().is_empty()).then(|| config.plugin_cache_dir.clone());
    let runtime = Runtime::new(limits(config), cache)?;
    let mut registry = Registry::default();
    let mut catalog = Catalog::default();
    let mut add = |name: &str,
                   source: String,
                   bytes: &[u8],
                   catalog: &mut Catalog|
     -> anyhow::Result<()> {
        let stats = new_stats(name, source, bytes);
        let max = config.plugin_max_failures;
        match runtime.prepare_any(bytes)? {
            runtime::Prepared::Filter(pre) => {
                let engine =
                    filter::WasmFilter::new(name, runtime.clone(), pre, max, stats.clone());
                registry.transforms.remove(name);
                registry.engines.insert(name.to_owned(), Box::new(engine));
            }
            runtime::Prepared::Transform(pre) => {
                let t =
                    transform::WasmTransform::new(name, runtime.clone(), pre, max, stats.clone());
                registry.engines.remove(name);
                registry.transforms.insert(name.to_owned(), t);
                stats.set_kind("transform");
            }
        }
        catalog.loaded(stats);
        Ok(())
    };
    add(
        DEFAULT_FILTER,
        "built-in".into(),
        BUILTIN_DEFAULT,
        &mut catalog,
    )
    .map_err(|e| anyhow::anyhow!("the built-in default filter does not load: {e:#}"))?;
    for path in plugin_files(&config.plugins_dir) {
        let file = path.display().to_string();
        let outcome = (|| {
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .filter(|s| valid_filter_name(s))
                .ok_or_else(|| anyhow::anyhow!("the file name must be a plugin name: letters, digits, '-' or '_', at most 64"))?;
            let size = std::fs::metadata(&path)?.len();
            if size > MAX_PLUGIN_BYTES {
                anyhow::bail!("{size} bytes; at most {MAX_PLUGIN_BYTES} are accepted");
            }
            let bytes = std::fs::read(&path)?;
            if name == DEFAULT_FILTER {
                tracing::info!(%file, "plugins directory overrides the built-in default filter");
            }
            add(name, file.clone(), &bytes, &mut catalog)?;
            Ok(name.to_owned())
        })();
        match outcome {
            Ok(name) => tracing::info!(plugin = %name, %file, "plugin loaded"),
            Err(e) => {
                tracing::warn!(%file, reason = %format!("{e:#}"), "plugin skipped");
                catalog.rejected.push(Rejected {
                    file,
                    reason: format!("{e:#}"),
                });
            }
        }
    }
    Ok((registry, Arc::new(Mutex::new(catalog)), runtime))
}

/// `*.wasm` files directly in `dir`, sorted; none if the directory does not exist.
pub fn plugin_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        tracing::info!(dir = %dir.display(), "no plugins directory; only the built-in filter is available");
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "wasm"))
        .collect();
    files.sort();
    files
}

/// JSON view of the catalog plus live subscription counts.
pub fn describe(
    catalog: &Catalog,
    counts: &std::collections::HashMap<String, usize>,
) -> serde_json::Value {
    let loaded: Vec<serde_json::Value> = catalog
        .loaded
        .iter()
        .map(|s| {
            let calls = s.calls.load(Ordering::Relaxed);
            let busy_ns = s.busy_ns.load(Ordering::Relaxed);
            serde_json::json!({
                "name": s.name,
                "source": s.source,
                "interface": INTERFACE,
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
