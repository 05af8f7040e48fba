//! When a plugin fails on a batch: who loses what, who is told, and who is ended.
//!
//! A filter call that traps or times out is first triaged (`plugins::triage`): the clients
//! of registrations it clears get their matches; those of the others lose the batch's logs in
//! their scope (`log:dropped`, `plugin_failed`). Culprits triage finds are ended with
//! `subscription_too_costly` and their users cool down on that filter; otherwise every
//! subscriber hears of the failure, and all are ended if the plugin is now disabled. A failed
//! transform drops what it was given (sending it untransformed could leak what a redaction
//! hides).

use std::sync::Arc;
use std::time::Instant;

use super::{Router, costs};
use crate::engine::{EngineError, RegistrationId, Triage};
use crate::log_entry::LogRecord;
use crate::protocol::{ClientError, Code, DropReason};

/// A filter call that failed on a slice of an evaluation batch, and what triage found.
pub(super) struct FailedFilter<'a> {
    pub filter: String,
    pub error: EngineError,
    pub triage: Triage,
    pub slice: &'a [Arc<LogRecord>],
}

/// A transform that failed on one registration's logs, which were therefore not delivered.
pub(super) struct FailedTransform {
    pub registration: RegistrationId,
    /// The transform's name.
    pub step: String,
    pub error: EngineError,
    /// The logs it was given: dropped for the registration's clients.
    pub dropped: u64,
}

impl Router {
    /// A filter failed on a batch. The clients of registrations triage did not clear lose
    /// this batch's logs (`log:dropped`, `plugin_failed`); culprits found by triage are ended
    /// with `subscription_too_costly` and their users cool down on that filter; otherwise
    /// every subscriber hears of the failure, and all are ended if the plugin is now
    /// disabled.
    pub(super) fn filter_failed(&mut self, failed: &FailedFilter) {
        let FailedFilter {
            filter,
            error,
            triage,
            slice: batch,
        } = failed;
        let filter = filter.as_str();
        for id in self.registry.registrations_of(filter) {
            if triage.cleared.contains(&id) {
                continue;
            }
            let Some(scope) = self.registry.scope_of(id) else {
                continue;
            };
            let dropped = batch.iter().filter(|l| scope.matches(&l.device_id)).count() as u64;
            for sid in self.registry.clients(id).to_vec() {
                if let Some(client) = self.clients.get_mut(&sid) {
                    client.drop_and_report(DropReason::PluginFailed, dropped);
                }
            }
        }
        if triage.attributed() {
            let now = Instant::now();
            for id in &triage.culprits {
                for sid in self.registry.clients(*id) {
                    if let Some(client) = self.clients.get(sid) {
                        self.costs.cool_down(&client.info.user_id, filter, now);
                    }
                }
            }
            let sids = self.registry.end_registrations(&triage.culprits);
            tracing::warn!(
                filter,
                ended = sids.len(),
                "subscriptions that made a filter fail were ended"
            );
            let error = ClientError::new(
                Code::SubscriptionTooCostly,
                format!(
                    "your subscription made filter `{filter}` fail ({error}); it was ended, and your subscriptions to `{filter}` are refused for {} s",
                    costs::FAILURE_COOL_DOWN.as_secs()
                ),
            )
            .for_filter(filter);
            self.end_subscriptions(&sids, &error);
            return;
        }
        match self.registry.filter_disabled(filter) {
            Some(reason) => {
                let sids = self.registry.end_filter(filter);
                let error = ClientError::new(
                    Code::FilterDisabled,
                    format!(
                        "filter `{filter}` was disabled ({reason}); subscribe again with another filter"
                    ),
                )
                .for_filter(filter);
                self.end_subscriptions(&sids, &error);
            }
            None => {
                let sids = self.registry.clients_of(filter);
                let error = ClientError::new(
                    Code::PluginFailed,
                    format!(
                        "filter `{filter}` failed on a batch ({error}); it was restarted and those logs were skipped"
                    ),
                )
                .for_filter(filter);
                self.notify(&sids, &error);
            }
        }
    }

    /// A transform failed on one registration's logs: they were not delivered; say so, and
    /// end every chain using it if it is now disabled.
    pub(super) fn transform_failed(&mut self, failed: &FailedTransform) {
        let FailedTransform {
            registration,
            step,
            error,
            dropped,
        } = failed;
        let (registration, step) = (*registration, step.as_str());
        match self.registry.transform_disabled(step) {
            Some(reason) => {
                let sids = self.registry.end_transform_users(step);
                let error = ClientError::new(
                    Code::FilterDisabled,
                    format!(
                        "transform `{step}` was disabled ({reason}); subscribe again without it"
                    ),
                )
                .for_transform(step);
                self.end_subscriptions(&sids, &error);
            }
            None => {
                let sids = self.registry.clients(registration).to_vec();
                let error = ClientError::new(
                    Code::PluginFailed,
                    format!(
                        "transform `{step}` failed ({error}); the logs it was given were not delivered"
                    ),
                )
                .for_transform(step);
                self.notify(&sids, &error);
                for sid in &sids {
                    if let Some(client) = self.clients.get_mut(sid) {
                        client.drop_and_report(DropReason::PluginFailed, *dropped);
                    }
                }
            }
        }
    }
}
