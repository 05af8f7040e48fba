//! A filter plugin as a [`FilterEngine`]: one long-lived instance that owns its
//! subscriptions, evaluated once per batch.
//!
//! Failure handling: every call runs under the CPU deadline and memory limit of the store.
//! A trap or timeout discards the instance; the next call creates a fresh one and
//! re-registers every subscription. After `max_failures` consecutive failures the plugin is
//! disabled: it answers no more calls and new subscriptions to it are refused with the reason.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::PluginStats;
use super::filter_abi::{FilterInstance, FilterPre, WitBatch};
use super::guard::{Call, Guarded, truncate};
use super::runtime::{Runtime, WitMatches};
use super::triage::Triager;
use crate::engine::{AddError, EngineError, FilterEngine, Matches, RegistrationId, Triage};
use crate::log_entry::LogRecord;

pub struct WasmFilter {
    guard: Guarded<FilterInstance>,
    pre: FilterPre,
    /// Registered params by id, kept to re-register after a restart.
    subs: BTreeMap<RegistrationId, String>,
    /// When the last triage ran: at most one per `TRIAGE_INTERVAL` (each can cost the router
    /// thread many call budgets); a failure meanwhile is handled as before triage.
    last_triage: Option<std::time::Instant>,
}

const TRIAGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

impl WasmFilter {
    pub fn new(
        name: &str,
        runtime: Arc<Runtime>,
        pre: FilterPre,
        max_failures: u32,
        stats: Arc<PluginStats>,
    ) -> WasmFilter {
        WasmFilter {
            guard: Guarded::new(name, runtime, max_failures, stats),
            pre,
            subs: BTreeMap::new(),
            last_triage: None,
        }
    }

    /// The WIT package version the plugin was built for.
    pub fn interface(&self) -> &'static str {
        self.pre.interface()
    }

    /// Create the instance if there is none, and re-register every subscription in it.
    fn ensure_live(&mut self) -> Result<(), EngineError> {
        let pre = &self.pre;
        if !self.guard.ensure(|store| pre.instantiate(store))? {
            return Ok(());
        }
        let subs: Vec<(RegistrationId, String)> =
            self.subs.iter().map(|(k, v)| (*k, v.clone())).collect();
        for (id, params) in subs {
            let answer = self.guard.call(Call::AddSubscription, |s, p| {
                p.add_subscription(s, id, &params)
            })?;
            if let Err(reason) = answer {
                tracing::warn!(plugin = %self.guard.name, id, %reason, "plugin refused a subscription it accepted before; dropping it");
                self.subs.remove(&id);
            }
        }
        Ok(())
    }
}

/// Keep the valid part of a plugin's answer. Trust nothing: unknown ids, indices out of
/// range, disorder and duplicates are dropped and counted.
fn accept(
    subs: &BTreeMap<RegistrationId, String>,
    stats: &PluginStats,
    batch_len: usize,
    answer: Vec<WitMatches>,
    out: &mut Vec<Matches>,
) {
    let n = batch_len as u32;
    for m in answer {
        let valid = subs.contains_key(&m.id)
            && m.entries.windows(2).all(|w| w[0] < w[1])
            && m.entries.last().is_none_or(|last| *last < n);
        if !valid {
            stats.bad_output.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if !m.entries.is_empty() {
            out.push(Matches {
                registration: m.id,
                entries: m.entries,
            });
        }
    }
}

impl FilterEngine for WasmFilter {
    fn add(&mut self, id: RegistrationId, params: &str) -> Result<(), AddError> {
        self.ensure_live()
            .map_err(|e| AddError::Unavailable(e.to_string()))?;
        let answer = self
            .guard
            .call(Call::AddSubscription, |s, p| {
                p.add_subscription(s, id, params)
            })
            .map_err(|e| AddError::Unavailable(e.to_string()))?;
        self.guard.succeeded();
        match answer {
            Ok(()) => {
                self.subs.insert(id, params.to_owned());
                Ok(())
            }
            Err(reason) => Err(AddError::Rejected(truncate(reason))),
        }
    }

    fn remove(&mut self, id: RegistrationId) {
        if self.subs.remove(&id).is_none() || !self.guard.is_live() {
            return;
        }
        let _ = self.guard.call(Call::RemoveSubscription, |s, p| {
            p.remove_subscription(s, id)
        });
    }

    fn evaluate(
        &mut self,
        batch: &[Arc<LogRecord>],
        out: &mut Vec<Matches>,
    ) -> Result<(), EngineError> {
        if self.subs.is_empty() || batch.is_empty() {
            return Ok(());
        }
        self.ensure_live()?;
        let wit = WitBatch::new(batch);
        let answer = self.guard.call(Call::Evaluate, |s, p| p.evaluate(s, &wit));
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                self.guard
                    .stats
                    .logs_failed
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                return Err(e);
            }
        };
        let output_bytes = answer
            .iter()
            .map(|m| 12 + 4 * m.entries.len())
            .sum::<usize>();
        if output_bytes > self.guard.runtime.limits.max_output_bytes {
            self.guard.stats.bad_output.fetch_add(1, Ordering::Relaxed);
            self.guard
                .stats
                .logs_failed
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            let error = EngineError::BadOutput(format!(
                "answer of {output_bytes} bytes is over plugin_max_output_bytes ({})",
                self.guard.runtime.limits.max_output_bytes
            ));
            return Err(self.guard.failed(error));
        }
        self.guard.succeeded();
        accept(&self.subs, &self.guard.stats, batch.len(), answer, out);
        Ok(())
    }

    fn triage(&mut self, batch: &[Arc<LogRecord>], out: &mut Vec<Matches>) -> Triage {
        if self.subs.is_empty() || batch.is_empty() {
            return Triage::default();
        }
        let now = std::time::Instant::now();
        if self
            .last_triage
            .is_some_and(|t| now.duration_since(t) < TRIAGE_INTERVAL)
        {
            return Triage::default();
        }
        self.last_triage = Some(now);
        let wit = WitBatch::new(batch);
        let (subs, stats) = (&self.subs, &self.guard.stats);
        let keep = |answer: Vec<WitMatches>, out: &mut Vec<Matches>| {
            accept(subs, stats, batch.len(), answer, out)
        };
        let triage = Triager {
            name: &self.guard.name,
            runtime: &self.guard.runtime,
            pre: &self.pre,
            stats: &self.guard.stats,
            subs: &self.subs,
            batch: &wit,
            accept: &keep,
        }
        .run(out);
        if triage.attributed() {
            // Not the plugin's fault: its failure streak (and any disabling it caused) ends,
            // and the culprits are forgotten (the live instance was discarded by the failure
            // and is re-created without them).
            for id in &triage.culprits {
                self.subs.remove(id);
            }
            self.guard.forgive();
        }
        triage
    }

    fn disabled(&self) -> Option<&str> {
        self.guard.disabled()
    }

    fn enable(&mut self) -> bool {
        self.guard.enable()
    }

    fn disable(&mut self, reason: &str) -> Option<bool> {
        Some(self.guard.disable(reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Whatever a plugin answers, what is kept names known registrations only, with
        /// strictly ascending indices inside the batch; the rest is counted as bad output.
        #[test]
        fn plugin_answers_are_kept_only_when_valid(
            known in proptest::collection::btree_set(0u64..8, 0..5),
            answer in proptest::collection::vec(
                (0u64..10, proptest::collection::vec(0u32..60, 0..8)),
                0..8,
            ),
            batch_len in 0usize..55,
        ) {
            let subs: BTreeMap<RegistrationId, String> =
                known.iter().map(|id| (*id, "{}".to_owned())).collect();
            let stats = PluginStats::default();
            let wit: Vec<WitMatches> = answer
                .iter()
                .map(|(id, entries)| WitMatches { id: *id, entries: entries.clone() })
                .collect();
            let mut out = Vec::new();
            accept(&subs, &stats, batch_len, wit, &mut out);
            for m in &out {
                prop_assert!(subs.contains_key(&m.registration));
                prop_assert!(!m.entries.is_empty());
                prop_assert!(m.entries.windows(2).all(|w| w[0] < w[1]));
                prop_assert!(m.entries.iter().all(|i| (*i as usize) < batch_len));
            }
            let valid = answer
                .iter()
                .filter(|(id, e)| {
                    subs.contains_key(id)
                        && e.windows(2).all(|w| w[0] < w[1])
                        && e.iter().all(|i| (*i as usize) < batch_len)
                })
                .count() as u64;
            prop_assert_eq!(
                stats.bad_output.load(Ordering::Relaxed),
                answer.len() as u64 - valid
            );
        }
    }
}
