//! The seam between the router and whatever matches and transforms logs: two traits, one per
//! kind of plugin, so the router never names a concrete (WebAssembly) type.
//!
//! - A [`FilterEngine`] owns a set of subscriptions and, given a batch of logs, says which
//!   entries each subscription receives. The shape follows the cost of crossing into
//!   WebAssembly (see `wit/` and `BENCHMARKS.md`): one call per batch for *all* of an engine's
//!   subscriptions, never one call per log per client. The engine registers each subscription
//!   once with its JSON params, so it can validate, precompile and index them.
//! - A [`TransformEngine`] keeps no subscription state: it validates a chain step's params
//!   and, per batch and registration, returns the entries to deliver (changed or fewer).
//!
//! Implementations: [`native::NativeDefault`], the reference semantics of the `default`
//! filter in plain Rust (kept for tests and benchmarks), and the wasm plugin host in
//! the `plugins` module.

pub mod native;

use std::sync::Arc;

use crate::log_entry::LogRecord;

/// Identifies one registration inside one engine. Identical subscriptions share one id.
pub type RegistrationId = u64;

/// One registration's matches in a batch: indices into the batch, ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matches {
    pub registration: RegistrationId,
    pub entries: Vec<u32>,
}

/// Why a call failed. Any failure means the engine's instance is suspect.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("plugin trapped: {0}")]
    Trap(String),
    #[error("plugin exceeded its CPU budget of {0} ms")]
    Timeout(u64),
    #[error("plugin is disabled after repeated failures: {0}")]
    Disabled(String),
    #[error("plugin returned an invalid answer: {0}")]
    BadOutput(String),
}

/// Why a registration (or a transform step's params) was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddError {
    /// The engine looked at the params and said no; the reason is for the client.
    Rejected(String),
    /// The engine could not answer (failed or disabled).
    Unavailable(String),
}

/// A set of subscriptions evaluated together.
pub trait FilterEngine: Send {
    /// Register `params` (a JSON object's text) under `id`. `Err` carries a readable reason
    /// that is shown to the client; the engine's state is unchanged then.
    fn add(&mut self, id: RegistrationId, params: &str) -> Result<(), AddError>;
    /// Forget a registration. Unknown ids are ignored.
    fn remove(&mut self, id: RegistrationId);
    /// Evaluate one batch against every registration; append one [`Matches`] per registration
    /// that has at least one matching entry.
    fn evaluate(
        &mut self,
        batch: &[Arc<LogRecord>],
        out: &mut Vec<Matches>,
    ) -> Result<(), EngineError>;
    /// After [`FilterEngine::evaluate`] failed on `batch`: find the registrations whose
    /// presence makes it fail, and append the matches of the others to `out`. The default
    /// cannot tell (every registration stays unresolved).
    fn triage(&mut self, batch: &[Arc<LogRecord>], out: &mut Vec<Matches>) -> Triage {
        let _ = (batch, out);
        Triage::default()
    }
    /// `Some(reason)` once the engine has given up; its subscriptions must be ended.
    fn disabled(&self) -> Option<&str> {
        None
    }
    /// Serve again after being disabled; returns whether it was disabled.
    fn enable(&mut self) -> bool {
        false
    }
    /// Stop serving until enabled (an operator's decision); returns whether it served.
    /// `None`: this engine cannot be disabled.
    fn disable(&mut self, reason: &str) -> Option<bool> {
        let _ = reason;
        None
    }
}

/// What [`FilterEngine::triage`] found out about a failed batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Triage {
    /// The failure follows these registrations: the batch goes through without any one of
    /// them and fails with it alone. The engine has forgotten them; their subscriptions must
    /// be ended.
    pub culprits: Vec<RegistrationId>,
    /// Evaluated without failing: their matches were appended (nothing of theirs was lost).
    pub cleared: Vec<RegistrationId>,
}

impl Triage {
    /// Whether the failure was put down to subscriptions (not the plugin or the logs).
    pub fn attributed(&self) -> bool {
        !self.culprits.is_empty()
    }
}

/// A stateless step applied after filtering, per registration.
pub trait TransformEngine: Send {
    /// Check the params of one chain step (a JSON object's text).
    fn validate(&mut self, params: &str) -> Result<(), AddError>;
    /// The entries to deliver for `logs` (never more than given).
    fn apply(
        &mut self,
        params: &str,
        logs: &[Arc<LogRecord>],
    ) -> Result<Vec<Arc<LogRecord>>, EngineError>;
    /// `Some(reason)` once the transform has given up; chains using it must be ended.
    fn disabled(&self) -> Option<&str> {
        None
    }
    /// Serve again after being disabled; returns whether it was disabled.
    fn enable(&mut self) -> bool {
        false
    }
    /// Stop serving until enabled (an operator's decision); returns whether it served.
    /// `None`: this engine cannot be disabled.
    fn disable(&mut self, reason: &str) -> Option<bool> {
        let _ = reason;
        None
    }
}

/// A loaded plugin of either kind. A name is one or the other, never both.
pub enum Plugin {
    Filter(Box<dyn FilterEngine>),
    Transform(Box<dyn TransformEngine>),
}

impl Plugin {
    pub fn kind(&self) -> &'static str {
        match self {
            Plugin::Filter(_) => "filter",
            Plugin::Transform(_) => "transform",
        }
    }
}
