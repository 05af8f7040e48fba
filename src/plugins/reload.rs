//! Hot reload: the plugins directory is watched, and a file that appears, changes or goes
//! away changes the set of plugins while the server runs.
//!
//! - A new or changed `NAME.wasm` is compiled and instantiated here, on the watcher thread,
//!   and every live subscription of `NAME` is registered in the new instance, all off the hot
//!   path. Then the router switches to it between two batches: it adds the few subscriptions
//!   created meanwhile and drops those that went away, so no log is lost or delivered twice.
//! - If the new file does not load, or refuses the params of a live subscription, the old
//!   version stays in service and the reason is logged and shown in `GET /api/plugins`
//!   (`reloadError`).
//! - A removed file unloads the plugin; its subscribers receive an `error` (`filter_removed`).
//!   Removing `default.wasm` brings back the built-in default.
//! - Half-written files: a file is only read once it has been quiet for [`SETTLE`] and its size
//!   is stable; a copy still in progress that happens to be read fails to compile and is
//!   retried on its next change. Writing to a temporary name and renaming is the safe way.
//!
//! Only changes count: reading a file makes the kernel report an access to it, and reacting
//! to that made the watcher re-read every plugin forever. Access events are ignored, and a
//! file whose size and modification time are those already processed is not read again, so
//! an idle server does no plugin I/O and a refused file is reported once per change.
//!
//! A directory that does not exist yet is waited for: its nearest existing ancestor is
//! watched until it appears, then the directory itself, and the plugins already in it load.
//!
//! This module does not know the router: the server hands it a [`LiveSet`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use notify::{EventKind, RecursiveMode, Watcher};

use super::{BUILTIN_DEFAULT, Runtime, SharedCatalog, build, new_stats, plugin_name};
use crate::engine::{AddError, Plugin, RegistrationId};
use crate::subscription::DEFAULT_FILTER;

/// How long a file must be quiet before it is read.
pub const SETTLE: Duration = Duration::from_millis(300);

/// The live plugin set, as the watcher sees it. `None` answers mean the server is stopping.
pub trait LiveSet: Send + 'static {
    /// The live registrations of `filter`, with their params.
    fn registrations(&self, filter: &str) -> Option<Vec<(RegistrationId, String)>>;
    /// Switch `name` to `plugin` between two batches (see the router's hot swap).
    fn install(
        &self,
        name: &str,
        plugin: Plugin,
        registered: Vec<RegistrationId>,
    ) -> Option<Result<(), String>>;
    /// Unload `name`; answers how many subscriptions ended.
    fn remove(&self, name: &str) -> Option<usize>;
}

/// Keeps the watch alive; dropping it stops hot reload (the thread ends with it).
pub struct HotReload {
    _watcher: SharedWatcher,
}

type SharedWatcher = Arc<std::sync::Mutex<notify::RecommendedWatcher>>;

/// What is watched until the plugins directory exists.
struct Awaited {
    dir: PathBuf,
    watcher: SharedWatcher,
    /// The ancestor watched now; `None` once the directory itself is watched.
    watching_ancestor: Option<PathBuf>,
}

impl Awaited {
    /// The nearest existing ancestor of `dir`.
    fn nearest_ancestor(dir: &Path) -> Option<PathBuf> {
        dir.ancestors()
            .skip(1)
            .find(|a| a.is_dir())
            .map(Path::to_owned)
    }

    /// Check again after an event: the directory may exist now (then watch it and answer
    /// the plugin files already in it), or a nearer ancestor may. Checked again after each
    /// new watch, so a directory created meanwhile is not missed.
    fn check(&mut self) -> Vec<PathBuf> {
        let mut watcher = self.watcher.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(current) = self.watching_ancestor.clone() {
            if self.dir.is_dir() {
                if let Err(e) = watcher.watch(&self.dir, RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "the plugins directory appeared but cannot be watched");
                    return Vec::new();
                }
                let _ = watcher.unwatch(&current);
                self.watching_ancestor = None;
                tracing::info!(dir = %self.dir.display(), "the plugins directory appeared: watching it");
                return super::plugin_files(&self.dir);
            }
            match Self::nearest_ancestor(&self.dir) {
                Some(nearer)
                    if nearer != current
                        && watcher.watch(&nearer, RecursiveMode::NonRecursive).is_ok() =>
                {
                    let _ = watcher.unwatch(&current);
                    self.watching_ancestor = Some(nearer);
                }
                _ => break,
            }
        }
        Vec::new()
    }

    /// Whether an event's path is a file of the plugins directory itself (events from an
    /// ancestor watched before it existed may still be queued).
    fn owns(&self, path: &Path) -> bool {
        path.parent() == Some(self.dir.as_path())
    }
}

struct Reloader<L> {
    runtime: Arc<Runtime>,
    max_failures: u32,
    follow_symlinks: bool,
    live: L,
    catalog: SharedCatalog,
    /// (size, modification time) of each file as last processed.
    processed: HashMap<PathBuf, (u64, Option<SystemTime>)>,
}

/// Whether an event says a file's content or existence may have changed.
fn is_change(kind: &EventKind) -> bool {
    use notify::event::ModifyKind;
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(_) | EventKind::Other => false,
        EventKind::Any => true,
    }
}

/// Watch `dir` (or, until it exists, its nearest existing ancestor). Fails (and the caller
/// logs it) if neither can be watched.
pub fn watch(
    dir: &Path,
    runtime: Arc<Runtime>,
    max_failures: u32,
    follow_symlinks: bool,
    live: impl LiveSet,
    catalog: SharedCatalog,
) -> anyhow::Result<HotReload> {
    let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res
            && is_change(&event.kind)
        {
            for path in event.paths {
                let _ = tx.send(path);
            }
        }
    })?;
    // Absolute, so that the ancestors of a relative `plugins` end at `/`, not at "".
    let dir = &std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    let watching_ancestor = if dir.is_dir() {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        None
    } else {
        let ancestor = Awaited::nearest_ancestor(dir)
            .ok_or_else(|| anyhow::anyhow!("no parent of {} exists", dir.display()))?;
        watcher.watch(&ancestor, RecursiveMode::NonRecursive)?;
        tracing::info!(dir = %dir.display(), watching = %ancestor.display(), "the plugins directory does not exist yet: its plugins load when it is created");
        Some(ancestor)
    };
    let watcher = Arc::new(std::sync::Mutex::new(watcher));
    let awaited = Awaited {
        dir: dir.to_owned(),
        watcher: watcher.clone(),
        watching_ancestor,
    };
    let mut reloader = Reloader {
        runtime,
        max_failures,
        follow_symlinks,
        live,
        catalog,
        processed: HashMap::new(),
    };
    for path in super::plugin_files(dir) {
        let print = fingerprint(&path);
        reloader.processed.insert(path, print);
    }
    std::thread::Builder::new()
        .name("logstream-reload".into())
        .spawn(move || reloader.run(rx, awaited))?;
    tracing::info!(dir = %dir.display(), "watching the plugins directory for changes");
    Ok(HotReload { _watcher: watcher })
}

/// Size and modification time, without following links and without reading the file.
fn fingerprint(path: &Path) -> (u64, Option<SystemTime>) {
    std::fs::symlink_metadata(path)
        .map(|m| (m.len(), m.modified().ok()))
        .unwrap_or((0, None))
}

/// The file should be looked at again later (still being written).
struct Retry;

impl<L: LiveSet> Reloader<L> {
    fn run(mut self, rx: std::sync::mpsc::Receiver<PathBuf>, mut awaited: Awaited) {
        let mut pending: HashMap<PathBuf, Instant> = HashMap::new();
        loop {
            // Sleep until the next pending file settles, or indefinitely when none is.
            let wait = pending
                .values()
                .map(|t| (*t + SETTLE).saturating_duration_since(Instant::now()))
                .min();
            let received = match wait {
                Some(w) => rx.recv_timeout(w),
                None => rx
                    .recv()
                    .map_err(|_| std::sync::mpsc::RecvTimeoutError::Disconnected),
            };
            match received {
                Ok(path) => {
                    if awaited.watching_ancestor.is_some() {
                        for file in awaited.check() {
                            pending.insert(file, Instant::now());
                        }
                    } else if path.extension().is_some_and(|e| e == "wasm") && awaited.owns(&path) {
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
                if let Err(Retry) = self.process(&path) {
                    pending.insert(path, Instant::now());
                }
            }
        }
    }

    fn process(&mut self, path: &Path) -> Result<(), Retry> {
        let file = path.display().to_string();
        let name = match plugin_name(path) {
            Ok(n) => n.to_owned(),
            Err(e) => {
                if self
                    .processed
                    .insert(path.to_owned(), fingerprint(path))
                    .is_none()
                {
                    tracing::warn!(%file, reason = %e, "plugin file ignored");
                }
                return Ok(());
            }
        };
        if std::fs::symlink_metadata(path).is_err() {
            self.processed.remove(path);
            return self.removed(&name, &file);
        }
        // A copy in progress keeps growing: wait until the size holds still.
        let print = fingerprint(path);
        std::thread::sleep(Duration::from_millis(150));
        if fingerprint(path) != print {
            return Err(Retry);
        }
        if self.processed.get(path) == Some(&print) {
            return Ok(());
        }
        self.processed.insert(path.to_owned(), print);
        let bytes = match super::read_plugin_file(path, self.follow_symlinks) {
            Ok(b) => b,
            Err(e) => {
                self.failed(&name, &file, format!("{e:#}"));
                return Ok(());
            }
        };
        let unchanged = self
            .catalog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .content_hash(&name)
            == Some(super::catalog::content_hash(&bytes));
        if !unchanged {
            self.install(&name, file, &bytes);
        }
        Ok(())
    }

    fn removed(&self, name: &str, file: &str) -> Result<(), Retry> {
        if name == DEFAULT_FILTER {
            tracing::info!("default.wasm removed; going back to the built-in default filter");
            self.install(name, "built-in".into(), BUILTIN_DEFAULT);
            return Ok(());
        }
        let ended = self.live.remove(name).unwrap_or(0);
        self.catalog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .forget(name, file);
        tracing::info!(plugin = %name, subscriptions_ended = ended, "plugin removed");
        Ok(())
    }

    /// Prepare the new version off the hot path and hand it to the router.
    fn install(&self, name: &str, source: String, bytes: &[u8]) {
        let started = Instant::now();
        let stats = new_stats(name, source.clone(), bytes);
        let plugin = match build(&self.runtime, name, bytes, self.max_failures, &stats) {
            Ok(p) => p,
            Err(e) => return self.failed(name, &source, format!("{e:#}")),
        };
        let mut registered = Vec::new();
        let plugin = match plugin {
            Plugin::Filter(mut engine) => {
                for (id, params) in self.live.registrations(name).unwrap_or_default() {
                    match engine.add(id, &params) {
                        Ok(()) => registered.push(id),
                        Err(AddError::Rejected(m) | AddError::Unavailable(m)) => {
                            return self.failed(
                                name,
                                &source,
                                format!(
                                    "the new version refuses a live subscription ({params}): {m}"
                                ),
                            );
                        }
                    }
                }
                Plugin::Filter(engine)
            }
            transform => transform,
        };
        let kind = plugin.kind();
        match self.live.install(name, plugin, registered.clone()) {
            Some(Ok(())) => {
                self.catalog
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .loaded(stats);
                tracing::info!(
                    plugin = %name,
                    kind,
                    subscriptions = registered.len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "plugin (re)loaded"
                );
            }
            Some(Err(reason)) => self.failed(name, &source, reason),
            None => {}
        }
    }

    /// A load that did not happen: the old version (if any) stays; say why, once.
    fn failed(&self, name: &str, file: &str, reason: String) {
        let mut catalog = self.catalog.lock().unwrap_or_else(|p| p.into_inner());
        if catalog.loaded.iter().any(|s| s.name == name) {
            tracing::warn!(plugin = %name, %file, %reason, "plugin not reloaded; the previous version stays in service");
        } else {
            tracing::warn!(plugin = %name, %file, %reason, "plugin not loaded");
        }
        catalog.failed(name, file, reason);
    }
}
