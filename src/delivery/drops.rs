//! Drops not yet reported to the client, by reason. Every log matched for a client but not
//! delivered is counted here when it is dropped (and in the instance's metrics), and leaves
//! only when a `log:dropped { count, reason }` carrying it is in the socket's queue: a report
//! the socket refuses is counted again ([`DropCounts::add`] from the refusal), so no count
//! is lost.

use super::packet::{Data, Packet, to_raw};
use crate::protocol::{DropReason, Dropped, event};

#[derive(Debug, Default)]
pub struct DropCounts {
    /// Indexed like [`DropReason::ALL`].
    unreported: [u64; DropReason::ALL.len()],
}

impl DropCounts {
    pub fn add(&mut self, reason: DropReason, count: u64) {
        self.unreported[reason as usize] += count;
    }

    /// Whether anything waits to be reported.
    pub fn any(&self) -> bool {
        self.unreported.iter().any(|n| *n > 0)
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        self.unreported[reason as usize]
    }

    /// The `log:dropped` report of `reason`, if there is anything to report. Call
    /// [`DropCounts::reported`] once the socket has taken it.
    pub fn report(&self, reason: DropReason) -> Option<Packet> {
        let count = self.get(reason);
        if count == 0 {
            return None;
        }
        let raw = to_raw(&Dropped { count, reason })?;
        let mut packet = Packet::event(event::DROPPED, Data::Owned(raw));
        // Counted again if the socket refuses it.
        packet.report = Some((reason, count));
        Some(packet)
    }

    /// The report of `reason` made by [`DropCounts::report`] is on its way.
    pub fn reported(&mut self, reason: DropReason) {
        self.unreported[reason as usize] = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_carries_the_count_and_clears_it_only_once_taken() {
        let mut drops = DropCounts::default();
        assert!(!drops.any() && drops.report(DropReason::RateLimit).is_none());
        drops.add(DropReason::RateLimit, 3);
        drops.add(DropReason::RateLimit, 2);
        let packet = drops.report(DropReason::RateLimit).unwrap();
        assert_eq!(packet.event, event::DROPPED);
        assert_eq!(packet.report, Some((DropReason::RateLimit, 5)));
        let shown: Dropped = serde_json::from_str(packet.json().unwrap().get()).unwrap();
        assert_eq!((shown.count, shown.reason), (5, DropReason::RateLimit));
        assert!(drops.any(), "not cleared until taken");
        drops.reported(DropReason::RateLimit);
        assert!(!drops.any());
    }
}
