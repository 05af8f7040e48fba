//! The clients the router must come back to, so that no periodic pass walks every client:
//! those with a batch-mode outbox waiting (by when it is due), those over their socket queue
//! bound (checked on the tick, cut past `slow_consumer_timeout_ms`), and those with drops to
//! report (on the tick, at most once a second).

use std::collections::HashSet;
use std::time::Instant;

use socketioxide::socket::Sid;

use super::outboxes::Outboxes;
use crate::delivery::Client;

#[derive(Default)]
pub struct Followups {
    /// Batch-mode clients with logs waiting in their outbox, with when each is due.
    pub outboxes: Outboxes,
    /// Clients over their socket queue bound.
    slow: HashSet<Sid>,
    /// Clients with drops to report.
    reports: HashSet<Sid>,
}

impl Followups {
    /// After `client` was given something to do: note what the router must come back to.
    pub fn note(&mut self, client: &Client) {
        if client.is_over_queue_bound() {
            self.slow.insert(client.sid);
        }
        if client.has_unreported_drops() {
            self.reports.insert(client.sid);
        }
        if let Some(due) = client.outbox_due() {
            self.outboxes.schedule(client.sid, due);
        }
    }

    /// `sid` left.
    pub fn forget(&mut self, sid: &Sid) {
        self.outboxes.remove(sid);
        self.reports.remove(sid);
        self.slow.remove(sid);
    }

    /// The tick's checks of slow clients: each still over stays noted; one cut, caught up
    /// or gone is let go.
    pub fn check_slow(
        &mut self,
        now: Instant,
        clients: &mut std::collections::HashMap<Sid, Client>,
    ) {
        self.slow
            .retain(|sid| clients.get_mut(sid).is_some_and(|c| c.check_slow(now)));
    }

    /// The tick's drop reports: a client whose reports could not all be queued stays noted.
    pub fn report_drops(&mut self, clients: &mut std::collections::HashMap<Sid, Client>) {
        self.reports.retain(|sid| {
            clients.get_mut(sid).is_some_and(|c| {
                c.report_periodic_drops();
                c.has_unreported_drops()
            })
        });
    }
}
