//! Hot reload: the plugins directory is watched, and a file that appears, changes or goes
//! away changes the set of filters while the server runs.
//!
//! - A new or changed `NAME.wasm` is compiled and instantiated here, on the watcher thread,
//!   and every live subscription of `NAME` is registered in the new instance, all off the hot
//!   path. Then the router switches to it between two batches ([`Control::Install`]): it adds
//!   the few subscriptions created meanwhile and drops those that went away, so no log is lost
//!   or delivered twice.
//! - If the new file does not load, or refuses the params of a live subscription, the old
//!   version stays in service and the reason is logged and shown in `GET /api/plugins`
//!   (`reloadError`).
//! - A removed file unloads the filter; its subscribers receive an `error` (`filter_removed`).
//!   Removing `default.wasm` brings back the built-in default.
//! - Half-written files: a file is only read once it has been quiet for [`SETTLE`] and its size
//!   is stable; a copy still in progress that happens to be read fails to compile and is
//!   retried on its next change. Writing to a temporary name and renaming is the safe way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use notify::{RecursiveMode, Watcher};
use tokio::sync::oneshot;

use super::filter::WasmFilter;
use super::runtime::{PluginState, Prepared, TransformPluginPre};
use super::transform::WasmTransform;
use super::{BUILTIN_DEFAULT, Rejected, Runtime, SharedCatalog, new_stats};
use crate::filter::{AddError, FilterEngine};
use crate::router::Control;
use crate::subscription::{DEFAULT_FILTER, valid_filter_name};

/// How long a file must be quiet before it is read.
pub const SETTLE: Duration = Duration::from_millis(300);

/// Keeps the watch alive; dropping it stops hot reload.
pub struct HotReload {
    _watcher: notify::RecommendedWatcher,
}

struct Reloader {
    runtime: Arc<Runtime>,
    max_failures: u32,
    control: Sender<Control>,
    catalog: SharedCatalog,
}

/// Watch `dir`. Fails (and the caller logs it) if the directory cannot be watched.
pub fn watch(
    dir: &Path,
    runtime: Arc<Runtime>,
    max_failures: u32,
    control: Sender<Control>,
    catalog: SharedCatalog,
) -> anyhow::Result<HotReload> {
    let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            for path in event.paths {
                let _ = tx.send(path);
            }
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    let reloader = Reloader {
        runtime,
        max_failures,
        control,
        catalog,
    };
    std::thread::Builder::new()
        .name("logstream-reload".into())
        .spawn(move || reloader.run(rx))?;
    tracing::info!(dir = %dir.display(), "watching the plugins directory for changes");
    Ok(HotReload { _watcher: watcher })
}

impl Reloader {
    fn run(self, rx: std::sync::mpsc::Receiver<PathBuf>) {
        let mut pending: HashMap<PathBuf, Instant> = HashMap::new();
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(path) => {
                    if path.extension().is_some_and(|e| e == "wasm") {
                        pending.insert(path, Instant::now());
                    }
                    continue;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
            let settled: Vec<PathBuf> = pending
                .iter()
                .filter(|(_, t)| t.elapsed() >= SETTLE)
                .map(|(p, _)| p.clone())
                .collect();
            for path in settled {
                pending.remove(&path);
                match self.process(&path) {
                    Ok(()) => {}
                    Err(Retry) => {
                        pending.insert(path, Instant::now());
                    }
                }
            }
        }
    }

    /// Ask the router and wait for the answer; `None` once the router has stopped. The thread
    /// itself ends when the server drops [`HotReload`] (the event channel disconnects).
    fn ask<T>(&self, build: impl FnOnce(oneshot::Sender<T>) -> Control) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.control.send(build(tx)).ok()?;
        rx.blocking_recv().ok()
    }

    fn process(&self, path: &Path) -> Result<(), Retry> {
        let Some(name) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| valid_filter_name(s))
            .map(str::to_owned)
        else {
            tracing::warn!(file = %path.display(), "ignoring: the file name must be a plugin name");
            return Ok(());
        };
        let file = path.display().to_string();
        if !path.exists() {
            if name == DEFAULT_FILTER {
                tracing::info!("default.wasm removed; going back to the built-in default filter");
                self.install(&name, "built-in".into(), BUILTIN_DEFAULT);
            } else {
                let n = self
                    .ask(|reply| Control::Remove {
                        filter: name.clone(),
                        reply,
                    })
                    .unwrap_or(0);
                let mut catalog = self.catalog.lock().unwrap_or_else(|p| p.into_inner());
                catalog.loaded.retain(|s| s.name != name);
                catalog.rejected.retain(|r| r.file != file);
                catalog.reload_errors.remove(&name);
                tracing::info!(plugin = %name, subscriptions_ended = n, "plugin removed");
            }
            return Ok(());
        }
        // A copy in progress keeps growing: wait until the size holds still.
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        std::thread::sleep(Duration::from_millis(150));
        let size_again = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if size != size_again || size == 0 {
            return Err(Retry);
        }
        if size > super::MAX_PLUGIN_BYTES {
            self.failed(
                &name,
                &file,
                format!(
                    "{size} bytes; at most {} are accepted",
                    super::MAX_PLUGIN_BYTES
                ),
            );
            return Ok(());
        }
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                self.failed(&name, &file, format!("cannot read: {e}"));
                return Ok(());
            }
        };
        let unchanged = self
            .catalog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .content_hash(&name)
            == Some(super::content_hash(&bytes));
        if !unchanged {
            self.install(&name, file, &bytes);
        }
        Ok(())
    }

    /// Prepare the new version off the hot path and hand it to the router.
    fn install(&self, name: &str, source: String, bytes: &[u8]) {
        let started = Instant::now();
        let pre = match self.runtime.prepare_any(bytes) {
            Ok(Prepared::Filter(pre)) => pre,
            Ok(Prepared::Transform(pre)) => {
                return self.install_transform(name, source, bytes, pre);
            }
            Err(e) => return self.failed(name, &source, format!("{e:#}")),
        };
        let stats = new_stats(name, source.clone(), bytes);
        let mut engine = WasmFilter::new(
            name,
            self.runtime.clone(),
            pre,
            self.max_failures,
            stats.clone(),
        );
        let live = self
            .ask(|reply| Control::Registrations {
                filter: name.to_owned(),
                reply,
            })
            .unwrap_or_default();
        let mut registered = Vec::with_capacity(live.len());
        for (id, params) in live {
            match engine.add(id, &params) {
                Ok(()) => registered.push(id),
                Err(AddError::Rejected(m) | AddError::Unavailable(m)) => {
                    return self.failed(
                        name,
                        &source,
                        format!("the new version refuses a live subscription ({params}): {m}"),
                    );
                }
            }
        }
        let engine: Box<dyn FilterEngine> = Box::new(engine);
        let answer = self.ask(|reply| Control::Install {
            filter: name.to_owned(),
            engine,
            registered: registered.clone(),
            reply,
        });
        match answer {
            Some(Ok(())) => {
                self.catalog
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .loaded(stats);
                tracing::info!(
                    plugin = %name,
                    subscriptions = registered.len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "plugin (re)loaded"
                );
            }
            Some(Err(reason)) => self.failed(name, &source, reason),
            None => {}
        }
    }

    /// Transforms keep no subscription state: build the new version and switch.
    fn install_transform(
        &self,
        name: &str,
        source: String,
        bytes: &[u8],
        pre: TransformPluginPre<PluginState>,
    ) {
        let stats = new_stats(name, source, bytes);
        stats.set_kind("transform");
        let transform = WasmTransform::new(
            name,
            self.runtime.clone(),
            pre,
            self.max_failures,
            stats.clone(),
        );
        let installed = self.ask(|reply| Control::InstallTransform {
            name: name.to_owned(),
            transform: Box::new(transform),
            reply,
        });
        if installed.is_some() {
            self.catalog
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .loaded(stats);
            tracing::info!(plugin = %name, "transform (re)loaded");
        }
    }

    /// A load that did not happen: the old version (if any) stays; say why.
    fn failed(&self, name: &str, file: &str, reason: String) {
        tracing::warn!(plugin = %name, %file, %reason, "plugin not (re)loaded; the previous version stays");
        let mut catalog = self.catalog.lock().unwrap_or_else(|p| p.into_inner());
        if catalog.loaded.iter().any(|s| s.name == name) {
            catalog.reload_errors.insert(name.to_owned(), reason);
        } else {
            catalog.rejected.retain(|r| r.file != file);
            catalog.rejected.push(Rejected {
                file: file.to_owned(),
                reason,
            });
        }
    }
}

/// The file should be looked at again later (still being written).
struct Retry;
