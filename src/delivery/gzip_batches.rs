//! `log:batch` as the gzip of its JSON array, for subscriptions that ask for
//! `encoding: "gzip"` (WebSocket has no permessage-deflate in this stack: tungstenite lacks
//! it). Compressing is the costly part, so a batch is compressed once and the bytes shared
//! by every client sent the same logs in the same order: clients of one subscription whose
//! batch windows line up get identical batches. The last [`KEPT`] batches are kept, keyed by
//! the identity of their records (the `Arc`s every client shares), so a lookup costs a
//! comparison of pointers, never of text. The key holds the `Arc`s themselves: a record kept
//! alive cannot be freed and its address reused by another, which would make a new batch
//! look like an old one.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::log_entry::LogRecord;

/// Batches kept for sharing.
const KEPT: usize = 32;

/// gzip level: the fastest, which on log lines with repeated structure still gives a fifth
/// to a quarter of the JSON's size (BENCHMARKS.md §10).
const LEVEL: u32 = 1;

#[derive(Default)]
pub struct GzipBatches {
    recent: Mutex<VecDeque<(Vec<Arc<LogRecord>>, Bytes)>>,
    compressed: std::sync::atomic::AtomicU64,
    shared: std::sync::atomic::AtomicU64,
}

/// Whether `kept` holds the very records of `logs`, in order.
fn same_records(kept: &[Arc<LogRecord>], logs: &[&Arc<LogRecord>]) -> bool {
    kept.len() == logs.len() && kept.iter().zip(logs).all(|(k, l)| Arc::ptr_eq(k, l))
}

impl GzipBatches {
    /// The gzip of `[log, log, …]` (the logs' own JSON joined), compressed once for every
    /// client sent these logs.
    pub fn compress(&self, logs: &[&Arc<LogRecord>]) -> Bytes {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, bytes)) = recent.iter().find(|(k, _)| same_records(k, logs)) {
            self.shared
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return bytes.clone();
        }
        let json_len: usize = logs.iter().map(|l| l.json.get().len() + 1).sum();
        let mut gz = flate2::write::GzEncoder::new(
            Vec::with_capacity(json_len / 4 + 64),
            flate2::Compression::new(LEVEL),
        );
        // Writing to a Vec cannot fail.
        let _ = gz.write_all(b"[");
        for (i, log) in logs.iter().enumerate() {
            if i > 0 {
                let _ = gz.write_all(b",");
            }
            let _ = gz.write_all(log.json.get().as_bytes());
        }
        let _ = gz.write_all(b"]");
        let bytes = Bytes::from(gz.finish().unwrap_or_default());
        self.compressed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if recent.len() == KEPT {
            recent.pop_front();
        }
        recent.push_back((logs.iter().map(|l| Arc::clone(l)).collect(), bytes.clone()));
        bytes
    }

    /// (batches compressed, batches served from one compressed before).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.compressed.load(std::sync::atomic::Ordering::Relaxed),
            self.shared.load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn log(message: &str) -> Arc<LogRecord> {
        Arc::new(
            LogRecord::from_value(serde_json::json!({"deviceId": "d", "message": message}))
                .unwrap(),
        )
    }

    #[test]
    fn a_batch_is_the_gzip_of_its_array_compressed_once_for_everyone() {
        let g = GzipBatches::default();
        let (a, b, c) = (log("a"), log("b"), log("c"));
        let first = g.compress(&[&a, &b]);
        let mut text = String::new();
        flate2::read::GzDecoder::new(&first[..])
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, format!("[{},{}]", a.json.get(), b.json.get()));
        let again = g.compress(&[&a, &b]);
        assert_eq!(again.as_ptr(), first.as_ptr(), "the same bytes, shared");
        // Other logs, or the same text in other records, are another batch.
        g.compress(&[&a, &c]);
        let (a2, b2) = (log("a"), log("b"));
        g.compress(&[&a2, &b2]);
        assert_eq!(g.counts(), (3, 1));
    }

    #[test]
    fn a_new_record_is_never_taken_for_a_freed_one() {
        let g = GzipBatches::default();
        for i in 0..1000 {
            // Each record is dropped by the caller right after; were the cache keyed by bare
            // addresses, the allocator's reuse of one would serve another log's bytes.
            let r = log(&format!("m{i}"));
            let gz = g.compress(&[&r]);
            let mut text = String::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_string(&mut text)
                .unwrap();
            assert_eq!(text, format!("[{}]", r.json.get()), "batch {i}");
        }
        assert_eq!(g.counts(), (1000, 0));
    }
}
