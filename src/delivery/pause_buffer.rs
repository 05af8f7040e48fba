//! Logs kept for a client that paused (or whose replay is under way), oldest first, bounded
//! in logs and in bytes. What does not fit is counted by the caller as `pause_overflow`; the
//! newest logs are the ones refused, so what is kept has no gap.
//!
//! The records are shared with history and every other client, so the buffer costs this
//! client only its references; the byte bound keeps one client from pinning records that
//! history has already let go.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::auth::Scope;
use crate::log_entry::LogRecord;

pub struct PauseBuffer {
    logs: VecDeque<Arc<LogRecord>>,
    /// Bytes of the kept logs' JSON.
    bytes: usize,
    max_logs: usize,
    max_bytes: usize,
}

impl PauseBuffer {
    pub fn new(max_logs: usize, max_bytes: usize) -> PauseBuffer {
        PauseBuffer {
            logs: VecDeque::new(),
            bytes: 0,
            max_logs,
            max_bytes,
        }
    }

    /// Keep `logs` in order, while they fit; returns how many did not (once one does not
    /// fit, none after it is kept).
    pub fn keep(&mut self, logs: impl IntoIterator<Item = Arc<LogRecord>>) -> u64 {
        let mut overflow = 0u64;
        for log in logs {
            let size = log.json.get().len();
            if overflow == 0
                && self.logs.len() < self.max_logs
                && self.bytes + size <= self.max_bytes
            {
                self.bytes += size;
                self.logs.push_back(log);
            } else {
                overflow += 1;
            }
        }
        overflow
    }

    /// Everything kept, oldest first; the buffer is empty afterwards.
    pub fn take_all(&mut self) -> Vec<Arc<LogRecord>> {
        self.bytes = 0;
        self.logs.drain(..).collect()
    }

    pub fn clear(&mut self) {
        self.logs.clear();
        self.bytes = 0;
    }

    /// Forget the logs of devices `scope` excludes; returns how many.
    pub fn retain_scope(&mut self, scope: &Scope) -> usize {
        let before = self.logs.len();
        self.logs.retain(|l| scope.matches(&l.device_id));
        self.bytes = self.logs.iter().map(|l| l.json.get().len()).sum();
        before - self.logs.len()
    }

    pub fn len(&self) -> usize {
        self.logs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.logs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(message: &str) -> Arc<LogRecord> {
        Arc::new(
            LogRecord::from_value(serde_json::json!({"deviceId": "d", "message": message}))
                .unwrap(),
        )
    }

    #[test]
    fn bounded_in_logs_keeping_the_oldest() {
        let mut b = PauseBuffer::new(2, usize::MAX);
        assert_eq!(b.keep(["a", "b", "c"].map(log)), 1);
        let kept: Vec<String> = b
            .take_all()
            .iter()
            .map(|l| l.json.get().to_owned())
            .collect();
        assert!(
            kept[0].contains("\"a\"") && kept[1].contains("\"b\""),
            "{kept:?}"
        );
        assert!(b.is_empty());
    }

    #[test]
    fn bounded_in_bytes_and_nothing_after_the_first_that_does_not_fit() {
        let big = log(&"m".repeat(1000));
        let small = log("s");
        let mut b = PauseBuffer::new(100, 2 * big.json.get().len() + 10);
        let overflow = b.keep([big.clone(), big.clone(), big.clone(), small]);
        assert_eq!(
            (b.len(), overflow),
            (2, 2),
            "no gap: the small one is not kept"
        );
        b.clear();
        assert_eq!(b.keep([big.clone(), big]), 0, "room again once cleared");
    }

    #[test]
    fn a_narrower_scope_forgets_other_devices() {
        let mut b = PauseBuffer::new(100, usize::MAX);
        let on = |d: &str| {
            Arc::new(
                LogRecord::from_value(serde_json::json!({"deviceId": d, "message": "x"})).unwrap(),
            )
        };
        b.keep([on("a/1"), on("b/1"), on("a/2")]);
        let scope = Scope::parse(&["a/*".to_owned()]).unwrap();
        assert_eq!(b.retain_scope(&scope), 1);
        assert_eq!(b.len(), 2);
    }
}
