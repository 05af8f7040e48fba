//! The matching seam: a [`FilterEngine`] owns a set of subscriptions and, given a batch of
//! logs, says which entries each subscription receives.
//!
//! The shape follows the cost of crossing into WebAssembly (see `wit/` and `BENCHMARKS.md`):
//! one call per batch for *all* of an engine's subscriptions, never one call per log per
//! client. The engine registers each subscription once with its JSON params, so it can
//! validate them, precompile them, and index them (by device, by level) so that cost grows
//! with matches rather than with subscribers.
//!
//! Implementations: [`native::NativeDefault`], the reference semantics in plain Rust (kept for
//! tests and benchmarks), and the wasm plugin host in [`crate::plugins`].

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

/// Why an evaluation failed. Any failure means the engine's instance is suspect.
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

/// Why a registration was refused.
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
    /// `Some(reason)` once the engine has given up; its subscriptions must be ended.
    fn disabled(&self) -> Option<&str> {
        None
    }
}
