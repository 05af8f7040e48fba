//! Subscriptions as the router sees them: which engine, which registration, which clients.
//!
//! Identical subscriptions (same filter, same params, same transform chain) share one
//! registration, so a thousand dashboards watching the same device cost the engine one
//! subscription, and a transformed entry is built once for all of them.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;
use socketioxide::socket::Sid;

use crate::filter::{AddError, FilterEngine, RegistrationId};
use crate::plugins::transform::WasmTransform;
use crate::subscription::TransformStep;

pub struct Registration {
    pub filter: String,
    /// The params as registered with the filter engine.
    pub params: String,
    /// Transforms applied in order to what the filter matched: (name, params).
    pub chain: Vec<(String, String)>,
    /// `params` and `chain` together: what makes two subscriptions identical.
    key: String,
    pub clients: Vec<Sid>,
}

/// The engines by filter name and the live registrations.
#[derive(Default)]
pub struct Registry {
    pub engines: BTreeMap<String, Box<dyn FilterEngine>>,
    pub transforms: BTreeMap<String, WasmTransform>,
    pub registrations: HashMap<RegistrationId, Registration>,
    by_key: HashMap<(String, String), RegistrationId>,
    /// Which registration each subscribed client belongs to.
    pub client_registration: HashMap<Sid, RegistrationId>,
    next_id: RegistrationId,
}

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
    #[error("not connected")]
    NotConnected,
}

impl SubscribeError {
    pub fn code(&self) -> &'static str {
        match self {
            SubscribeError::UnknownFilter { .. } => "unknown_filter",
            SubscribeError::Rejected { .. } => "invalid_params",
            SubscribeError::Unavailable { .. } => "filter_unavailable",
            SubscribeError::UnknownTransform { .. } => "unknown_transform",
            SubscribeError::TransformRejected { .. } => "invalid_transform",
            SubscribeError::NotConnected => "not_connected",
        }
    }
}

impl Registry {
    pub fn with_engine(mut self, name: &str, engine: Box<dyn FilterEngine>) -> Self {
        self.engines.insert(name.to_owned(), engine);
        self
    }

    /// Move `sid` to the registration for (`filter`, `params`), creating it if needed.
    /// Check every step of a chain: the transform exists and accepts its params.
    fn check_chain(
        &mut self,
        chain: &[TransformStep],
    ) -> Result<Vec<(String, String)>, SubscribeError> {
        let loaded = self
            .transforms
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        chain
            .iter()
            .map(|step| {
                let params = step.params.to_string();
                let transform = self.transforms.get_mut(&step.name).ok_or_else(|| {
                    SubscribeError::UnknownTransform {
                        name: step.name.clone(),
                        loaded: if loaded.is_empty() {
                            "none".into()
                        } else {
                            loaded.clone()
                        },
                    }
                })?;
                transform.validate(&params).map_err(|e| match e {
                    AddError::Rejected(message) => SubscribeError::TransformRejected {
                        transform: step.name.clone(),
                        message,
                    },
                    AddError::Unavailable(message) => SubscribeError::Unavailable {
                        filter: step.name.clone(),
                        message,
                    },
                })?;
                Ok((step.name.clone(), params))
            })
            .collect()
    }

    /// Move `sid` to the registration for (`filter`, `params`, `chain`), creating it if
    /// needed. On error the client's previous subscription is untouched.
    pub fn subscribe(
        &mut self,
        sid: Sid,
        filter: &str,
        params: &Value,
        chain: &[TransformStep],
    ) -> Result<(), SubscribeError> {
        let params_text = params.to_string();
        let chain_text = serde_json::to_string(chain).unwrap_or_default();
        let key = (filter.to_owned(), format!("{params_text}|{chain_text}"));
        let id = match self.by_key.get(&key) {
            Some(id) => *id,
            None => {
                let loaded = self.engines.keys().cloned().collect::<Vec<_>>().join(", ");
                let engine = self
                    .engines
                    .get_mut(filter)
                    .ok_or(SubscribeError::UnknownFilter {
                        name: filter.to_owned(),
                        loaded,
                    })?;
                self.next_id += 1;
                let id = self.next_id;
                engine.add(id, &params_text).map_err(|e| match e {
                    AddError::Rejected(message) => SubscribeError::Rejected {
                        filter: filter.to_owned(),
                        message,
                    },
                    AddError::Unavailable(message) => SubscribeError::Unavailable {
                        filter: filter.to_owned(),
                        message,
                    },
                })?;
                let checked = match self.check_chain(chain) {
                    Ok(c) => c,
                    Err(e) => {
                        if let Some(engine) = self.engines.get_mut(filter) {
                            engine.remove(id);
                        }
                        return Err(e);
                    }
                };
                self.registrations.insert(
                    id,
                    Registration {
                        filter: filter.to_owned(),
                        params: params_text.clone(),
                        chain: checked,
                        key: key.1.clone(),
                        clients: Vec::new(),
                    },
                );
                self.by_key.insert(key, id);
                id
            }
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

    /// Detach `sid`; a registration left without clients is removed from its engine.
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
            self.by_key.remove(&(reg.filter.clone(), reg.key));
            if let Some(engine) = self.engines.get_mut(&reg.filter) {
                engine.remove(id);
            }
        }
        true
    }

    /// End every registration `doomed` picks; returns the clients that were subscribed.
    fn drop_where(&mut self, doomed: impl Fn(&Registration) -> bool) -> Vec<Sid> {
        let ids: Vec<RegistrationId> = self
            .registrations
            .iter()
            .filter(|(_, r)| doomed(r))
            .map(|(id, _)| *id)
            .collect();
        let mut clients = Vec::new();
        for id in ids {
            if let Some(reg) = self.registrations.remove(&id) {
                self.by_key.remove(&(reg.filter.clone(), reg.key));
                if let Some(engine) = self.engines.get_mut(&reg.filter) {
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

    /// End every registration of `filter`; returns the clients that were subscribed.
    pub fn drop_filter(&mut self, filter: &str) -> Vec<Sid> {
        self.drop_where(|r| r.filter == filter)
    }

    /// The live registrations of `filter`, with their params.
    pub fn params_of(&self, filter: &str) -> Vec<(RegistrationId, String)> {
        self.registrations
            .iter()
            .filter(|(_, r)| r.filter == filter)
            .map(|(id, r)| (*id, r.params.clone()))
            .collect()
    }

    /// End every registration whose chain uses `transform`; returns their clients.
    pub fn drop_transform_users(&mut self, transform: &str) -> Vec<Sid> {
        self.drop_where(|r| r.chain.iter().any(|(name, _)| name == transform))
    }

    /// Clients subscribed through `filter`.
    pub fn clients_of(&self, filter: &str) -> Vec<Sid> {
        self.registrations
            .values()
            .filter(|r| r.filter == filter)
            .flat_map(|r| r.clients.iter().copied())
            .collect()
    }

    /// Registrations per filter name.
    pub fn counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for reg in self.registrations.values() {
            *counts.entry(reg.filter.clone()).or_default() += 1;
        }
        counts
    }
}
