//! Finding the subscriptions that make a filter's batch fail, so that only they are ended.
//!
//! Why: a filter evaluates one batch for all its subscriptions at once. When one client's
//! subscription makes that call trap or run out of its CPU budget (a costly pattern, params
//! that hit a bug), the failure would land on every subscriber of the plugin, and three in a
//! row would disable it for everyone. Triage puts the failure where it belongs.
//!
//! How: on a spare instance (never the live one, so the live instance's state and failure
//! count are not touched), first a control run of the batch with no subscriptions. If that
//! fails, the logs or the plugin are at fault and nobody is blamed. Otherwise the
//! registrations are bisected: a set that evaluates cleanly has its matches kept (its clients
//! lose nothing of the batch); a set that fails is split, down to single registrations, which
//! are the culprits. When every registration fails alone, the plugin fails with any
//! subscription at all: nobody is blamed either.
//!
//! Cost: each failing probe uses up to one call budget of CPU, on the router thread (the batch
//! has to be answered before the next one, to keep order). Probes are capped at
//! [`MAX_PROBES`]; what is not resolved by then counts as failed for every subscriber.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use wasmtime::Store;

use super::PluginStats;
use super::filter_abi::{FilterInstance, FilterPre, WitBatch};
use super::runtime::{PluginState, Runtime};
use crate::engine::{Matches, RegistrationId, Triage};

/// Most evaluations one triage makes (the control included). With `k` culprits among `n`
/// registrations bisection needs about `2k·log2(n/k)` probes.
pub const MAX_PROBES: usize = 32;

/// A spare instance and the registrations currently added to it.
struct Spare {
    store: Store<PluginState>,
    plugin: FilterInstance,
}

/// Triage of one failed batch.
pub struct Triager<'a> {
    pub name: &'a Arc<str>,
    pub runtime: &'a Runtime,
    pub pre: &'a FilterPre,
    pub stats: &'a PluginStats,
    pub subs: &'a BTreeMap<RegistrationId, String>,
    pub batch: &'a WitBatch<'a>,
    /// Keeps a valid answer's matches (unknown ids, bad indices dropped); shared with the
    /// live path.
    pub accept: &'a dyn Fn(Vec<super::runtime::WitMatches>, &mut Vec<Matches>),
}

impl Triager<'_> {
    pub fn run(&self, out: &mut Vec<Matches>) -> Triage {
        let started = Instant::now();
        let mut probes = 1;
        let mut spare = match self.fresh() {
            Some(s) => s,
            None => return Triage::default(),
        };
        if self.evaluate(&mut spare).is_none() {
            tracing::warn!(plugin = %self.name, "the batch fails even without subscriptions: nobody is blamed");
            return Triage::default();
        }
        let ids: Vec<RegistrationId> = self.subs.keys().copied().collect();
        let mut triage = Triage::default();
        let mut spare = Some(spare);
        let mut pending: Vec<Vec<RegistrationId>> = halves(ids.clone());
        let mut kept = Vec::new();
        while let Some(set) = pending.pop() {
            if probes >= MAX_PROBES {
                continue;
            }
            probes += 1;
            match self.probe(&mut spare, &set) {
                Some(answer) => {
                    (self.accept)(answer, &mut kept);
                    triage.cleared.extend(set);
                }
                None if set.len() == 1 => triage.culprits.push(set[0]),
                None => pending.extend(halves(set)),
            }
        }
        if triage.culprits.len() == ids.len() && ids.len() > 1 {
            tracing::warn!(plugin = %self.name, "every subscription fails alone: the plugin is at fault, nobody is blamed");
            triage.culprits.clear();
        }
        out.extend(kept);
        self.stats
            .busy_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        tracing::warn!(
            plugin = %self.name,
            probes,
            culprits = ?triage.culprits,
            cleared = triage.cleared.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "triage of a failed batch"
        );
        triage
    }

    /// A new spare instance, warmed up (instantiation and a first, empty evaluation under the
    /// warm-up budget, as the live instance gets).
    fn fresh(&self) -> Option<Spare> {
        let mut store = self.runtime.store(self.name);
        self.runtime.arm(&mut store, self.runtime.warmup_budget());
        let plugin = self.pre.instantiate(&mut store).ok()?;
        let mut spare = Spare { store, plugin };
        self.runtime
            .arm(&mut spare.store, self.runtime.warmup_budget());
        spare
            .plugin
            .evaluate(&mut spare.store, &WitBatch::new(&[]))
            .ok()?;
        Some(spare)
    }

    /// Evaluate the batch on `spare` under the normal budget.
    fn evaluate(&self, spare: &mut Spare) -> Option<Vec<super::runtime::WitMatches>> {
        self.runtime
            .arm(&mut spare.store, self.runtime.limits.call_timeout);
        spare.plugin.evaluate(&mut spare.store, self.batch).ok()
    }

    /// Evaluate the batch with only `set` registered. `None` when any call failed (the spare
    /// is then discarded; the next probe makes a new one).
    fn probe(
        &self,
        spare: &mut Option<Spare>,
        set: &[RegistrationId],
    ) -> Option<Vec<super::runtime::WitMatches>> {
        if spare.is_none() {
            *spare = self.fresh();
        }
        let s = spare.as_mut()?;
        let answer = self.probe_on(s, set);
        if answer.is_none() {
            *spare = None;
        }
        answer
    }

    fn probe_on(
        &self,
        s: &mut Spare,
        set: &[RegistrationId],
    ) -> Option<Vec<super::runtime::WitMatches>> {
        let budget = self.runtime.limits.call_timeout;
        for id in set {
            let params = self.subs.get(id)?;
            self.runtime.arm(&mut s.store, budget);
            s.plugin
                .add_subscription(&mut s.store, *id, params)
                .ok()?
                .ok()?;
        }
        let answer = self.evaluate(s)?;
        for id in set {
            self.runtime.arm(&mut s.store, budget);
            s.plugin.remove_subscription(&mut s.store, *id).ok()?;
        }
        Some(answer)
    }
}

/// `set` split in two (a single registration stays whole).
fn halves(mut set: Vec<RegistrationId>) -> Vec<Vec<RegistrationId>> {
    if set.len() <= 1 {
        return vec![set];
    }
    let second = set.split_off(set.len() / 2);
    vec![set, second]
}

#[cfg(test)]
mod tests {
    use super::halves;

    #[test]
    fn halves_split_down_to_one() {
        assert_eq!(halves(vec![1, 2, 3]), vec![vec![1], vec![2, 3]]);
        assert_eq!(halves(vec![7]), vec![vec![7]]);
        assert_eq!(halves(vec![]), vec![Vec::<u64>::new()]);
    }
}
