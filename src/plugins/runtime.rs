//! The wasmtime side, built once per process: the `Engine` (with epoch interruption), the
//! epoch ticker thread, the `Linker` (sandboxed WASI plus our `host` import), and the typed
//! bindings for the `filter-plugin` world of `wit/plugin.wit`.
//!
//! Per plugin, compilation and linking happen once, at load ([`Runtime::prepare`] gives a
//! `FilterPluginPre`); an instance is cheap to create and is re-created after a trap.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use wasmtime::component::{Component, HasSelf, InstancePre, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::rate_limit::TokenBucket;

/// The WIT package version of the `transform-plugin` world this host implements, and the
/// oldest of the `filter-plugin` worlds (see [`super::filter_abi`] for both of those).
pub const INTERFACE: &str = "logstream:plugin@0.1.0";

/// One epoch tick; CPU deadlines are counted in these (a deadline is rounded up to whole
/// ticks, at least one). 10 ms keeps the ticker thread cheap when idle.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

pub mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "filter-plugin",
    });
}

/// The `transform-plugin` world, sharing the record types and the `host` import with the
/// filter world (so one linker serves both).
pub mod transform_bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "transform-plugin",
        with: {
            "logstream:plugin/types": super::bindings::logstream::plugin::types,
            "logstream:plugin/host": super::bindings::logstream::plugin::host,
        },
    });
}

pub use transform_bindings::{TransformPlugin, TransformPluginPre};

/// The filter world of 0.2.0 (`wit/0.2/plugin.wit`; see [`super::filter_abi`]).
pub mod v2 {
    wasmtime::component::bindgen!({
        path: "wit/0.2",
        world: "filter-plugin",
    });
}

/// The interface versions a filter may implement, newest first.
pub const FILTER_INTERFACES: [&str; 2] = ["logstream:plugin@0.2.0", "logstream:plugin@0.1.0"];

use bindings::logstream::plugin::host::LogLevel;
pub use bindings::logstream::plugin::types::{
    Level as WitLevel, LogEntry as WitLogEntry, SubscriptionMatches as WitMatches,
};

/// The WIT view of a batch.
pub fn to_wit(batch: &[std::sync::Arc<crate::log_entry::LogRecord>]) -> Vec<WitLogEntry> {
    use crate::log_entry::Level;
    let level = |l: Level| match l {
        Level::Trace => WitLevel::Trace,
        Level::Debug => WitLevel::Debug,
        Level::Info => WitLevel::Info,
        Level::Warn => WitLevel::Warn,
        Level::Error => WitLevel::Error,
        Level::Fatal => WitLevel::Fatal,
    };
    batch
        .iter()
        .map(|l| WitLogEntry {
            id: l.id.clone(),
            device_id: l.device_id.clone(),
            timestamp: l.timestamp.clone(),
            level: level(l.level),
            message: l.message.clone(),
            tags: l.tags.clone(),
            extra: l.extra_json.clone(),
        })
        .collect()
}
pub use bindings::{FilterPlugin, FilterPluginPre};

/// Limits applied to every plugin instance.
#[derive(Debug, Clone, Copy)]
pub struct PluginLimits {
    /// CPU budget of one call.
    pub call_timeout: Duration,
    /// Linear memory per instance.
    pub memory_bytes: usize,
    /// `host.log` lines per second per plugin.
    pub log_per_second: u32,
    /// Largest answer of one call, in bytes.
    pub max_output_bytes: usize,
}

/// The data each plugin's `Store` holds.
pub struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: StoreLimits,
    name: Arc<str>,
    log_budget: TokenBucket,
    /// `host.log` lines refused by the rate limit since the instance was created.
    pub log_dropped: u64,
    /// The call under way: the thread's CPU clock when it began, its CPU budget, and a wall
    /// clock backstop (a call that is descheduled for long still ends).
    cpu_started: Duration,
    cpu_budget: Duration,
    wall_deadline: Instant,
}

/// A call used up its CPU budget (the epoch callback's error).
#[derive(Debug)]
pub struct OverBudget;

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the call used up its CPU budget")
    }
}

impl std::error::Error for OverBudget {}

/// CPU time this thread has used.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_THREAD_CPUTIME_ID is supported on
    // every Linux this server runs on; on failure `ts` stays zero and budgets fall back to the
    // wall-clock backstop.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// How much longer than its CPU budget a call may take in wall-clock time (the machine is
/// busy) before it is stopped anyway.
const WALL_BACKSTOP: u32 = 10;

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::logstream::plugin::types::Host for PluginState {}

impl bindings::logstream::plugin::host::Host for PluginState {
    fn log(&mut self, level: LogLevel, message: String) {
        if !self.log_budget.try_take(Instant::now()) {
            self.log_dropped += 1;
            return;
        }
        let message: String = message.chars().take(2000).collect();
        let plugin = &*self.name;
        match level {
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

impl v2::logstream::plugin::types::Host for PluginState {}

/// 0.2.0's `host` is 0.1.0's under a new version.
impl v2::logstream::plugin::host::Host for PluginState {
    fn log(&mut self, level: v2::logstream::plugin::host::LogLevel, message: String) {
        use v2::logstream::plugin::host::LogLevel as V2;
        let level = match level {
            V2::Debug => LogLevel::Debug,
            V2::Info => LogLevel::Info,
            V2::Warn => LogLevel::Warn,
            V2::Error => LogLevel::Error,
        };
        bindings::logstream::plugin::host::Host::log(self, level, message);
    }
}

/// A clock that always reads zero: plugins get no time source the WIT does not ask for.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Engine, linker and limits shared by all plugins.
pub struct Runtime {
    pub engine: Engine,
    linker: Linker<PluginState>,
    pub limits: PluginLimits,
    cache_dir: Option<PathBuf>,
}

impl Runtime {
    pub fn new(limits: PluginLimits, cache_dir: Option<PathBuf>) -> anyhow::Result<Arc<Runtime>> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        // Traps are reported as one line to clients and logs; backtraces cost time on
        // every trap and tell an operator little about a third-party plugin.
        config.wasm_backtrace_max_frames(None);
        let engine = Engine::new(&config).map_err(|e| anyhow!("creating the wasm engine: {e}"))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| anyhow!("linking WASI: {e}"))?;
        FilterPlugin::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |s| s)
            .map_err(|e| anyhow!("linking the host interface: {e}"))?;
        v2::FilterPlugin::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |s| s)
            .map_err(|e| anyhow!("linking the host interface (0.2.0): {e}"))?;
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("logstream-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .context("starting the epoch ticker")?;
        if let Some(dir) = &cache_dir
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "plugin cache disabled");
        }
        Ok(Arc::new(Runtime {
            engine,
            linker,
            limits,
            cache_dir,
        }))
    }

    /// Compile (or load from the cache) and link a component; fails with a readable reason
    /// when the bytes are not a component or import what the host does not offer. Which
    /// world it implements is [`super::component`]'s question.
    pub fn link(&self, bytes: &[u8]) -> anyhow::Result<InstancePre<PluginState>> {
        let component = self.compile(bytes)?;
        self.linker.instantiate_pre(&component).map_err(|e| {
            anyhow!(
                "cannot link: {e} (a plugin may import only WASI 0.2 and the `host` interface of {})",
                FILTER_INTERFACES.join(" or ")
            )
        })
    }

    fn compile(&self, bytes: &[u8]) -> anyhow::Result<Component> {
        if !bytes.starts_with(b"\0asm") {
            return Err(anyhow!("not a WebAssembly file"));
        }
        let cached = self.cache_path(bytes);
        if let Some(path) = &cached
            && path.exists()
        {
            // SAFETY: the cache holds only artifacts this process's engine configuration
            // serialized (the key includes the engine's compatibility hash), and
            // `deserialize_file` re-checks that compatibility before use.
            match unsafe { Component::deserialize_file(&self.engine, path) } {
                Ok(c) => return Ok(c),
                Err(e) => tracing::debug!(path = %path.display(), error = %e, "stale cache entry"),
            }
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| anyhow!("not a valid WebAssembly component: {e}"))?;
        if let Some(path) = cached {
            match component.serialize() {
                Ok(artifact) => write_atomically(&path, &artifact),
                Err(e) => tracing::debug!(error = %e, "cannot serialize component"),
            }
        }
        Ok(component)
    }

    fn cache_path(&self, bytes: &[u8]) -> Option<PathBuf> {
        use std::hash::{Hash, Hasher};
        let dir = self.cache_dir.as_ref()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        self.engine.precompile_compatibility_hash().hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        Some(dir.join(format!("{:016x}-{}.cwasm", h.finish(), bytes.len())))
    }

    /// A fresh store for one instance, with the memory limit and no ambient authority.
    pub fn store(&self, name: &Arc<str>) -> Store<PluginState> {
        let wasi = WasiCtx::builder()
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .build();
        let state = PluginState {
            wasi,
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.limits.memory_bytes)
                .instances(64)
                .tables(64)
                .memories(16)
                .trap_on_grow_failure(true)
                .build(),
            name: name.clone(),
            log_budget: TokenBucket::new(
                self.limits.log_per_second,
                self.limits.log_per_second,
                Instant::now(),
            ),
            log_dropped: 0,
            cpu_started: Duration::ZERO,
            cpu_budget: Duration::ZERO,
            wall_deadline: Instant::now(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        // Budgets are CPU time, so a busy machine does not fail a healthy plugin: on each
        // epoch tick the call's thread CPU time is compared with its budget.
        store.epoch_deadline_callback(|ctx| {
            let state = ctx.data();
            let used = thread_cpu_time().saturating_sub(state.cpu_started);
            if used >= state.cpu_budget || Instant::now() >= state.wall_deadline {
                return Err(wasmtime::Error::new(OverBudget));
            }
            Ok(wasmtime::UpdateDeadline::Continue(1))
        });
        store
    }

    /// Arm the budget before a call: `budget` of this thread's CPU time from now.
    pub fn arm(&self, store: &mut Store<PluginState>, budget: Duration) {
        let state = store.data_mut();
        state.cpu_started = thread_cpu_time();
        state.cpu_budget = budget;
        state.wall_deadline = Instant::now() + budget * WALL_BACKSTOP;
        let ticks = budget.as_millis().div_ceil(EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
    }

    /// The budget of the first call of each function on a fresh instance, which pays for
    /// the instance's own warm-up (first touch of its memory, lazily built tables): twenty
    /// times the normal budget, at least one second.
    pub fn warmup_budget(&self) -> Duration {
        (self.limits.call_timeout * 20).max(Duration::from_secs(1))
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .is_err()
    {
        let _ = std::fs::remove_file(&tmp);
        tracing::debug!(path = %path.display(), "cannot write plugin cache entry");
    }
}
