//! `{{name}}`: a logstream filter plugin.
//!
//! Params: `{ "text": "..." }`; a log matches when its message contains `text`
//! (case-insensitive). Change `parse` and `matches` to make it yours.
//!
//! Build: `cargo build --release --target wasm32-wasip2`
//! Check: `logstream plugin check target/wasm32-wasip2/release/{{crate}}.wasm --params '{"text":"error"}'`
//! Ship:  copy that file to the server's plugins directory as `{{name}}.wasm`.

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde_json::Value;

wit_bindgen::generate!({ path: "wit", world: "filter-plugin" });

use exports::logstream::plugin::filter::Guest;
use logstream::plugin::types::{LogEntry, SubscriptionMatches};

/// What a subscription asked for, parsed once.
struct Params {
    text: String,
}

fn parse(params: &str) -> Result<Params, String> {
    let value: Value = serde_json::from_str(params).map_err(|e| format!("params: not JSON: {e}"))?;
    let obj = value.as_object().ok_or("params: must be an object")?;
    if let Some(other) = obj.keys().find(|k| *k != "text") {
        return Err(format!("{other}: unknown field; expected text"));
    }
    match obj.get("text") {
        Some(Value::String(t)) if !t.is_empty() => Ok(Params { text: t.to_lowercase() }),
        _ => Err("text: must be a non-empty string".into()),
    }
}

fn matches(p: &Params, entry: &LogEntry) -> bool {
    entry.message.to_lowercase().contains(&p.text)
}

thread_local! {
    static SUBSCRIPTIONS: RefCell<BTreeMap<u64, Params>> = const { RefCell::new(BTreeMap::new()) };
}

struct Plugin;

impl Guest for Plugin {
    fn add_subscription(id: u64, params: String) -> Result<(), String> {
        let p = parse(&params)?;
        SUBSCRIPTIONS.with_borrow_mut(|s| s.insert(id, p));
        Ok(())
    }

    fn remove_subscription(id: u64) {
        SUBSCRIPTIONS.with_borrow_mut(|s| s.remove(&id));
    }

    fn evaluate(batch: Vec<LogEntry>) -> Vec<SubscriptionMatches> {
        SUBSCRIPTIONS.with_borrow(|subs| {
            subs.iter()
                .filter_map(|(id, p)| {
                    let entries: Vec<u32> = (0..batch.len() as u32).filter(|i| matches(p, &batch[*i as usize])).collect();
                    (!entries.is_empty()).then_some(SubscriptionMatches { id: *id, entries })
                })
                .collect()
        })
    }
}

export!(Plugin);
