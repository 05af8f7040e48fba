//! A filter plugin as a [`FilterEngine`]: one long-lived instance that owns its
//! subscriptions, evaluated once per batch.
//!
//! Failure handling: every call runs under the CPU deadline and memory limit of the store.
//! A trap or timeout discards the instance; the next call creates a fresh one and
//! re-registers every subscription. After `max_failures` consecutive failures the plugin is
//! disabled: it answers no more calls and new subscriptions to it are refused with the reason.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use wasmtime::Store;

use super::PluginStats;
use super::runtime::{FilterPlugin, FilterPluginPre, PluginState, Runtime, WitLevel, WitLogEntry};
use crate::filter::{AddError, EngineError, FilterEngine, Matches, RegistrationId};
use crate::log_entry::{Level, LogRecord};

/// Longest plugin-provided message passed on to a client.
const MAX_REASON_LEN: usize = 500;

struct Live {
    store: Store<PluginState>,
    plugin: FilterPlugin,
}

pub struct WasmFilter {
    name: Arc<str>,
    runtime: Arc<Runtime>,
    pre: FilterPluginPre<PluginState>,
    live: Option<Live>,
    /// Registered params by id, kept to re-register after a restart.
    subs: BTreeMap<RegistrationId, String>,
    consecutive_failures: u32,
    max_failures: u32,
    disabled: Option<String>,
    stats: Arc<PluginStats>,
}

fn wit_level(level: Level) -> WitLevel {
    match level {
        Level::Trace => WitLevel::Trace,
        Level::Debug => WitLevel::Debug,
        Level::Info => WitLevel::Info,
        Level::Warn => WitLevel::Warn,
        Level::Error => WitLevel::Error,
        Level::Fatal => WitLevel::Fatal,
    }
}

/// The WIT view of a batch.
pub fn to_wit(batch: &[Arc<LogRecord>]) -> Vec<WitLogEntry> {
    batch
        .iter()
        .map(|l| WitLogEntry {
            id: l.id.clone(),
            device_id: l.device_id.clone(),
            timestamp: l.timestamp.clone(),
            level: wit_level(l.level),
            message: l.message.clone(),
            tags: l.tags.clone(),
            extra: l.extra_json.clone(),
        })
        .collect()
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_REASON_LEN {
        let mut cut = MAX_REASON_LEN;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

impl WasmFilter {
    pub fn new(
        name: &str,
        runtime: Arc<Runtime>,
        pre: FilterPluginPre<PluginState>,
        max_failures: u32,
        stats: Arc<PluginStats>,
    ) -> WasmFilter {
        WasmFilter {
            name: name.into(),
            runtime,
            pre,
            live: None,
            subs: BTreeMap::new(),
            consecutive_failures: 0,
            max_failures: max_failures.max(1),
            disabled: None,
            stats,
        }
    }

    fn classify(&self, e: &wasmtime::Error) -> EngineError {
        if matches!(
            e.downcast_ref::<wasmtime::Trap>(),
            Some(wasmtime::Trap::Interrupt)
        ) {
            EngineError::Timeout(self.runtime.limits.call_timeout.as_millis() as u64)
        } else {
            EngineError::Trap(truncate(format!("{e:#}")))
        }
    }

    /// Record a failure: drop the instance, maybe disable the plugin.
    fn failed(&mut self, error: EngineError) -> EngineError {
        self.live = None;
        self.consecutive_failures += 1;
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(plugin = %self.name, %error, consecutive = self.consecutive_failures, "plugin call failed");
        if self.consecutive_failures >= self.max_failures {
            let reason = format!(
                "{} consecutive failures, last: {error}",
                self.consecutive_failures
            );
            tracing::error!(plugin = %self.name, %reason, "plugin disabled");
            self.stats.set_disabled(&reason);
            self.disabled = Some(reason);
        }
        error
    }

    /// Run one call under the deadline, with accounting.
    fn call<T>(
        &mut self,
        f: impl FnOnce(&mut Store<PluginState>, &FilterPlugin) -> wasmtime::Result<T>,
    ) -> Result<T, EngineError> {
        let live = self
            .live
            .as_mut()
            .ok_or_else(|| EngineError::Trap("no instance".into()))?;
        self.runtime.arm(&mut live.store);
        let started = Instant::now();
        let result = f(&mut live.store, &live.plugin);
        self.stats
            .busy_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        self.stats
            .log_dropped
            .store(live.store.data().log_dropped, Ordering::Relaxed);
        result.map_err(|e| {
            let err = self.classify(&e);
            self.failed(err)
        })
    }

    /// Create the instance if there is none, and re-register every subscription in it.
    fn ensure_live(&mut self) -> Result<(), EngineError> {
        if let Some(reason) = &self.disabled {
            return Err(EngineError::Disabled(reason.clone()));
        }
        if self.live.is_some() {
            return Ok(());
        }
        let mut store = self.runtime.store(&self.name);
        self.runtime.arm(&mut store);
        let plugin = self.pre.instantiate(&mut store).map_err(|e| {
            let err = EngineError::Trap(truncate(format!("instantiation failed: {e:#}")));
            self.failed(err)
        })?;
        if self.stats.calls.load(Ordering::Relaxed) > 0 {
            self.stats.restarts.fetch_add(1, Ordering::Relaxed);
        }
        self.live = Some(Live { store, plugin });
        let subs: Vec<(RegistrationId, String)> =
            self.subs.iter().map(|(k, v)| (*k, v.clone())).collect();
        for (id, params) in subs {
            let answer = self.call(|s, p| {
                p.logstream_plugin_filter()
                    .call_add_subscription(s, id, &params)
            })?;
            if let Err(reason) = answer {
                tracing::warn!(plugin = %self.name, id, %reason, "plugin refused a subscription it accepted before; dropping it");
                self.subs.remove(&id);
            }
        }
        Ok(())
    }
}

impl FilterEngine for WasmFilter {
    fn add(&mut self, id: RegistrationId, params: &str) -> Result<(), AddError> {
        self.ensure_live()
            .map_err(|e| AddError::Unavailable(e.to_string()))?;
        let answer = self
            .call(|s, p| {
                p.logstream_plugin_filter()
                    .call_add_subscription(s, id, params)
            })
            .map_err(|e| AddError::Unavailable(e.to_string()))?;
        self.consecutive_failures = 0;
        match answer {
            Ok(()) => {
                self.subs.insert(id, params.to_owned());
                Ok(())
            }
            Err(reason) => Err(AddError::Rejected(truncate(reason))),
        }
    }

    fn remove(&mut self, id: RegistrationId) {
        if self.subs.remove(&id).is_none() || self.live.is_none() {
            return;
        }
        let _ = self.call(|s, p| p.logstream_plugin_filter().call_remove_subscription(s, id));
    }

    fn evaluate(
        &mut self,
        batch: &[Arc<LogRecord>],
        out: &mut Vec<Matches>,
    ) -> Result<(), EngineError> {
        if self.subs.is_empty() || batch.is_empty() {
            return Ok(());
        }
        self.ensure_live()?;
        let entries = to_wit(batch);
        let answer = self.call(|s, p| p.logstream_plugin_filter().call_evaluate(s, &entries));
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                self.stats
                    .logs_failed
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                return Err(e);
            }
        };
        self.consecutive_failures = 0;
        let n = batch.len() as u32;
        for m in answer {
            // Trust nothing: unknown ids, indices out of range, disorder and duplicates
            // are dropped and counted.
            let valid = self.subs.contains_key(&m.id)
                && m.entries.windows(2).all(|w| w[0] < w[1])
                && m.entries.last().is_none_or(|last| *last < n);
            if !valid {
                self.stats.bad_output.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if !m.entries.is_empty() {
                out.push(Matches {
                    registration: m.id,
                    entries: m.entries,
                });
            }
        }
        Ok(())
    }

    fn disabled(&self) -> Option<&str> {
        self.disabled.as_deref()
    }
}
