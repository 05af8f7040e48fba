//! Subscriptions as the router sees them: which plugin, which registration, which clients.
//!
//! Identical subscriptions (same filter, same params, same transform chain) share one
//! registration, so a thousand dashboards watching the same device cost the filter one
//! subscription, and a transformed entry is built once for all of them.
//!
//! A plugin name is either a filter or a transform, never both: installing a name in one role
//! removes it from the other and ends the registrations that used it there.
//!
//! Device scopes: a registration belongs to one scope (part of what makes subscriptions
//! identical), so it never mixes the logs of two. What its filter matched is narrowed to the
//! scope here, before any transform sees it and before delivery: a plugin cannot widen it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::Value;
use socketioxide::socket::Sid;

use crate::auth::Scope;
use crate::engine::{
    AddError, EngineError, FilterEngine, Matches, Plugin, RegistrationId, TransformEngine, Triage,
};
use crate::log_entry::LogRecord;
use crate::protocol::{ClientError, Code, TransformStep};

struct Registration {
    id: RegistrationId,
    filter: String,
    /// The params as registered with the filter.
    params: String,
    /// The params and chain as the client gave them (to register again under a new scope).
    request: (Value, Vec<TransformStep>),
    /// The devices this registration may deliver.
    scope: Arc<Scope>,
    /// Transforms applied in order to what the filter matched: (name, params).
    chain: Vec<(String, String)>,
    /// Filter, params and chain together: what makes two subscriptions identical.
    key: String,
    clients: Vec<Sid>,
}

/// The plugins by name and the live registrations.
#[derive(Default)]
pub struct Registry {
    filters: BTreeMap<String, Box<dyn FilterEngine>>,
    transforms: BTreeMap<String, Box<dyn TransformEngine>>,
    registrations: HashMap<RegistrationId, Registration>,
    by_key: HashMap<String, RegistrationId>,
    /// Which registration each subscribed client belongs to.
    client_registration: HashMap<Sid, RegistrationId>,
    next_id: RegistrationId,
}

/// Why a subscription was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubscribeError {
    #[error("unknown filter `{name}`; loaded filters: {loaded}")]
    UnknownFilter { name: String, loaded: String },
    #[error("filter `{filter}` rejected the params: {message}")]
    Rejected { filter: String, message: String },
    #[error("filter `{filter}` is unavailable: {message}")]
    Unavailable { filter: String, message: String },
    #[error("unknown transform `{name}`; loaded transforms: {loaded}")]
    UnknownTransform { name: String, loaded: String },
    #[error("transform `{transform}` rejected its params: {message}")]
    TransformRejected { transform: String, message: String },
    #[error("transform `{transform}` is unavailable: {message}")]
    TransformUnavailable { transform: String, message: String },
    #[error("not connected")]
    NotConnected,
}

impl SubscribeError {
    /// The error as the client receives it, naming the field at fault.
    pub fn to_client(&self) -> ClientError {
        let (code, field) = match self {
            SubscribeError::UnknownFilter { .. } => (Code::UnknownFilter, Some("filter")),
            SubscribeError::Rejected { .. } => (Code::InvalidParams, Some("params")),
            SubscribeError::Unavailable { .. } => (Code::FilterUnavailable, Some("filter")),
            SubscribeError::UnknownTransform { .. } => (Code::UnknownTransform, Some("transform")),
            SubscribeError::TransformRejected { .. } => (Code::InvalidTransform, Some("transform")),
            SubscribeError::TransformUnavailable { .. } => {
                (Code::TransformUnavailable, Some("transform"))
            }
            SubscribeError::NotConnected => (Code::NotConnected, None),
        };
        let error = ClientError::new(code, self.to_string());
        match field {
            Some(f) => error.field(f),
            None => error,
        }
    }
}

fn names<V>(map: &BTreeMap<String, V>) -> String {
    if map.is_empty() {
        "none".into()
    } else {
        map.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

impl Registry {
    /// Install (or replace) plugin `name` in its role; returns the clients whose
    /// subscriptions ended because the name changed role.
    pub fn install(&mut self, name: &str, plugin: Plugin) -> Vec<Sid> {
        match plugin {
            Plugin::Filter(engine) => self.install_filter(name, engine),
            Plugin::Transform(transform) => self.install_transform(name, transform),
        }
    }

    /// Make `name` a filter served by `engine`. The engine must already hold every live
    /// registration of `name` (see the router's hot swap).
    pub fn install_filter(&mut self, name: &str, engine: Box<dyn FilterEngine>) -> Vec<Sid> {
        let ended = if self.transforms.remove(name).is_some() {
            self.end_transform_users(name)
        } else {
            Vec::new()
        };
        self.filters.insert(name.to_owned(), engine);
        ended
    }

    /// Make `name` a transform; chains keep using it with their params.
    pub fn install_transform(
        &mut self,
        name: &str,
        transform: Box<dyn TransformEngine>,
    ) -> Vec<Sid> {
        let ended = if self.filters.contains_key(name) {
            let ended = self.end_filter(name);
            self.filters.remove(name);
            ended
        } else {
            Vec::new()
        };
        self.transforms.insert(name.to_owned(), transform);
        ended
    }

    /// Unload `name` in whichever role; returns the clients whose subscriptions ended.
    pub fn remove_plugin(&mut self, name: &str) -> Vec<Sid> {
        let mut ended = self.end_filter(name);
        ended.extend(self.end_transform_users(name));
        self.filters.remove(name);
        self.transforms.remove(name);
        ended
    }

    pub fn is_filter(&self, name: &str) -> bool {
        self.filters.contains_key(name)
    }

    pub fn is_transform(&self, name: &str) -> bool {
        self.transforms.contains_key(name)
    }

    /// Check every step of a chain: the transform exists and accepts its params.
    fn check_chain(
        &mut self,
        chain: &[TransformStep],
    ) -> Result<Vec<(String, String)>, SubscribeError> {
        let loaded = names(&self.transforms);
        chain
            .iter()
            .map(|step| {
                let params = step.params.to_string();
                let transform = self.transforms.get_mut(&step.name).ok_or_else(|| {
                    SubscribeError::UnknownTransform {
                        name: step.name.clone(),
                        loaded: loaded.clone(),
                    }
                })?;
                transform.validate(&params).map_err(|e| match e {
                    AddError::Rejected(message) => SubscribeError::TransformRejected {
                        transform: step.name.clone(),
                        message,
                    },
                    AddError::Unavailable(message) => SubscribeError::TransformUnavailable {
                        transform: step.name.clone(),
                        message,
                    },
                })?;
                Ok((step.name.clone(), params))
            })
            .collect()
    }

    /// Move `sid` to the registration for (`filter`, `params`, `chain`, `scope`), creating it
    /// if needed. On error the client's previous subscription is untouched.
    pub fn subscribe(
        &mut self,
        sid: Sid,
        filter: &str,
        params: &Value,
        chain: &[TransformStep],
        scope: &Arc<Scope>,
    ) -> Result<(), SubscribeError> {
        let params_text = params.to_string();
        let chain_text = serde_json::to_string(chain).unwrap_or_default();
        let scope_text = serde_json::to_string(scope.patterns()).unwrap_or_default();
        let key = serde_json::to_string(&(filter, &params_text, &chain_text, &scope_text))
            .unwrap_or_default();
        let id = match self.by_key.get(&key) {
            Some(id) => *id,
            None => self.register(filter, params, chain, scope, key)?,
        };
        if self.client_registration.get(&sid) == Some(&id) {
            return Ok(());
        }
        self.unsubscribe(sid);
        if let Some(reg) = self.registrations.get_mut(&id) {
            reg.clients.push(sid);
        }
        self.client_registration.insert(sid, id);
        Ok(())
    }

    /// A new registration, added to its filter with a checked chain.
    fn register(
        &mut self,
        filter: &str,
        params_value: &Value,
        chain: &[TransformStep],
        scope: &Arc<Scope>,
        key: String,
    ) -> Result<RegistrationId, SubscribeError> {
        let params = params_value.to_string();
        let loaded = names(&self.filters);
        let engine = self
            .filters
            .get_mut(filter)
            .ok_or(SubscribeError::UnknownFilter {
                name: filter.to_owned(),
                loaded,
            })?;
        let id = self.next_id + 1;
        engine.add(id, &params).map_err(|e| match e {
            AddError::Rejected(message) => SubscribeError::Rejected {
                filter: filter.to_owned(),
                message,
            },
            AddError::Unavailable(message) => SubscribeError::Unavailable {
                filter: filter.to_owned(),
                message,
            },
        })?;
        self.next_id = id;
        let checked = match self.check_chain(chain) {
            Ok(c) => c,
            Err(e) => {
                if let Some(engine) = self.filters.get_mut(filter) {
                    engine.remove(id);
                }
                return Err(e);
            }
        };
        self.registrations.insert(
            id,
            Registration {
                id,
                filter: filter.to_owned(),
                params,
                request: (params_value.clone(), chain.to_vec()),
                scope: scope.clone(),
                chain: checked,
                key: key.clone(),
                clients: Vec::new(),
            },
        );
        self.by_key.insert(key, id);
        Ok(id)
    }

    /// What `sid` is subscribed to: filter, params and chain as given.
    pub fn subscription_of(&self, sid: Sid) -> Option<(String, Value, Vec<TransformStep>)> {
        let reg = self
            .registrations
            .get(self.client_registration.get(&sid)?)?;
        Some((
            reg.filter.clone(),
            reg.request.0.clone(),
            reg.request.1.clone(),
        ))
    }

    /// Detach `sid`; a registration left without clients is removed from its filter.
    /// Returns whether the client had a subscription.
    pub fn unsubscribe(&mut self, sid: Sid) -> bool {
        let Some(id) = self.client_registration.remove(&sid) else {
            return false;
        };
        let empty = match self.registrations.get_mut(&id) {
            Some(reg) => {
                reg.clients.retain(|s| *s != sid);
                reg.clients.is_empty()
            }
            None => false,
        };
        if empty && let Some(reg) = self.registrations.remove(&id) {
            self.by_key.remove(&reg.key);
            if let Some(engine) = self.filters.get_mut(&reg.filter) {
                engine.remove(id);
            }
        }
        true
    }

    /// End every registration `doomed` picks; returns the clients that were subscribed.
    fn end_where(&mut self, doomed: impl Fn(&Registration) -> bool) -> Vec<Sid> {
        let ids: Vec<RegistrationId> = self
            .registrations
            .iter()
            .filter(|(_, r)| doomed(r))
            .map(|(id, _)| *id)
            .collect();
        let mut clients = Vec::new();
        for id in ids {
            if let Some(reg) = self.registrations.remove(&id) {
                self.by_key.remove(&reg.key);
                if let Some(engine) = self.filters.get_mut(&reg.filter) {
                    engine.remove(id);
                }
                for sid in reg.clients {
                    self.client_registration.remove(&sid);
                    clients.push(sid);
                }
            }
        }
        clients
    }

    /// End the registrations `ids` (a triage's culprits, already forgotten by their filter);
    /// returns their clients.
    pub fn end_registrations(&mut self, ids: &[RegistrationId]) -> Vec<Sid> {
        self.end_where(|r| ids.contains(&r.id))
    }

    /// End every registration of `filter`; returns the clients that were subscribed.
    pub fn end_filter(&mut self, filter: &str) -> Vec<Sid> {
        self.end_where(|r| r.filter == filter)
    }

    /// End every registration whose chain uses `transform`; returns their clients.
    pub fn end_transform_users(&mut self, transform: &str) -> Vec<Sid> {
        self.end_where(|r| r.chain.iter().any(|(name, _)| name == transform))
    }

    /// The live registrations of `filter`, with their params.
    pub fn params_of(&self, filter: &str) -> Vec<(RegistrationId, String)> {
        self.registrations
            .iter()
            .filter(|(_, r)| r.filter == filter)
            .map(|(id, r)| (*id, r.params.clone()))
            .collect()
    }

    /// Clients subscribed through `filter`.
    pub fn clients_of(&self, filter: &str) -> Vec<Sid> {
        self.registrations
            .values()
            .filter(|r| r.filter == filter)
            .flat_map(|r| r.clients.iter().copied())
            .collect()
    }

    /// The clients of one registration.
    pub fn clients(&self, id: RegistrationId) -> &[Sid] {
        self.registrations
            .get(&id)
            .map(|r| r.clients.as_slice())
            .unwrap_or(&[])
    }

    /// Registrations per plugin name: a filter's own, and for a transform the registrations
    /// whose chain uses it.
    pub fn counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for reg in self.registrations.values() {
            *counts.entry(reg.filter.clone()).or_default() += 1;
            for (name, _) in &reg.chain {
                *counts.entry(name.clone()).or_default() += 1;
            }
        }
        counts
    }

    /// Run every filter that has registrations over `batch`, appending to `out`; returns
    /// the filters that failed.
    pub fn evaluate(
        &mut self,
        batch: &[Arc<LogRecord>],
        out: &mut Vec<Matches>,
    ) -> Vec<(String, EngineError)> {
        let mut failed = Vec::new();
        for (name, engine) in self.filters.iter_mut() {
            if let Err(e) = engine.evaluate(batch, out) {
                failed.push((name.clone(), e));
            }
        }
        failed
    }

    /// After `filter` failed on `batch`: which registrations caused it (see
    /// `plugins::triage`); the matches of those cleared are appended to `out`.
    pub fn triage(
        &mut self,
        filter: &str,
        batch: &[Arc<LogRecord>],
        out: &mut Vec<Matches>,
    ) -> Triage {
        match self.filters.get_mut(filter) {
            Some(engine) => engine.triage(batch, out),
            None => Triage::default(),
        }
    }

    /// The registrations of `filter`.
    pub fn registrations_of(&self, filter: &str) -> Vec<RegistrationId> {
        self.registrations
            .iter()
            .filter(|(_, r)| r.filter == filter)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The devices registration `id` may deliver.
    pub fn scope_of(&self, id: RegistrationId) -> Option<&Arc<Scope>> {
        self.registrations.get(&id).map(|r| &r.scope)
    }

    /// Run one filter over `batch` (a replay's slice), appending to `out`.
    pub fn evaluate_one(
        &mut self,
        filter: &str,
        batch: &[Arc<LogRecord>],
        out: &mut Vec<Matches>,
    ) -> Result<(), EngineError> {
        match self.filters.get_mut(filter) {
            Some(engine) => engine.evaluate(batch, out),
            None => Err(EngineError::Disabled("unloaded".into())),
        }
    }

    /// The registration `sid` belongs to.
    pub fn registration_of(&self, sid: Sid) -> Option<RegistrationId> {
        self.client_registration.get(&sid).copied()
    }

    /// What registration `m.registration` receives of `batch`: the matched entries through
    /// its transform chain. On failure, the failing step and why (nothing is delivered).
    pub fn deliverable(
        &mut self,
        m: &Matches,
        batch: &[Arc<LogRecord>],
    ) -> Result<Vec<Arc<LogRecord>>, (String, EngineError)> {
        let Some(reg) = self.registrations.get(&m.registration) else {
            return Ok(Vec::new());
        };
        let mut logs: Vec<Arc<LogRecord>> = m
            .entries
            .iter()
            .filter_map(|i| batch.get(*i as usize))
            .filter(|log| reg.scope.is_all() || reg.scope.matches(&log.device_id))
            .cloned()
            .collect();
        if reg.chain.is_empty() || logs.is_empty() {
            return Ok(logs);
        }
        let matched = logs.clone();
        for (name, params) in &reg.chain {
            if logs.is_empty() {
                break;
            }
            let Some(transform) = self.transforms.get_mut(name) else {
                return Err((name.clone(), EngineError::Disabled("unloaded".into())));
            };
            logs = transform
                .apply(params, &logs)
                .map_err(|e| (name.clone(), e))?;
        }
        // What a transform returns is new: it may not name a device outside the scope (a
        // transform that keeps state could otherwise pass one registration's logs to
        // another), and it keeps the place in history of the entry it came from.
        logs.retain(|l| reg.scope.matches(&l.device_id));
        for log in &logs {
            if log.stamp.get().is_none() {
                let source = matched
                    .iter()
                    .find(|m| m.id == log.id)
                    .or(matched.last())
                    .and_then(|m| m.stamp.get());
                if let Some(stamp) = source {
                    let _ = log.stamp.set(stamp.clone());
                }
            }
        }
        Ok(logs)
    }

    /// Re-enable plugin `name`: `None` if there is no such plugin, else whether it was
    /// disabled.
    pub fn enable(&mut self, name: &str) -> Option<bool> {
        if let Some(f) = self.filters.get_mut(name) {
            return Some(f.enable());
        }
        self.transforms.get_mut(name).map(|t| t.enable())
    }

    /// Disable plugin `name` (an operator's decision): `None` if there is no such plugin or
    /// it cannot be disabled, else whether it was serving.
    pub fn disable(&mut self, name: &str, reason: &str) -> Option<bool> {
        if let Some(f) = self.filters.get_mut(name) {
            return f.disable(reason);
        }
        self.transforms
            .get_mut(name)
            .and_then(|t| t.disable(reason))
    }

    pub fn filter_disabled(&self, name: &str) -> Option<String> {
        self.filters
            .get(name)
            .and_then(|f| f.disabled().map(str::to_owned))
    }

    pub fn transform_disabled(&self, name: &str) -> Option<String> {
        self.transforms
            .get(name)
            .and_then(|t| t.disabled().map(str::to_owned))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::native::NativeDefault;
    use serde_json::json;

    /// Upper-cases messages; refuses params `{"bad": true}`.
    struct Shout;

    impl TransformEngine for Shout {
        fn validate(&mut self, params: &str) -> Result<(), AddError> {
            if params.contains("bad") {
                Err(AddError::Rejected("bad: no".into()))
            } else {
                Ok(())
            }
        }
        fn apply(
            &mut self,
            _: &str,
            logs: &[Arc<LogRecord>],
        ) -> Result<Vec<Arc<LogRecord>>, EngineError> {
            Ok(logs
                .iter()
                .map(|l| {
                    let v = json!({"deviceId": l.device_id, "message": l.message.to_uppercase(), "id": l.id});
                    Arc::new(LogRecord::from_value(v).unwrap())
                })
                .collect())
        }
    }

    fn all() -> Arc<Scope> {
        Arc::new(Scope::all())
    }

    /// Rewrites every entry's device: a transform trying to widen a scope.
    struct Relabel;

    impl TransformEngine for Relabel {
        fn validate(&mut self, _: &str) -> Result<(), AddError> {
            Ok(())
        }
        fn apply(
            &mut self,
            _: &str,
            logs: &[Arc<LogRecord>],
        ) -> Result<Vec<Arc<LogRecord>>, EngineError> {
            Ok(logs
                .iter()
                .map(|l| {
                    let v = json!({"deviceId": "plant-b/9", "message": l.message, "id": l.id});
                    Arc::new(LogRecord::from_value(v).unwrap())
                })
                .collect())
        }
    }

    fn registry() -> Registry {
        let mut r = Registry::default();
        r.install(
            "default",
            Plugin::Filter(Box::new(NativeDefault::default())),
        );
        r.install("shout", Plugin::Transform(Box::new(Shout)));
        r
    }

    fn record(device: &str, message: &str) -> Arc<LogRecord> {
        Arc::new(LogRecord::from_value(json!({"deviceId": device, "message": message})).unwrap())
    }

    fn step(name: &str, params: Value) -> TransformStep {
        TransformStep {
            name: name.into(),
            params,
        }
    }

    #[test]
    fn identical_subscriptions_share_a_registration_until_the_last_leaves() {
        let mut r = registry();
        let (a, b) = (Sid::new(), Sid::new());
        let p = json!({"deviceIds": ["d1"]});
        r.subscribe(a, "default", &p, &[], &all()).unwrap();
        r.subscribe(b, "default", &p, &[], &all()).unwrap();
        assert_eq!(r.counts()["default"], 1);
        assert_eq!(r.clients_of("default").len(), 2);
        assert!(r.unsubscribe(a));
        assert!(!r.unsubscribe(a));
        assert_eq!(r.params_of("default").len(), 1);
        r.unsubscribe(b);
        assert!(r.params_of("default").is_empty());
        assert!(r.counts().is_empty());
    }

    #[test]
    fn a_refused_subscription_keeps_the_previous_one() {
        let mut r = registry();
        let a = Sid::new();
        r.subscribe(a, "default", &json!({"deviceIds": ["d1"]}), &[], &all())
            .unwrap();
        let e = r
            .subscribe(a, "default", &json!({"levels": ["LOUD"]}), &[], &all())
            .unwrap_err();
        assert_eq!(e.to_client().code, Code::InvalidParams);
        let e = r.subscribe(a, "nope", &json!({}), &[], &all()).unwrap_err();
        assert_eq!(e.to_client().field.as_deref(), Some("filter"));
        let e = r
            .subscribe(
                a,
                "default",
                &json!({}),
                &[step("shout", json!({"bad": true}))],
                &all(),
            )
            .unwrap_err();
        assert_eq!(e.to_client().code, Code::InvalidTransform);
        assert_eq!(
            r.params_of("default").len(),
            1,
            "the failed chain left no registration"
        );
        let mut out = Vec::new();
        let batch = [record("d1", "x"), record("d2", "y")];
        assert!(r.evaluate(&batch, &mut out).is_empty());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].entries, [0]);
    }

    #[test]
    fn chains_transform_what_the_filter_matched() {
        let mut r = registry();
        let a = Sid::new();
        r.subscribe(
            a,
            "default",
            &json!({}),
            &[step("shout", json!({}))],
            &all(),
        )
        .unwrap();
        let batch = [record("d1", "quiet")];
        let mut out = Vec::new();
        r.evaluate(&batch, &mut out);
        let logs = r.deliverable(&out[0], &batch).unwrap();
        assert_eq!(logs[0].message, "QUIET");
        assert_eq!(r.clients(out[0].registration), [a]);
        assert_eq!(r.counts()["shout"], 1);
    }

    #[test]
    fn a_scope_narrows_what_a_plugin_matched_and_keeps_registrations_apart() {
        let mut r = registry();
        let (a, b) = (Sid::new(), Sid::new());
        let plant_a = Arc::new(Scope::parse(&["plant-a/*".to_owned()]).unwrap());
        r.subscribe(a, "default", &json!({}), &[], &plant_a)
            .unwrap();
        r.subscribe(b, "default", &json!({}), &[], &all()).unwrap();
        assert_eq!(
            r.params_of("default").len(),
            2,
            "one registration per scope"
        );
        let batch = [record("plant-a/1", "x"), record("plant-b/1", "y")];
        let mut out = Vec::new();
        r.evaluate(&batch, &mut out);
        for m in &out {
            let devices: Vec<String> = r
                .deliverable(m, &batch)
                .unwrap()
                .iter()
                .map(|l| l.device_id.clone())
                .collect();
            if r.clients(m.registration) == [a] {
                assert_eq!(devices, ["plant-a/1"]);
            } else {
                assert_eq!(devices, ["plant-a/1", "plant-b/1"]);
            }
        }
        assert_eq!(r.subscription_of(a).unwrap().0, "default");
    }

    #[test]
    fn what_a_transform_returns_is_held_to_the_scope_and_keeps_its_offset() {
        use crate::log_entry::{Position, Stamp};
        let mut r = registry();
        r.install("relabel", Plugin::Transform(Box::new(Relabel)));
        let (a, b) = (Sid::new(), Sid::new());
        let plant_a = Arc::new(Scope::parse(&["plant-a/*".to_owned()]).unwrap());
        r.subscribe(
            a,
            "default",
            &json!({}),
            &[step("relabel", json!({}))],
            &plant_a,
        )
        .unwrap();
        r.subscribe(
            b,
            "default",
            &json!({}),
            &[step("shout", json!({}))],
            &all(),
        )
        .unwrap();
        let batch = [record("plant-a/1", "x")];
        let _ = batch[0]
            .stamp
            .set(Stamp::new("e", Position { major: 7, minor: 0 }));
        let mut out = Vec::new();
        r.evaluate(&batch, &mut out);
        for m in &out {
            let logs = r.deliverable(m, &batch).unwrap();
            if r.clients(m.registration) == [a] {
                assert!(logs.is_empty(), "plant-b/9 is outside plant-a/*");
            } else {
                assert_eq!(logs[0].message, "X");
                assert_eq!(logs[0].stamp.get().unwrap().position.major, 7);
            }
        }
    }

    #[test]
    fn a_name_changing_role_leaves_the_other_role_and_ends_its_users() {
        let mut r = registry();
        let (a, b) = (Sid::new(), Sid::new());
        r.subscribe(
            a,
            "default",
            &json!({}),
            &[step("shout", json!({}))],
            &all(),
        )
        .unwrap();
        r.subscribe(b, "default", &json!({"deviceIds": ["x"]}), &[], &all())
            .unwrap();
        // `shout` becomes a filter: the chain that used it as a transform ends.
        let ended = r.install("shout", Plugin::Filter(Box::new(NativeDefault::default())));
        assert_eq!(ended, [a]);
        assert!(r.is_filter("shout") && !r.is_transform("shout"));
        let e = r
            .subscribe(
                a,
                "default",
                &json!({}),
                &[step("shout", json!({}))],
                &all(),
            )
            .unwrap_err();
        assert_eq!(e.to_client().code, Code::UnknownTransform);
        // `default` becomes a transform: its filter registrations end.
        let ended = r.install("default", Plugin::Transform(Box::new(Shout)));
        assert_eq!(ended, [b]);
        assert!(!r.is_filter("default") && r.is_transform("default"));
        assert!(r.counts().is_empty());
        // Removal ends users in either role.
        r.subscribe(
            a,
            "shout",
            &json!({}),
            &[step("default", json!({}))],
            &all(),
        )
        .unwrap();
        assert_eq!(r.remove_plugin("default"), [a]);
        assert!(!r.is_transform("default"));
    }
}
