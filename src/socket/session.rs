//! Per-socket state that lives in the socket's extensions: who the client is, the connection
//! slot it holds (released when the socket is dropped), and its event budget.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::auth::Claims;
use crate::connections::ConnectionSlot;
use crate::rate_limit::TokenBucket;

pub struct Session {
    pub claims: Claims,
    _slot: ConnectionSlot,
    events: Mutex<EventBudget>,
}

struct EventBudget {
    bucket: TokenBucket,
    last_notice: Option<Instant>,
}

pub enum EventAdmission {
    Allowed,
    /// Refused; `notify` is true at most once a second so a flood is not answered by a flood.
    Refused {
        notify: bool,
    },
}

impl Session {
    pub fn new(claims: Claims, slot: ConnectionSlot, events_per_second: u32) -> Session {
        Session {
            claims,
            _slot: slot,
            events: Mutex::new(EventBudget {
                bucket: TokenBucket::new(
                    events_per_second,
                    events_per_second.saturating_mul(2),
                    Instant::now(),
                ),
                last_notice: None,
            }),
        }
    }

    pub fn admit_event(&self, now: Instant) -> EventAdmission {
        let mut budget = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if budget.bucket.try_take(now) {
            return EventAdmission::Allowed;
        }
        let notify = budget
            .last_notice
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if notify {
            budget.last_notice = Some(now);
        }
        EventAdmission::Refused { notify }
    }
}
