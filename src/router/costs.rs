//! What subscriptions cost, and who may not subscribe for a while.
//!
//! A subscription costs the bytes of its params and transform chain: at most
//! `max_subscription_bytes` each, and `max_user_subscription_bytes` for all of one user's
//! connections together. A subscription whose params made a filter fail (found by triage) has
//! its user's subscriptions to that filter refused for [`FAILURE_COOL_DOWN`]: params varied
//! by a character are not a new chance.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use socketioxide::socket::Sid;

use crate::protocol::{ClientError, Code};
use crate::subscription::SubscribeRequest;

/// How long a user's subscriptions to a filter their subscription made fail are refused.
pub const FAILURE_COOL_DOWN: Duration = Duration::from_secs(600);

pub struct SubscriptionCosts {
    /// What each subscribed client's subscription costs, and whose it is.
    by_client: HashMap<Sid, (String, usize)>,
    /// Each user's total.
    by_user: HashMap<String, usize>,
    max_subscription_bytes: usize,
    max_user_subscription_bytes: usize,
    /// (user, filter) refused until the instant (pruned on the tick).
    cooling_down: HashMap<(String, String), Instant>,
}

impl SubscriptionCosts {
    pub fn new(max_subscription_bytes: usize, max_user_subscription_bytes: usize) -> Self {
        SubscriptionCosts {
            by_client: HashMap::new(),
            by_user: HashMap::new(),
            max_subscription_bytes,
            max_user_subscription_bytes,
            cooling_down: HashMap::new(),
        }
    }

    /// What `request` costs (bytes of params and chain), if within the caps for one
    /// subscription and for `user` (the client's other subscriptions included), and if the
    /// user is not cooling down on its filter.
    pub fn admit(
        &self,
        sid: Sid,
        user: &str,
        request: &SubscribeRequest,
        now: Instant,
    ) -> Result<usize, ClientError> {
        if let Some(until) = self
            .cooling_down
            .get(&(user.to_owned(), request.filter.clone()))
            && now < *until
        {
            return Err(ClientError::new(
                Code::SubscriptionTooCostly,
                format!(
                    "a subscription of yours made filter `{}` fail recently; try again in {} s",
                    request.filter,
                    until.saturating_duration_since(now).as_secs().max(1)
                ),
            )
            .for_filter(&request.filter));
        }
        let cost = request.params.to_string().len()
            + request
                .transform
                .iter()
                .map(|t| t.name.len() + t.params.to_string().len())
                .sum::<usize>();
        if cost > self.max_subscription_bytes {
            return Err(ClientError::new(
                Code::SubscriptionTooCostly,
                format!(
                    "this subscription weighs {cost} bytes; max_subscription_bytes is {}",
                    self.max_subscription_bytes
                ),
            ));
        }
        let current = self.by_client.get(&sid).map_or(0, |(_, c)| *c);
        let total = self.of_user(user) - current + cost;
        if total > self.max_user_subscription_bytes {
            return Err(ClientError::new(
                Code::SubscriptionTooCostly,
                format!(
                    "your subscriptions would weigh {total} bytes together; max_user_subscription_bytes is {}",
                    self.max_user_subscription_bytes
                ),
            ));
        }
        Ok(cost)
    }

    /// What `user`'s subscriptions cost together.
    pub fn of_user(&self, user: &str) -> usize {
        self.by_user.get(user).copied().unwrap_or(0)
    }

    /// Charge `sid` (of `user`) `cost` for its subscription, replacing what it was charged
    /// before.
    pub fn charge(&mut self, sid: Sid, user: &str, cost: usize) {
        self.release(sid);
        if cost > 0 {
            self.by_client.insert(sid, (user.to_owned(), cost));
            *self.by_user.entry(user.to_owned()).or_default() += cost;
        }
    }

    /// `sid` holds no subscription any more.
    pub fn release(&mut self, sid: Sid) {
        if let Some((user, old)) = self.by_client.remove(&sid)
            && let Some(total) = self.by_user.get_mut(&user)
        {
            *total = total.saturating_sub(old);
            if *total == 0 {
                self.by_user.remove(&user);
            }
        }
    }

    /// `user`'s subscription made `filter` fail: refuse their subscriptions to it for a
    /// while.
    pub fn cool_down(&mut self, user: &str, filter: &str, now: Instant) {
        self.cooling_down.insert(
            (user.to_owned(), filter.to_owned()),
            now + FAILURE_COOL_DOWN,
        );
    }

    /// Forget cool-downs that are over.
    pub fn prune(&mut self, now: Instant) {
        self.cooling_down.retain(|_, until| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(params: serde_json::Value) -> SubscribeRequest {
        SubscribeRequest::parse(
            serde_json::json!({"filter": "regex", "params": params}),
            1000,
        )
        .unwrap()
    }

    #[test]
    fn one_subscription_and_one_users_together_are_capped() {
        let mut costs = SubscriptionCosts::new(100, 140);
        let now = Instant::now();
        let (a, b) = (Sid::new(), Sid::new());
        let small = request(serde_json::json!({"pattern": "x".repeat(60)}));
        let cost = costs.admit(a, "u", &small, now).unwrap();
        costs.charge(a, "u", cost);
        // Replacing a's own subscription does not count it twice.
        assert_eq!(costs.admit(a, "u", &small, now), Ok(cost));
        let err = costs.admit(b, "u", &small, now).unwrap_err();
        assert!(
            err.message.contains("max_user_subscription_bytes"),
            "{err:?}"
        );
        assert!(costs.admit(b, "other", &small, now).is_ok(), "per user");
        let big = request(serde_json::json!({"pattern": "x".repeat(200)}));
        let err = costs.admit(b, "other", &big, now).unwrap_err();
        assert!(err.message.contains("max_subscription_bytes"), "{err:?}");
        costs.release(a);
        assert_eq!(costs.of_user("u"), 0);
    }

    #[test]
    fn a_cool_down_refuses_the_users_filter_until_it_ends() {
        let mut costs = SubscriptionCosts::new(1000, 1000);
        let now = Instant::now();
        costs.cool_down("u", "regex", now);
        let r = request(serde_json::json!({"pattern": "y"}));
        assert_eq!(
            costs.admit(Sid::new(), "u", &r, now).unwrap_err().code,
            Code::SubscriptionTooCostly
        );
        assert!(costs.admit(Sid::new(), "v", &r, now).is_ok());
        let later = now + FAILURE_COOL_DOWN + Duration::from_secs(1);
        assert!(costs.admit(Sid::new(), "u", &r, later).is_ok());
        costs.prune(later);
        assert!(costs.cooling_down.is_empty());
    }
}
