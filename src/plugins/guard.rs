//! The sandboxed-instance core shared by filter and transform plugins: one long-lived
//! instance per plugin, every call under the CPU deadline with accounting, and the failure
//! policy. A trap or timeout discards the instance (the next call creates a fresh one); after
//! `max_failures` consecutive failures the plugin is disabled and answers no more calls.
//!
//! Warm-up: a fresh instance's first call of each function pays for things no later call
//! does (first touch of its memory, tables built lazily, an interpreter's start), and on a
//! busy machine that alone passed the budget and counted as a failure. Instantiation and the
//! first call of each [`Call`] kind run under [`Runtime::warmup_budget`] instead.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use wasmtime::Store;

use super::PluginStats;
use super::runtime::{PluginState, Runtime};
use crate::engine::EngineError;

/// Longest plugin-provided message passed on to a client.
const MAX_REASON_LEN: usize = 500;

pub fn truncate(mut s: String) -> String {
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

/// The functions of a plugin, for warm-up accounting.
#[derive(Debug, Clone, Copy)]
pub enum Call {
    AddSubscription = 0,
    RemoveSubscription = 1,
    Evaluate = 2,
    Validate = 3,
    Apply = 4,
}

pub struct Guarded<P> {
    pub name: Arc<str>,
    pub runtime: Arc<Runtime>,
    live: Option<(Store<PluginState>, P)>,
    /// Bit per [`Call`] kind already made on the live instance.
    warmed: u8,
    consecutive_failures: u32,
    max_failures: u32,
    disabled: Option<String>,
    /// The `default` filter never stays down: once disabled it is restarted after a
    /// back-off (1 s, doubling to a minute while it keeps failing).
    recovery: Option<Recovery>,
    pub stats: Arc<PluginStats>,
}

/// When a disabled plugin is tried again, and the back-off so far.
#[derive(Debug, Clone, Copy)]
struct Recovery {
    backoff: Duration,
    at: Option<Instant>,
}

const RECOVERY_MIN: Duration = Duration::from_secs(1);
const RECOVERY_MAX: Duration = Duration::from_secs(60);

impl<P> Guarded<P> {
    pub fn new(
        name: &str,
        runtime: Arc<Runtime>,
        max_failures: u32,
        stats: Arc<PluginStats>,
    ) -> Self {
        Guarded {
            name: name.into(),
            runtime,
            live: None,
            warmed: 0,
            consecutive_failures: 0,
            max_failures: max_failures.max(1),
            disabled: None,
            recovery: (name == crate::subscription::DEFAULT_FILTER).then_some(Recovery {
                backoff: Duration::ZERO,
                at: None,
            }),
            stats,
        }
    }

    pub fn disabled(&self) -> Option<&str> {
        self.disabled.as_deref()
    }

    /// Whether this plugin is restarted on its own after being disabled.
    pub fn recovers(&self) -> bool {
        self.recovery.is_some()
    }

    /// Serve again after being disabled (an operator's decision): a fresh instance on the
    /// next call, the failure count from zero. Returns whether it was disabled.
    pub fn enable(&mut self) -> bool {
        let was = self.disabled.take().is_some();
        self.consecutive_failures = 0;
        self.live = None;
        self.stats.set_enabled();
        was
    }

    /// Stop serving (an operator's decision) until enabled again: no restart on its own.
    /// Returns whether it was serving.
    pub fn disable(&mut self, reason: &str) -> bool {
        let was = self.disabled.is_none();
        self.live = None;
        if let Some(recovery) = &mut self.recovery {
            recovery.at = None;
        }
        self.stats.set_disabled(reason);
        self.disabled = Some(reason.to_owned());
        was
    }

    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }

    fn classify(&self, e: &wasmtime::Error) -> EngineError {
        if e.is::<super::runtime::OverBudget>() {
            return EngineError::Timeout(self.runtime.limits.call_timeout.as_millis() as u64);
        }
        match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => {
                EngineError::Timeout(self.runtime.limits.call_timeout.as_millis() as u64)
            }
            Some(trap) => EngineError::Trap(trap.to_string()),
            None => EngineError::Trap(truncate(e.to_string())),
        }
    }

    /// Record a failure: drop the instance, maybe disable the plugin.
    pub fn failed(&mut self, error: EngineError) -> EngineError {
        self.live = None;
        self.consecutive_failures += 1;
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(plugin = %self.name, %error, consecutive = self.consecutive_failures, "plugin call failed");
        if self.consecutive_failures >= self.max_failures {
            let reason = format!(
                "{} consecutive failures, last: {error}",
                self.consecutive_failures
            );
            self.stats.set_disabled(&reason);
            if let Some(recovery) = &mut self.recovery {
                recovery.backoff = (recovery.backoff * 2).clamp(RECOVERY_MIN, RECOVERY_MAX);
                let at = Instant::now() + recovery.backoff;
                recovery.at = Some(at);
                self.stats.set_recovery(at);
                tracing::error!(plugin = %self.name, %reason, retry_in_s = recovery.backoff.as_secs(), "plugin disabled; it will be restarted");
            } else {
                tracing::error!(plugin = %self.name, %reason, "plugin disabled");
            }
            self.disabled = Some(reason);
        }
        error
    }

    /// A call went well: the failure streak ends (and the recovery back-off starts over).
    pub fn succeeded(&mut self) {
        self.consecutive_failures = 0;
        if let Some(recovery) = &mut self.recovery {
            recovery.backoff = Duration::ZERO;
            recovery.at = None;
        }
    }

    /// A failure turned out to be a subscription's doing (see `triage`): it does not count
    /// against the plugin, and a plugin it disabled serves again.
    pub fn forgive(&mut self) {
        self.consecutive_failures = 0;
        if self.disabled.take().is_some() {
            tracing::info!(plugin = %self.name, "the failures were a subscription's doing; the plugin serves again");
            self.stats.set_enabled();
        }
        if let Some(recovery) = &mut self.recovery {
            recovery.backoff = Duration::ZERO;
            recovery.at = None;
        }
    }

    /// Create the instance if there is none. `Ok(true)` when a new one was made (the caller
    /// restores any state it keeps in the plugin).
    pub fn ensure(
        &mut self,
        instantiate: impl FnOnce(&mut Store<PluginState>) -> wasmtime::Result<P>,
    ) -> Result<bool, EngineError> {
        if let Some(reason) = &self.disabled {
            let due = self
                .recovery
                .and_then(|r| r.at)
                .is_some_and(|at| Instant::now() >= at);
            if !due {
                return Err(EngineError::Disabled(reason.clone()));
            }
            tracing::warn!(plugin = %self.name, "restarting the plugin after its back-off");
            self.disabled = None;
            self.consecutive_failures = 0;
            self.stats.set_enabled();
        }
        if self.live.is_some() {
            return Ok(false);
        }
        let mut store = self.runtime.store(&self.name);
        self.runtime.arm(&mut store, self.runtime.warmup_budget());
        let plugin = instantiate(&mut store).map_err(|e| {
            let err = EngineError::Trap(truncate(format!("instantiation failed: {e:#}")));
            self.failed(err)
        })?;
        if self.stats.calls.load(Ordering::Relaxed) > 0 {
            self.stats.restarts.fetch_add(1, Ordering::Relaxed);
        }
        self.live = Some((store, plugin));
        self.warmed = 0;
        Ok(true)
    }

    /// Run one call under the deadline (the warm-up budget for the first call of its kind
    /// on this instance), with accounting.
    pub fn call<T>(
        &mut self,
        kind: Call,
        f: impl FnOnce(&mut Store<PluginState>, &P) -> wasmtime::Result<T>,
    ) -> Result<T, EngineError> {
        let (store, plugin) = self
            .live
            .as_mut()
            .ok_or_else(|| EngineError::Trap("no instance".into()))?;
        let bit = 1u8 << (kind as u8);
        let budget: Duration = if self.warmed & bit == 0 {
            self.runtime.warmup_budget()
        } else {
            self.runtime.limits.call_timeout
        };
        self.warmed |= bit;
        self.runtime.arm(store, budget);
        let started = Instant::now();
        let result = f(store, plugin);
        let took = started.elapsed();
        self.stats
            .busy_ns
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        if matches!(kind, Call::Evaluate | Call::Apply) {
            self.stats.call_seconds.0.observe(took.as_secs_f64());
        }
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        self.stats
            .log_dropped
            .store(store.data().log_dropped, Ordering::Relaxed);
        result.map_err(|e| {
            let err = self.classify(&e);
            self.failed(err)
        })
    }
}
