//! Write a logstream filter as one function.
//!
//! The plugin interface (`wit/plugin.wit`) is built for the hot path: the plugin owns its
//! subscriptions and is called once per batch for all of them. This crate keeps that shape and
//! hides it: implement [`SimpleFilter`] (parse params once, answer `matches` for one entry) and
//! call [`export_filter!`]. The crate stores the parsed params per subscription and evaluates
//! every batch against all of them in one call.
//!
//! ```ignore
//! struct Contains;
//! impl logstream_filter_sdk::SimpleFilter for Contains {
//!     type Params = String;
//!     fn parse(params: &str) -> Result<String, String> { /* validate, name the field */ }
//!     fn matches(needle: &String, entry: &logstream_filter_sdk::LogEntry) -> bool {
//!         entry.message.contains(needle.as_str())
//!     }
//! }
//! logstream_filter_sdk::export_filter!(Contains);
//! ```
//!
//! A filter that needs an index over its subscriptions (like the built-in `default`, which
//! indexes by device) implements the world directly instead.
//!
//! The crate speaks `logstream:plugin@0.2.0` (`wit/0.2/plugin.wit`), where a batch crosses
//! the boundary as one text plus spans instead of one guest allocation per string; it
//! rebuilds each [`LogEntry`] inside the guest, so `matches` reads the same fields as with
//! 0.1.0.

use std::any::Any;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::marker::PhantomData;

wit_bindgen::generate!({
    path: "../../wit/0.2",
    world: "filter-plugin",
    pub_export_macro: true,
    export_macro_name: "export_filter_world",
    default_bindings_module: "logstream_filter_sdk",
});

pub use exports::logstream::plugin::filter::Guest;
pub use logstream::plugin::host::{LogLevel, log};
pub use logstream::plugin::types::{Level, LogBatch, Span, SubscriptionMatches};

/// One log entry, as `matches` receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Unique id (assigned by the host when the producer gave none).
    pub id: String,
    pub device_id: String,
    /// RFC 3339 / ISO-8601 date-time.
    pub timestamp: String,
    pub level: Level,
    pub message: String,
    pub tags: Vec<String>,
    /// Every other field of the entry, as the text of one JSON object (`{}` if none).
    pub extra: String,
}

impl LogBatch {
    /// The text a span of `text` covers; empty for a span that is out of bounds or not on
    /// character boundaries (the host never sends one).
    pub fn str(&self, span: Span) -> &str {
        let start = span.start as usize;
        self.text
            .get(start..start.saturating_add(span.len as usize))
            .unwrap_or("")
    }

    /// The tags of entry `i`.
    pub fn tags(&self, i: usize) -> impl Iterator<Item = &str> {
        let tags = self.entries.get(i).map(|e| e.tags).unwrap_or(Span { start: 0, len: 0 });
        let start = tags.start as usize;
        self.tag_spans
            .get(start..start.saturating_add(tags.len as usize))
            .unwrap_or(&[])
            .iter()
            .map(|s| self.str(*s))
    }

    /// Entry `i` as an owned [`LogEntry`].
    pub fn entry(&self, i: usize) -> Option<LogEntry> {
        let e = self.entries.get(i)?;
        Some(LogEntry {
            id: self.str(e.id).to_owned(),
            device_id: self.str(e.device_id).to_owned(),
            timestamp: self.str(e.timestamp).to_owned(),
            level: e.level,
            message: self.str(e.message).to_owned(),
            tags: self.tags(i).map(str::to_owned).collect(),
            extra: self.str(e.extra).to_owned(),
        })
    }
}

/// A filter as one predicate over pre-parsed params.
pub trait SimpleFilter: 'static {
    /// The parsed form of a subscription's params.
    type Params: 'static;
    /// Parse and validate a subscription's params (the text of a JSON object). The error is
    /// shown to the client: name the offending field.
    fn parse(params: &str) -> Result<Self::Params, String>;
    /// Whether `entry` goes to a subscription with these params.
    fn matches(params: &Self::Params, entry: &LogEntry) -> bool;
}

thread_local! {
    static SUBSCRIPTIONS: RefCell<BTreeMap<u64, Box<dyn Any>>> = const { RefCell::new(BTreeMap::new()) };
}

/// The adapter [`export_filter!`] exports: the plugin interface over a [`SimpleFilter`].
pub struct Filter<F>(PhantomData<F>);

impl<F: SimpleFilter> Guest for Filter<F> {
    fn add_subscription(id: u64, params: String) -> Result<(), String> {
        let parsed = F::parse(&params)?;
        SUBSCRIPTIONS.with_borrow_mut(|subs| subs.insert(id, Box::new(parsed)));
        Ok(())
    }

    fn remove_subscription(id: u64) {
        SUBSCRIPTIONS.with_borrow_mut(|subs| subs.remove(&id));
    }

    fn evaluate(batch: LogBatch) -> Vec<SubscriptionMatches> {
        let batch: Vec<LogEntry> = (0..batch.entries.len())
            .filter_map(|i| batch.entry(i))
            .collect();
        SUBSCRIPTIONS.with_borrow(|subs| {
            subs.iter()
                .filter_map(|(id, params)| {
                    let params = params.downcast_ref::<F::Params>()?;
                    let entries: Vec<u32> = batch
                        .iter()
                        .enumerate()
                        .filter(|(_, entry)| F::matches(params, entry))
                        .map(|(i, _)| i as u32)
                        .collect();
                    (!entries.is_empty()).then_some(SubscriptionMatches { id: *id, entries })
                })
                .collect()
        })
    }
}

/// Export a [`SimpleFilter`] as the component's `filter` interface.
#[macro_export]
macro_rules! export_filter {
    ($filter:ty) => {
        type __LogstreamExportedFilter = $crate::Filter<$filter>;
        $crate::export_filter_world!(__LogstreamExportedFilter with_types_in $crate);
    };
}
