//! When each batch-mode client's outbox is due, ordered by time.
//!
//! Why a heap and not a sweep: with thousands of `batch: true` clients, checking every waiting
//! outbox on a fixed tick is O(clients) work on the router thread several times per window,
//! and a tick also adds up to its period to every batch's latency. Here the router sleeps
//! until the earliest deadline and touches only the outboxes that are due.
//!
//! A client has at most one live entry (the one in `due`); entries left in the heap by a
//! rescheduled or departed client are skipped when they surface.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

use socketioxide::socket::Sid;

#[derive(Default)]
pub struct Outboxes {
    heap: BinaryHeap<Reverse<(Instant, Sid)>>,
    due: HashMap<Sid, Instant>,
}

impl Outboxes {
    /// Make sure `sid` is looked at by `at` (an earlier deadline already set stands).
    pub fn schedule(&mut self, sid: Sid, at: Instant) {
        match self.due.get(&sid) {
            Some(&set) if set <= at => {}
            _ => {
                self.due.insert(sid, at);
                self.heap.push(Reverse((at, sid)));
            }
        }
    }

    /// Forget `sid` (it left); its heap entry is skipped later.
    pub fn remove(&mut self, sid: &Sid) {
        self.due.remove(sid);
    }

    /// The earliest deadline, if any client waits.
    pub fn next_due(&mut self) -> Option<Instant> {
        self.skip_stale();
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// A client whose deadline has passed by `now`, unscheduled (schedule it again if its
    /// outbox still waits).
    pub fn pop_due(&mut self, now: Instant) -> Option<Sid> {
        self.skip_stale();
        let Reverse((at, _)) = self.heap.peek()?;
        if *at > now {
            return None;
        }
        let Reverse((_, sid)) = self.heap.pop()?;
        self.due.remove(&sid);
        Some(sid)
    }

    /// Every waiting client, unscheduled.
    pub fn take_all(&mut self) -> Vec<Sid> {
        self.heap.clear();
        self.due.drain().map(|(sid, _)| sid).collect()
    }

    fn skip_stale(&mut self) {
        while let Some(Reverse((at, sid))) = self.heap.peek() {
            if self.due.get(sid) == Some(at) {
                return;
            }
            self.heap.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn only_due_clients_come_out_in_deadline_order_and_stale_entries_are_skipped() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let (a, b, c) = (Sid::new(), Sid::new(), Sid::new());
        let mut o = Outboxes::default();
        o.schedule(a, t0 + ms(30));
        o.schedule(b, t0 + ms(10));
        o.schedule(c, t0 + ms(20));
        // An earlier deadline replaces a later one; a later one does not move it.
        o.schedule(a, t0 + ms(5));
        o.schedule(b, t0 + ms(50));
        o.remove(&c);
        assert_eq!(o.next_due(), Some(t0 + ms(5)));
        assert_eq!(o.pop_due(t0), None, "nothing is due yet");
        assert_eq!(o.pop_due(t0 + ms(40)), Some(a));
        assert_eq!(o.pop_due(t0 + ms(40)), Some(b));
        assert_eq!(
            o.pop_due(t0 + ms(40)),
            None,
            "c left, a's old entry is stale"
        );
        assert_eq!(o.next_due(), None, "nothing left");
    }

    #[test]
    fn take_all_empties_the_schedule() {
        let t0 = Instant::now();
        let mut o = Outboxes::default();
        let a = Sid::new();
        o.schedule(a, t0);
        assert_eq!(o.take_all(), vec![a]);
        assert_eq!(o.next_due(), None);
        assert_eq!(o.pop_due(t0 + Duration::from_secs(1)), None);
    }
}
