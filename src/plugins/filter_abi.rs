//! The two versions of the filter interface a plugin may implement, behind one type.
//!
//! Why two: in `logstream:plugin@0.1.0` (`wit/plugin.wit`) a batch is a list of records of
//! strings, and the canonical ABI makes one guest allocation per string, each a call from
//! the host into the guest: about 36 µs per batch of 50 before the filter does any work
//! (BENCHMARKS.md §2). `logstream:plugin@0.2.0` (`wit/0.2/plugin.wit`) passes a batch as one
//! text plus flat records of spans: three allocations per batch. Plugins built for 0.1.0
//! (JavaScript, Python, older Rust) keep loading; the rest of the server sees one
//! [`FilterPre`] / [`FilterInstance`] and hands it a [`WitBatch`], which builds the form the
//! plugin speaks once per batch, however many calls (triage probes) use it.

use std::cell::OnceCell;
use std::sync::Arc;

use wasmtime::Store;

use super::runtime::v2::logstream::plugin::types::{Entry, Level as V2Level, LogBatch, Span};
use super::runtime::{FILTER_INTERFACES, PluginState, WitLogEntry, WitMatches, to_wit, v2};
use crate::log_entry::{Level, LogRecord};

/// A compiled, linked filter of either version.
#[derive(Clone)]
pub enum FilterPre {
    V1(super::runtime::FilterPluginPre<PluginState>),
    V2(v2::FilterPluginPre<PluginState>),
}

/// A live instance of a filter of either version.
pub enum FilterInstance {
    V1(super::runtime::FilterPlugin),
    V2(v2::FilterPlugin),
}

impl FilterPre {
    /// The component as a filter of the newest version it implements, if any.
    pub fn new(
        pre: wasmtime::component::InstancePre<PluginState>,
    ) -> Result<FilterPre, wasmtime::Error> {
        match v2::FilterPluginPre::new(pre.clone()) {
            Ok(v2) => Ok(FilterPre::V2(v2)),
            Err(not_v2) => super::runtime::FilterPluginPre::new(pre)
                .map(FilterPre::V1)
                .map_err(|not_v1| {
                    wasmtime::Error::msg(format!(
                        "as {}: {not_v2}; as {}: {not_v1}",
                        FILTER_INTERFACES[0], FILTER_INTERFACES[1]
                    ))
                }),
        }
    }

    /// The WIT package version this plugin was built for.
    pub fn interface(&self) -> &'static str {
        match self {
            FilterPre::V1(_) => FILTER_INTERFACES[1],
            FilterPre::V2(_) => FILTER_INTERFACES[0],
        }
    }

    pub fn instantiate(&self, store: &mut Store<PluginState>) -> wasmtime::Result<FilterInstance> {
        Ok(match self {
            FilterPre::V1(pre) => FilterInstance::V1(pre.instantiate(store)?),
            FilterPre::V2(pre) => FilterInstance::V2(pre.instantiate(store)?),
        })
    }
}

impl FilterInstance {
    pub fn add_subscription(
        &self,
        store: &mut Store<PluginState>,
        id: u64,
        params: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            FilterInstance::V1(p) => p
                .logstream_plugin_filter()
                .call_add_subscription(store, id, params),
            FilterInstance::V2(p) => p
                .logstream_plugin_filter()
                .call_add_subscription(store, id, params),
        }
    }

    pub fn remove_subscription(
        &self,
        store: &mut Store<PluginState>,
        id: u64,
    ) -> wasmtime::Result<()> {
        match self {
            FilterInstance::V1(p) => p
                .logstream_plugin_filter()
                .call_remove_subscription(store, id),
            FilterInstance::V2(p) => p
                .logstream_plugin_filter()
                .call_remove_subscription(store, id),
        }
    }

    /// Evaluate `batch` in the form this plugin speaks.
    pub fn evaluate(
        &self,
        store: &mut Store<PluginState>,
        batch: &WitBatch<'_>,
    ) -> wasmtime::Result<Vec<WitMatches>> {
        match self {
            FilterInstance::V1(p) => p.logstream_plugin_filter().call_evaluate(store, batch.v1()),
            FilterInstance::V2(p) => Ok(p
                .logstream_plugin_filter()
                .call_evaluate(store, batch.v2()?)?
                .into_iter()
                .map(|m| WitMatches {
                    id: m.id,
                    entries: m.entries,
                })
                .collect()),
        }
    }
}

/// One batch, converted for plugins on first use, once per form.
pub struct WitBatch<'a> {
    logs: &'a [Arc<LogRecord>],
    v1: OnceCell<Vec<WitLogEntry>>,
    v2: OnceCell<Option<LogBatch>>,
}

impl<'a> WitBatch<'a> {
    pub fn new(logs: &'a [Arc<LogRecord>]) -> WitBatch<'a> {
        WitBatch {
            logs,
            v1: OnceCell::new(),
            v2: OnceCell::new(),
        }
    }

    fn v1(&self) -> &[WitLogEntry] {
        self.v1.get_or_init(|| to_wit(self.logs))
    }

    /// The 0.2.0 form, or an error for a batch too large for its 32-bit spans (the call
    /// fails like any other, so its logs are reported to clients as `plugin_failed`).
    fn v2(&self) -> wasmtime::Result<&LogBatch> {
        self.v2
            .get_or_init(|| to_log_batch(self.logs))
            .as_ref()
            .ok_or_else(|| {
                wasmtime::Error::msg(format!(
                    "a batch of {} logs holds over 4 GiB of text, more than interface {} can pass",
                    self.logs.len(),
                    FILTER_INTERFACES[0]
                ))
            })
    }
}

/// The 0.2.0 form: every string in one text, fields as spans of it; `None` when the text
/// would pass 4 GiB (only a batch of very many very large logs can).
pub fn to_log_batch(logs: &[Arc<LogRecord>]) -> Option<LogBatch> {
    let bytes: usize = logs
        .iter()
        .map(|l| {
            l.id.len()
                + l.device_id.len()
                + l.timestamp.len()
                + l.message.len()
                + l.extra_json.len()
                + l.tags.iter().map(String::len).sum::<usize>()
        })
        .sum();
    let tags: usize = logs.iter().map(|l| l.tags.len()).sum();
    if bytes > u32::MAX as usize || tags > u32::MAX as usize {
        return None;
    }
    let mut text = String::with_capacity(bytes);
    let mut tag_spans = Vec::with_capacity(tags);
    // Every offset fits in u32: the whole text does.
    let put = |text: &mut String, s: &str| -> Span {
        let start = text.len();
        text.push_str(s);
        Span {
            start: start as u32,
            len: s.len() as u32,
        }
    };
    let entries = logs
        .iter()
        .map(|l| {
            let tags_start = tag_spans.len() as u32;
            for tag in &l.tags {
                let span = put(&mut text, tag);
                tag_spans.push(span);
            }
            Entry {
                id: put(&mut text, &l.id),
                device_id: put(&mut text, &l.device_id),
                timestamp: put(&mut text, &l.timestamp),
                level: v2_level(l.level),
                message: put(&mut text, &l.message),
                tags: Span {
                    start: tags_start,
                    len: l.tags.len() as u32,
                },
                extra: put(&mut text, &l.extra_json),
            }
        })
        .collect();
    Some(LogBatch {
        text,
        entries,
        tag_spans,
    })
}

fn v2_level(level: Level) -> V2Level {
    match level {
        Level::Trace => V2Level::Trace,
        Level::Debug => V2Level::Debug,
        Level::Info => V2Level::Info,
        Level::Warn => V2Level::Warn,
        Level::Error => V2Level::Error,
        Level::Fatal => V2Level::Fatal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_of_every_entry_reads_back_from_its_span() {
        let logs: Vec<Arc<LogRecord>> = [
            serde_json::json!({"deviceId": "dev-ü", "level": "ERROR", "message": "disk 💥 full",
                               "tags": ["a", "βeta"], "id": "x1", "extra": 1}),
            serde_json::json!({"deviceId": "d2", "message": "", "id": "x2"}),
        ]
        .into_iter()
        .map(|v| Arc::new(LogRecord::from_value(v).unwrap()))
        .collect();
        let batch = to_log_batch(&logs).unwrap();
        let read = |s: &Span| &batch.text[s.start as usize..(s.start + s.len) as usize];
        assert_eq!(batch.entries.len(), 2);
        for (log, e) in logs.iter().zip(&batch.entries) {
            assert_eq!(read(&e.id), log.id);
            assert_eq!(read(&e.device_id), log.device_id);
            assert_eq!(read(&e.timestamp), log.timestamp);
            assert_eq!(read(&e.message), log.message);
            assert_eq!(read(&e.extra), log.extra_json);
            let tags: Vec<&str> = batch.tag_spans
                [e.tags.start as usize..(e.tags.start + e.tags.len) as usize]
                .iter()
                .map(read)
                .collect();
            assert_eq!(tags, log.tags);
        }
        assert_eq!(batch.entries[0].level, V2Level::Error);
    }
}
