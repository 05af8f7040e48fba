//! The seed's `SubscriptionFilter.matches`, done right, in plain Rust.
//!
//! Semantics (the contract every implementation of the `default` filter must meet):
//! AND across fields, OR within a field; `levels` case-insensitive; `keywords` are
//! case-insensitive substrings of `message`; `tags` match if any tag is shared; a missing,
//! `null` or empty field constrains nothing. Params are validated strictly: a wrong type, an
//! unknown level, an unknown field or an oversized list is an error naming the field.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::{AddError, EngineError, FilterEngine, Matches, RegistrationId};
use crate::log_entry::{FieldError, Level, LogRecord};

pub const MAX_DEVICE_IDS: usize = 1000;
pub const MAX_TAGS: usize = 100;
pub const MAX_KEYWORDS: usize = 100;
pub const MAX_ITEM_LEN: usize = 256;

/// Validated params of the default filter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DefaultParams {
    pub device_ids: Vec<String>,
    /// Bit `i` set = `Level::ALL[i]` accepted; 0 = any level.
    pub level_mask: u8,
    pub tags: Vec<String>,
    /// Lower-cased once at registration.
    pub keywords: Vec<String>,
}

impl DefaultParams {
    pub fn parse(params: &Value) -> Result<DefaultParams, FieldError> {
        let obj = match params {
            Value::Null => return Ok(DefaultParams::default()),
            Value::Object(obj) => obj,
            _ => return Err(FieldError::new("params", "must be an object")),
        };
        let mut out = DefaultParams::default();
        for (key, value) in obj {
            match key.as_str() {
                "deviceIds" => out.device_ids = string_list(key, value, MAX_DEVICE_IDS)?,
                "tags" => out.tags = string_list(key, value, MAX_TAGS)?,
                "keywords" => {
                    out.keywords = string_list(key, value, MAX_KEYWORDS)?
                        .into_iter()
                        .map(|k| k.to_lowercase())
                        .collect();
                    if let Some(i) = out.keywords.iter().position(String::is_empty) {
                        return Err(FieldError::new(
                            format!("keywords[{i}]"),
                            "must not be empty",
                        ));
                    }
                }
                "levels" => {
                    for (i, name) in string_list(key, value, Level::ALL.len() * 4)?
                        .iter()
                        .enumerate()
                    {
                        let level = Level::parse(name).ok_or_else(|| {
                            FieldError::new(
                                format!("levels[{i}]"),
                                format!("unknown level {name:?}; expected TRACE, DEBUG, INFO, WARN, ERROR or FATAL"),
                            )
                        })?;
                        out.level_mask |= level_bit(level);
                    }
                }
                other => {
                    return Err(FieldError::new(
                        other,
                        "unknown field; expected deviceIds, levels, tags or keywords",
                    ));
                }
            }
        }
        Ok(out)
    }

    /// The reference predicate.
    pub fn matches(&self, log: &LogRecord) -> bool {
        (self.device_ids.is_empty() || self.device_ids.contains(&log.device_id))
            && (self.level_mask == 0 || self.level_mask & level_bit(log.level) != 0)
            && (self.tags.is_empty() || self.tags.iter().any(|t| log.tags.contains(t)))
            && (self.keywords.is_empty() || {
                let message = log.message.to_lowercase();
                self.keywords.iter().any(|k| message.contains(k.as_str()))
            })
    }

    /// Everything but the device constraint (used once the device index has matched).
    fn matches_rest(&self, log: &LogRecord, lowered: &mut Option<String>) -> bool {
        (self.level_mask == 0 || self.level_mask & level_bit(log.level) != 0)
            && (self.tags.is_empty() || self.tags.iter().any(|t| log.tags.contains(t)))
            && (self.keywords.is_empty() || {
                let message = lowered.get_or_insert_with(|| log.message.to_lowercase());
                self.keywords.iter().any(|k| message.contains(k.as_str()))
            })
    }
}

fn level_bit(level: Level) -> u8 {
    1 << (level as u8)
}

fn string_list(field: &str, value: &Value, max: usize) -> Result<Vec<String>, FieldError> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => {
            if items.len() > max {
                return Err(FieldError::new(
                    field,
                    format!("has {} items; at most {max} are allowed", items.len()),
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) if s.len() <= MAX_ITEM_LEN => Ok(s.clone()),
                    _ => Err(FieldError::new(
                        format!("{field}[{i}]"),
                        format!("must be a string of at most {MAX_ITEM_LEN} bytes"),
                    )),
                })
                .collect()
        }
        _ => Err(FieldError::new(field, "must be an array of strings")),
    }
}

/// The default filter as a native engine, indexed by device so that device-scoped
/// subscriptions cost nothing for logs of other devices.
#[derive(Default)]
pub struct NativeDefault {
    subs: HashMap<RegistrationId, DefaultParams>,
    by_device: HashMap<String, Vec<RegistrationId>>,
    any_device: Vec<RegistrationId>,
    /// Scratch: matches per registration during one evaluation.
    scratch: HashMap<RegistrationId, Vec<u32>>,
}

impl FilterEngine for NativeDefault {
    fn add(&mut self, id: RegistrationId, params: &str) -> Result<(), AddError> {
        let value: Value = serde_json::from_str(params)
            .map_err(|e| AddError::Rejected(format!("params: not JSON: {e}")))?;
        let parsed = DefaultParams::parse(&value).map_err(|e| AddError::Rejected(e.to_string()))?;
        self.remove(id);
        if parsed.device_ids.is_empty() {
            self.any_device.push(id);
        } else {
            for d in &parsed.device_ids {
                let ids = self.by_device.entry(d.clone()).or_default();
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        self.subs.insert(id, parsed);
        Ok(())
    }

    fn remove(&mut self, id: RegistrationId) {
        let Some(old) = self.subs.remove(&id) else {
            return;
        };
        if old.device_ids.is_empty() {
            self.any_device.retain(|x| *x != id);
        }
        for d in &old.device_ids {
            if let Some(ids) = self.by_device.get_mut(d) {
                ids.retain(|x| *x != id);
                if ids.is_empty() {
                    self.by_device.remove(d);
                }
            }
        }
    }

    fn evaluate(
        &mut self,
        batch: &[Arc<LogRecord>],
        out: &mut Vec<Matches>,
    ) -> Result<(), EngineError> {
        for (i, log) in batch.iter().enumerate() {
            let mut lowered = None;
            let scoped = self
                .by_device
                .get(&log.device_id)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            for id in scoped.iter().chain(self.any_device.iter()) {
                if self
                    .subs
                    .get(id)
                    .is_some_and(|p| p.matches_rest(log, &mut lowered))
                {
                    self.scratch.entry(*id).or_default().push(i as u32);
                }
            }
        }
        out.extend(self.scratch.drain().map(|(registration, entries)| Matches {
            registration,
            entries,
        }));
        Ok(())
    }
}
