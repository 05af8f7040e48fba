//! The router: how much it evaluates at once, and what subscriptions may cost.

use super::group::{between, config_group, positive};

config_group! {
    /// Evaluation batches and subscription costs.
    pub struct RoutingConfig {
        /// Most logs the router evaluates (and hands to clients) at once when ingest is
        /// backed up; an idle router evaluates whatever has arrived.
        evaluation_batch_max_logs: usize = 256, between(1, 65_536, "");
        /// Largest subscription, in bytes of its params and transform chain (its cost).
        max_subscription_bytes: usize = 64 << 10, positive;
        /// Most subscription bytes one user (`sub`) may hold across all its connections.
        max_user_subscription_bytes: usize = 256 << 10, positive;
    }
}
