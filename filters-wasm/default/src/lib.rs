//! The `default` filter: the seed's subscription semantics as a logstream plugin.
//!
//! Params: `{ deviceIds?, levels?, tags?, keywords? }`, each a list of strings.
//! AND across fields, OR within a field; levels case-insensitive; keywords are
//! case-insensitive substrings of the message; tags match if any tag is shared; a missing,
//! null or empty field constrains nothing.
//!
//! Subscriptions are indexed by device, so a batch costs (logs × subscriptions of *their*
//! devices + subscriptions without a device constraint), not logs × all subscriptions.
//!
//! Keywords are indexed too: one Aho–Corasick automaton over every subscription's keywords
//! (rebuilt when they change) finds, in one pass over each message, which keywords it holds.
//! So a subscription's cost does not grow with its keywords' bytes times the message size,
//! and a user with many long keywords cannot make the batch slow for everyone.
//!
//! Built for `logstream:plugin@0.2.0`: the batch arrives as one text plus spans, and every
//! field is read in place (no allocation per log unless a keyword subscription needs the
//! message lower-cased).

use std::cell::RefCell;
use std::collections::HashMap;

use aho_corasick::AhoCorasick;

use serde_json::Value;

wit_bindgen::generate!({
    path: "../../wit/0.2",
    world: "filter-plugin",
});

use exports::logstream::plugin::filter::Guest;
use logstream::plugin::types::{Level, LogBatch, Span, SubscriptionMatches};

/// The text of `span` in `batch` ("" for a span out of bounds; the host sends none).
fn text(batch: &LogBatch, span: Span) -> &str {
    let start = span.start as usize;
    batch
        .text
        .get(start..start.saturating_add(span.len as usize))
        .unwrap_or("")
}

/// One entry's fields that subscriptions look at beyond its device.
struct Fields<'a> {
    level: Level,
    batch: &'a LogBatch,
    tags: Span,
}

impl Fields<'_> {
    fn has_tag(&self, tag: &str) -> bool {
        let start = self.tags.start as usize;
        self.batch
            .tag_spans
            .get(start..start.saturating_add(self.tags.len as usize))
            .unwrap_or(&[])
            .iter()
            .any(|s| text(self.batch, *s) == tag)
    }
}

const MAX_DEVICE_IDS: usize = 1000;
const MAX_TAGS: usize = 100;
const MAX_KEYWORDS: usize = 100;
const MAX_ITEM_LEN: usize = 256;
const LEVELS: [(&str, Level); 6] = [
    ("TRACE", Level::Trace),
    ("DEBUG", Level::Debug),
    ("INFO", Level::Info),
    ("WARN", Level::Warn),
    ("ERROR", Level::Error),
    ("FATAL", Level::Fatal),
];

struct Subscription {
    devices: Vec<String>,
    /// Bit per level; 0 = any.
    level_mask: u8,
    tags: Vec<String>,
    /// Lower-cased.
    keywords: Vec<String>,
    /// Indices of `keywords` in the keyword index (set when the index is built).
    keyword_ids: Vec<usize>,
}

#[derive(Default)]
struct State {
    subs: HashMap<u64, Subscription>,
    by_device: HashMap<String, Vec<u64>>,
    any_device: Vec<u64>,
    keywords: KeywordIndex,
}

/// Every distinct keyword of every subscription, and one automaton over them all.
#[derive(Default)]
struct KeywordIndex {
    /// Distinct lower-cased keywords; a keyword's id is its index here.
    patterns: Vec<String>,
    automaton: Option<AhoCorasick>,
    /// The keywords changed since the automaton was built.
    stale: bool,
    /// Per keyword id: the number of the last message it was found in.
    seen_in: Vec<u32>,
    message: u32,
}

impl KeywordIndex {
    /// Rebuild after subscriptions changed: distinct keywords, each subscription's ids.
    fn rebuild(&mut self, subs: &mut HashMap<u64, Subscription>) {
        let mut ids: HashMap<String, usize> = HashMap::new();
        self.patterns.clear();
        for sub in subs.values_mut() {
            sub.keyword_ids = sub
                .keywords
                .iter()
                .map(|k| {
                    *ids.entry(k.clone()).or_insert_with(|| {
                        self.patterns.push(k.clone());
                        self.patterns.len() - 1
                    })
                })
                .collect();
        }
        self.automaton = if self.patterns.is_empty() {
            None
        } else {
            AhoCorasick::new(&self.patterns).ok()
        };
        self.seen_in = vec![0; self.patterns.len()];
        self.message = 0;
        self.stale = false;
    }

    /// Mark the keywords `lowered` holds; returns the mark to compare with.
    fn scan(&mut self, lowered: &str) -> u32 {
        self.message = self.message.wrapping_add(1);
        if self.message == 0 {
            self.seen_in.iter_mut().for_each(|s| *s = 0);
            self.message = 1;
        }
        if let Some(automaton) = &self.automaton {
            for m in automaton.find_overlapping_iter(lowered) {
                self.seen_in[m.pattern().as_usize()] = self.message;
            }
        }
        self.message
    }
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

fn level_bit(level: Level) -> u8 {
    1 << (level as u8)
}

fn string_list(field: &str, value: &Value, max: usize) -> Result<Vec<String>, String> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => {
            if items.len() > max {
                return Err(format!("{field}: has {} items; at most {max} are allowed", items.len()));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) if s.len() <= MAX_ITEM_LEN => Ok(s.clone()),
                    _ => Err(format!("{field}[{i}]: must be a string of at most {MAX_ITEM_LEN} bytes")),
                })
                .collect()
        }
        _ => Err(format!("{field}: must be an array of strings")),
    }
}

fn parse(params: &str) -> Result<Subscription, String> {
    let value: Value = serde_json::from_str(params).map_err(|e| format!("params: not JSON: {e}"))?;
    let mut sub = Subscription {
        devices: Vec::new(),
        level_mask: 0,
        tags: Vec::new(),
        keywords: Vec::new(),
        keyword_ids: Vec::new(),
    };
    let obj = match &value {
        Value::Null => return Ok(sub),
        Value::Object(obj) => obj,
        _ => return Err("params: must be an object".into()),
    };
    for (key, value) in obj {
        match key.as_str() {
            "deviceIds" => sub.devices = string_list(key, value, MAX_DEVICE_IDS)?,
            "tags" => sub.tags = string_list(key, value, MAX_TAGS)?,
            "keywords" => {
                sub.keywords = string_list(key, value, MAX_KEYWORDS)?
                    .into_iter()
                    .map(|k| k.to_lowercase())
                    .collect();
                if let Some(i) = sub.keywords.iter().position(String::is_empty) {
                    return Err(format!("keywords[{i}]: must not be empty"));
                }
            }
            "levels" => {
                for (i, name) in string_list(key, value, 24)?.iter().enumerate() {
                    let level = LEVELS
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(name))
                        .map(|(_, l)| *l)
                        .ok_or_else(|| {
                            format!("levels[{i}]: unknown level {name:?}; expected TRACE, DEBUG, INFO, WARN, ERROR or FATAL")
                        })?;
                    sub.level_mask |= level_bit(level);
                }
            }
            other => {
                return Err(format!("{other}: unknown field; expected deviceIds, levels, tags or keywords"));
            }
        }
    }
    Ok(sub)
}

impl Subscription {
    /// Everything but the device constraint, which the index has already applied.
    /// `keywords_in` scans the message once (lazily) and says which keyword ids it holds.
    fn matches_rest(&self, log: &Fields<'_>, keywords_in: &mut impl FnMut(usize) -> bool) -> bool {
        (self.level_mask == 0 || self.level_mask & level_bit(log.level) != 0)
            && (self.tags.is_empty() || self.tags.iter().any(|t| log.has_tag(t)))
            && (self.keyword_ids.is_empty() || self.keyword_ids.iter().any(|k| keywords_in(*k)))
    }
}

impl State {
    fn remove(&mut self, id: u64) {
        let Some(old) = self.subs.remove(&id) else {
            return;
        };
        if !old.keywords.is_empty() {
            self.keywords.stale = true;
        }
        if old.devices.is_empty() {
            self.any_device.retain(|x| *x != id);
        }
        for d in &old.devices {
            if let Some(ids) = self.by_device.get_mut(d) {
                ids.retain(|x| *x != id);
                if ids.is_empty() {
                    self.by_device.remove(d);
                }
            }
        }
    }
}

struct DefaultFilter;

impl Guest for DefaultFilter {
    fn add_subscription(id: u64, params: String) -> Result<(), String> {
        let sub = parse(&params)?;
        STATE.with_borrow_mut(|state| {
            state.remove(id);
            if sub.devices.is_empty() {
                state.any_device.push(id);
            } else {
                for d in &sub.devices {
                    let ids = state.by_device.entry(d.clone()).or_default();
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
            }
            if !sub.keywords.is_empty() {
                state.keywords.stale = true;
            }
            state.subs.insert(id, sub);
        });
        Ok(())
    }

    fn remove_subscription(id: u64) {
        STATE.with_borrow_mut(|state| state.remove(id));
    }

    fn evaluate(batch: LogBatch) -> Vec<SubscriptionMatches> {
        STATE.with_borrow_mut(|state| {
            if state.keywords.stale {
                let State { subs, keywords, .. } = state;
                keywords.rebuild(subs);
            }
            let State {
                subs,
                by_device,
                any_device,
                keywords,
            } = state;
            let mut found: HashMap<u64, Vec<u32>> = HashMap::new();
            for (i, entry) in batch.entries.iter().enumerate() {
                let message = text(&batch, entry.message);
                let fields = Fields { level: entry.level, batch: &batch, tags: entry.tags };
                let mut mark = None;
                let mut keywords_in = |k: usize| {
                    let m = *mark.get_or_insert_with(|| keywords.scan(&message.to_lowercase()));
                    keywords.seen_in[k] == m
                };
                let scoped = by_device
                    .get(text(&batch, entry.device_id))
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                if scoped.is_empty() && any_device.is_empty() {
                    continue;
                }
                for id in scoped.iter().chain(any_device.iter()) {
                    if subs.get(id).is_some_and(|s| s.matches_rest(&fields, &mut keywords_in)) {
                        found.entry(*id).or_default().push(i as u32);
                    }
                }
            }
            found
                .into_iter()
                .map(|(id, entries)| SubscriptionMatches { id, entries })
                .collect()
        })
    }
}

export!(DefaultFilter);
