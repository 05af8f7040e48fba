//! A transform plugin: given a subscription's params and the entries a filter matched for
//! it, returns the entries to deliver (changed, or fewer). Transforms keep no subscription
//! state, so a restarted instance needs nothing re-registered.
//!
//! What a transform returns is validated like ingest (a changed entry is re-serialized once
//! and shared by every client of the registration); it may not add entries. When a transform
//! fails, the affected logs are not delivered at all: delivering them untransformed could leak
//! exactly what a redaction was meant to hide.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Map, Value};

use super::PluginStats;
use super::guard::{Call, Guarded, truncate};
use super::runtime::{
    PluginState, Runtime, TransformPlugin, TransformPluginPre, WitLevel, WitLogEntry, to_wit,
};
use crate::engine::{AddError, EngineError, TransformEngine};
use crate::log_entry::LogRecord;

pub struct WasmTransform {
    guard: Guarded<TransformPlugin>,
    pre: TransformPluginPre<PluginState>,
}

fn level_name(level: WitLevel) -> &'static str {
    match level {
        WitLevel::Trace => "TRACE",
        WitLevel::Debug => "DEBUG",
        WitLevel::Info => "INFO",
        WitLevel::Warn => "WARN",
        WitLevel::Error => "ERROR",
        WitLevel::Fatal => "FATAL",
    }
}

/// Validate an entry a transform returned, as ingest would.
fn from_wit(entry: WitLogEntry) -> Result<LogRecord, String> {
    let mut obj: Map<String, Value> = match serde_json::from_str(&entry.extra) {
        Ok(Value::Object(m)) => m,
        _ => return Err("`extra` is not the text of a JSON object".into()),
    };
    obj.insert("id".into(), entry.id.into());
    obj.insert("deviceId".into(), entry.device_id.into());
    obj.insert("timestamp".into(), entry.timestamp.into());
    obj.insert("level".into(), level_name(entry.level).into());
    obj.insert("message".into(), entry.message.into());
    obj.insert("tags".into(), entry.tags.into());
    LogRecord::from_value(Value::Object(obj)).map_err(|e| e.to_string())
}

impl WasmTransform {
    pub fn new(
        name: &str,
        runtime: Arc<Runtime>,
        pre: TransformPluginPre<PluginState>,
        max_failures: u32,
        stats: Arc<PluginStats>,
    ) -> WasmTransform {
        WasmTransform {
            guard: Guarded::new(name, runtime, max_failures, stats),
            pre,
        }
    }

    fn ensure_live(&mut self) -> Result<(), EngineError> {
        let pre = &self.pre;
        self.guard
            .ensure(|store| pre.instantiate(store))
            .map(|_| ())
    }
}

impl TransformEngine for WasmTransform {
    fn disabled(&self) -> Option<&str> {
        self.guard.disabled()
    }

    fn enable(&mut self) -> bool {
        self.guard.enable()
    }

    fn disable(&mut self, reason: &str) -> Option<bool> {
        Some(self.guard.disable(reason))
    }

    /// Check params for one step of a chain.
    fn validate(&mut self, params: &str) -> Result<(), AddError> {
        self.ensure_live()
            .map_err(|e| AddError::Unavailable(e.to_string()))?;
        let answer = self
            .guard
            .call(Call::Validate, |s, p| {
                p.logstream_plugin_transform().call_validate(s, params)
            })
            .map_err(|e| AddError::Unavailable(e.to_string()))?;
        self.guard.succeeded();
        answer.map_err(|reason| AddError::Rejected(truncate(reason)))
    }

    /// Transform the entries one registration matched.
    fn apply(
        &mut self,
        params: &str,
        logs: &[Arc<LogRecord>],
    ) -> Result<Vec<Arc<LogRecord>>, EngineError> {
        if logs.is_empty() {
            return Ok(Vec::new());
        }
        self.ensure_live()?;
        let entries = to_wit(logs);
        let answer = self.guard.call(Call::Apply, |s, p| {
            p.logstream_plugin_transform()
                .call_apply(s, params, &entries)
        });
        let answer = answer.inspect_err(|_| {
            self.guard
                .stats
                .logs_failed
                .fetch_add(logs.len() as u64, Ordering::Relaxed);
        })?;
        self.guard.succeeded();
        let bad = |why: String| {
            self.guard.stats.bad_output.fetch_add(1, Ordering::Relaxed);
            self.guard
                .stats
                .logs_failed
                .fetch_add(logs.len() as u64, Ordering::Relaxed);
            EngineError::BadOutput(truncate(why))
        };
        let out =
            answer.map_err(|reason| bad(format!("the transform refused the batch: {reason}")))?;
        let output_bytes: usize = out
            .iter()
            .map(|e| {
                e.id.len()
                    + e.device_id.len()
                    + e.timestamp.len()
                    + e.message.len()
                    + e.extra.len()
                    + e.tags.iter().map(String::len).sum::<usize>()
            })
            .sum();
        if output_bytes > self.guard.runtime.limits.max_output_bytes {
            return Err(bad(format!(
                "answer of {output_bytes} bytes is over plugin_max_output_bytes ({})",
                self.guard.runtime.limits.max_output_bytes
            )));
        }
        if out.len() > logs.len() {
            return Err(bad(format!(
                "returned {} entries for {}; a transform may not add entries",
                out.len(),
                logs.len()
            )));
        }
        out.into_iter()
            .map(|entry| from_wit(entry).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|why| bad(format!("returned an invalid entry: {why}")))
    }
}
