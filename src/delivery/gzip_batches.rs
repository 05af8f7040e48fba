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
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::log_entry::LogRecord;

/// Batches kept for sharing.
const KEPT: usize = 32;

/// gzip level 2 (zlib-rs): level 1 there is "quick" deflate with fixed Huffman codes, a
/// quarter more bytes on log batches; above 2 the gain is 1–3% for up to twice the time
/// (BENCHMARKS.md §10).
const LEVEL: u32 = 2;

#[derive(Default)]
pub struct GzipBatches {
    state: Mutex<State>,
    compressed: std::sync::atomic::AtomicU64,
    shared: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct State {
    recent: VecDeque<(Vec<Arc<LogRecord>>, Bytes)>,
    /// One compressor, reset for each batch: setting one up allocates and clears ~256 KiB
    /// of tables, several times the cost of compressing a batch of ten logs.
    compressor: Option<flate2::Compress>,
    /// The JSON array being compressed (reused).
    json: Vec<u8>,
}

/// The gzip of `input`, with `compressor` reset first.
fn gzip(compressor: &mut flate2::Compress, input: &[u8]) -> Vec<u8> {
    compressor.reset();
    let mut out = Vec::with_capacity(input.len() / 2 + 64);
    let start = compressor.total_in();
    loop {
        let consumed = (compressor.total_in() - start) as usize;
        match compressor.compress_vec(&input[consumed..], &mut out, flate2::FlushCompress::Finish) {
            Ok(flate2::Status::StreamEnd) => return out,
            // Out of room: more, and go on.
            Ok(_) => out.reserve(out.capacity().max(64)),
            // Compressing into memory does not fail; were it to, an empty gzip would
            // not inflate and the client would say so.
            Err(_) => return Vec::new(),
        }
    }
}

/// Whether `kept` holds the very records of `logs`, in order.
fn same_records(kept: &[Arc<LogRecord>], logs: &[&Arc<LogRecord>]) -> bool {
    kept.len() == logs.len() && kept.iter().zip(logs).all(|(k, l)| Arc::ptr_eq(k, l))
}

impl GzipBatches {
    /// The gzip of `[log, log, …]` (the logs' own JSON joined), compressed once for every
    /// client sent these logs.
    pub fn compress(&self, logs: &[&Arc<LogRecord>]) -> Bytes {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let State {
            recent,
            compressor,
            json,
        } = &mut *state;
        if let Some((_, bytes)) = recent.iter().find(|(k, _)| same_records(k, logs)) {
            self.shared
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return bytes.clone();
        }
        json.clear();
        json.push(b'[');
        for (i, log) in logs.iter().enumerate() {
            if i > 0 {
                json.push(b',');
            }
            json.extend_from_slice(log.json.get().as_bytes());
        }
        json.push(b']');
        let compressor = compressor
            .get_or_insert_with(|| flate2::Compress::new_gzip(flate2::Compression::new(LEVEL), 15));
        let bytes = Bytes::from(gzip(compressor, json));
        // A rare huge batch does not keep its buffer.
        if json.capacity() > 1 << 20 {
            *json = Vec::new();
        }
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
    fn a_batch_that_hardly_compresses_comes_out_whole() {
        // Random text compresses to more than the first guess of room (half the input).
        let mut seed = 7u64;
        let noise: String = (0..60_000)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                char::from(b'!' + (seed >> 58) as u8 + ((seed >> 40) % 30) as u8)
            })
            .collect();
        let logs: Vec<_> = noise
            .as_bytes()
            .chunks(3000)
            .map(|c| log(std::str::from_utf8(c).unwrap()))
            .collect();
        let refs: Vec<_> = logs.iter().collect();
        let g = GzipBatches::default();
        for _ in 0..2 {
            let gz = g.compress(&refs);
            let mut text = String::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_string(&mut text)
                .unwrap();
            let back: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(back.as_array().unwrap().len(), 20);
            let last: serde_json::Value = serde_json::from_str(logs[19].json.get()).unwrap();
            assert_eq!(back[19], last);
            // Again with a new batch of the same logs, on the reset compressor.
            g.state.lock().unwrap().recent.clear();
        }
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
