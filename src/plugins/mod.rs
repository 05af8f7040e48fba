//! The WebAssembly plugin host: components implementing `wit/plugin.wit`, run in wasmtime
//! behind the [`crate::engine`] traits.
//!
//! At start the built-in `default` filter (compiled from `filters-wasm/default` and embedded
//! in the binary) is loaded, then every `*.wasm` in the plugins directory, each named by its
//! file stem, as a filter or a transform depending on the world it implements. A file that is
//! not a valid component, or implements another world or version, is logged with its reason,
//! listed as rejected in `GET /api/plugins`, and skipped. [`load`] returns what it loaded; the
//! server assembles the router's registry from it.
//!
//! - [`runtime`]: engine, epoch ticker, sandboxed store, linking, compile cache.
//! - [`guard`]: one sandboxed instance under budgets, with the restart and disable policy.
//! - [`filter`] and [`transform`]: the two kinds of plugin as engines.
//! - [`catalog`]: what is loaded and refused, with counters, for the admin API.
//! - [`reload`]: hot reload of the plugins directory.
//! - [`check`] and [`scaffold`]: `logstream plugin check` and `logstream plugin new`.

pub mod catalog;
pub mod check;
pub mod component;
pub mod filter;
pub mod filter_abi;
pub mod guard;
pub mod reload;
pub mod runtime;
pub mod scaffold;
pub mod transform;
pub mod triage;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::Config;
use crate::engine::Plugin;
use crate::subscription::{DEFAULT_FILTER, valid_filter_name};
pub use catalog::{Catalog, PluginStats, Rejected, SharedCatalog, describe, new_stats};
pub use runtime::{INTERFACE, PluginLimits, Runtime};

/// The `default` filter component, built by `build.rs` from `filters-wasm/default`.
pub const BUILTIN_DEFAULT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default.wasm"));

/// Largest plugin file accepted.
pub const MAX_PLUGIN_BYTES: u64 = 256 << 20;

pub fn limits(config: &Config) -> PluginLimits {
    PluginLimits {
        call_timeout: Duration::from_millis(config.plugins.plugin_timeout_ms),
        memory_bytes: (config.plugins.plugin_memory_mb as usize) << 20,
        log_per_second: config.plugins.plugin_log_per_second,
        max_output_bytes: config.plugins.plugin_max_output_bytes,
    }
}

/// The plugin runtime for this configuration (with its compile cache, if any).
pub fn runtime(config: &Config) -> anyhow::Result<Arc<Runtime>> {
    let cache = (!config.plugins.plugin_cache_dir.as_os_str().is_empty())
        .then(|| config.plugins.plugin_cache_dir.clone());
    Runtime::new(limits(config), cache)
}

/// Compile and wrap one component as a plugin of whichever kind it is.
pub fn build(
    runtime: &Arc<Runtime>,
    name: &str,
    bytes: &[u8],
    max_failures: u32,
    stats: &Arc<PluginStats>,
) -> anyhow::Result<Plugin> {
    Ok(match component::prepare_any(runtime, bytes)? {
        component::Prepared::Filter(pre) => {
            stats.set_interface(pre.interface());
            Plugin::Filter(Box::new(filter::WasmFilter::new(
                name,
                runtime.clone(),
                pre,
                max_failures,
                stats.clone(),
            )))
        }
        component::Prepared::Transform(pre) => {
            stats.set_kind("transform");
            Plugin::Transform(Box::new(transform::WasmTransform::new(
                name,
                runtime.clone(),
                pre,
                max_failures,
                stats.clone(),
            )))
        }
    })
}

/// Everything [`load`] found.
pub struct Loaded {
    /// By name, in load order: the built-in default first, then the directory's files (a
    /// file named `default.wasm` replaces the built-in).
    pub plugins: Vec<(String, Plugin)>,
    pub catalog: SharedCatalog,
    pub runtime: Arc<Runtime>,
}

/// Read a plugin file after checking what it is: a regular file (a symbolic link only when
/// `follow_symlinks`), of an accepted size, checked before anything is read.
pub fn read_plugin_file(path: &Path, follow_symlinks: bool) -> anyhow::Result<Vec<u8>> {
    let mut meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        if !follow_symlinks {
            anyhow::bail!(
                "a symbolic link; links are not followed unless plugins_follow_symlinks = true"
            );
        }
        meta = std::fs::metadata(path)?;
    }
    if !meta.is_file() {
        anyhow::bail!("not a regular file");
    }
    if meta.len() > MAX_PLUGIN_BYTES {
        anyhow::bail!(
            "{} bytes; at most {MAX_PLUGIN_BYTES} are accepted",
            meta.len()
        );
    }
    if meta.len() == 0 {
        anyhow::bail!("the file is empty");
    }
    Ok(std::fs::read(path)?)
}

/// The plugin name a file serves: its stem, if that is a valid name.
pub fn plugin_name(path: &Path) -> anyhow::Result<&str> {
    path.file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| valid_filter_name(s))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the file name must be a plugin name: letters, digits, '-' or '_', at most 64"
            )
        })
}

/// Load the built-in default and every plugin in `config.plugins.plugins_dir`.
pub fn load(config: &Config) -> anyhow::Result<Loaded> {
    let runtime = runtime(config)?;
    let max = config.plugins.plugin_max_failures;
    let mut plugins: Vec<(String, Plugin)> = Vec::new();
    let mut catalog = Catalog::default();
    let stats = new_stats(DEFAULT_FILTER, "built-in".into(), BUILTIN_DEFAULT);
    let builtin = build(&runtime, DEFAULT_FILTER, BUILTIN_DEFAULT, max, &stats)
        .map_err(|e| anyhow::anyhow!("the built-in default filter does not load: {e:#}"))?;
    plugins.push((DEFAULT_FILTER.to_owned(), builtin));
    catalog.loaded(stats);
    for path in plugin_files(&config.plugins.plugins_dir) {
        let file = path.display().to_string();
        let outcome = (|| {
            let name = plugin_name(&path)?;
            let bytes = read_plugin_file(&path, config.plugins.plugins_follow_symlinks)?;
            let stats = new_stats(name, file.clone(), &bytes);
            let plugin = build(&runtime, name, &bytes, max, &stats)?;
            if name == DEFAULT_FILTER {
                tracing::info!(%file, "plugins directory overrides the built-in default filter");
            }
            plugins.retain(|(n, _)| n != name);
            plugins.push((name.to_owned(), plugin));
            catalog.loaded(stats);
            Ok::<_, anyhow::Error>(name.to_owned())
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
    Ok(Loaded {
        plugins,
        catalog: Arc::new(Mutex::new(catalog)),
        runtime,
    })
}

/// `*.wasm` entries directly in `dir`, sorted; none if the directory does not exist.
pub fn plugin_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .collect();
    files.sort();
    files
}
