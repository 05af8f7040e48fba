//! Publishing once: a publish may carry a key, and a key is published at most once within its
//! lifetime, whichever instance and attempt comes first. `POST /api/logs` with an
//! `Idempotency-Key` (a shipper retrying after a lost answer) and a seed-channel message that
//! every instance reads both publish with one.
//!
//! The key and the logs land together or not at all: on Redis one script checks the key,
//! appends the logs and records the key (atomic in Redis); on the embedded bus one lock covers
//! the check, the hand-off to the router and the record; with the history on disk the writer
//! thread checks and records keys between writes, and writes each key in the frame of its
//! logs, so a retry after a restart is recognised too. So there is no "being published"
//! state that a dead instance could leave behind: a retry either finds the key (its logs are
//! in the bus: 202 `duplicate: true`) or publishes them itself.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How long an `Idempotency-Key` is remembered.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(600);
/// Keys remembered in memory per owner at most (the oldest are forgotten first).
pub const MAX_KEYS_PER_OWNER: usize = 100_000;
/// Longest `Idempotency-Key` accepted.
pub const MAX_KEY_LEN: usize = 128;

/// A key a publish carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishKey {
    /// Whose key it is (an ingest key's name, or the seed channel): two owners' keys never
    /// collide, and one owner cannot push out another's.
    pub owner: String,
    pub key: String,
    /// How long it is remembered once published.
    pub ttl: Duration,
}

impl PublishKey {
    /// Its Redis key, beside the stream: a digest, so that any key text is a safe name.
    pub fn redis_name(&self, stream: &str) -> String {
        let digest: String = Sha256::digest(format!("{}\u{0}{}", self.owner, self.key))
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{stream}:published:{digest}")
    }
}

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// The logs are in the bus now.
    Appended,
    /// Its key was published before (within its lifetime): nothing was appended.
    AlreadyPublished,
}

/// The keys the embedded bus has published, per owner.
#[derive(Default)]
pub struct PublishedKeys {
    owners: Mutex<HashMap<String, Owner>>,
}

#[derive(Default)]
struct Owner {
    until: HashMap<String, Instant>,
    /// Keys in the order they were recorded, to forget the oldest.
    order: VecDeque<(String, Instant)>,
}

impl Owner {
    fn forget_expired(&mut self, now: Instant) {
        while let Some((key, until)) = self.order.front().cloned() {
            if until > now && self.order.len() < MAX_KEYS_PER_OWNER {
                break;
            }
            self.order.pop_front();
            if self.until.get(&key) == Some(&until) {
                self.until.remove(&key);
            }
        }
    }
}

impl PublishedKeys {
    /// Publish with `publish` unless `key` was published already; the check, the publish and
    /// the record happen under one lock, so two attempts never both publish.
    pub fn publish_once<E>(
        &self,
        key: &PublishKey,
        now: Instant,
        publish: impl FnOnce() -> Result<(), E>,
    ) -> Result<Published, E> {
        let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        let owner = owners.entry(key.owner.clone()).or_default();
        owner.forget_expired(now);
        if owner.until.get(&key.key).is_some_and(|until| *until > now) {
            return Ok(Published::AlreadyPublished);
        }
        publish()?;
        owner.record(&key.key, now + key.ttl);
        Ok(Published::Appended)
    }

    /// Whether `key` was published and is still remembered (for a caller that serializes
    /// publishes itself: the history writer).
    pub fn is_published(&self, key: &PublishKey, now: Instant) -> bool {
        let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        let Some(owner) = owners.get_mut(&key.owner) else {
            return false;
        };
        owner.forget_expired(now);
        owner.until.get(&key.key).is_some_and(|until| *until > now)
    }

    /// Remember `key` as published now, for its lifetime.
    pub fn record(&self, key: &PublishKey, now: Instant) {
        self.record_until(key, now + key.ttl);
    }

    /// Remember `key` as published until `until` (a key read back from disk at start).
    pub fn record_until(&self, key: &PublishKey, until: Instant) {
        let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        owners
            .entry(key.owner.clone())
            .or_default()
            .record(&key.key, until);
    }
}

impl Owner {
    fn record(&mut self, key: &str, until: Instant) {
        self.until.insert(key.to_owned(), until);
        self.order.push_back((key.to_owned(), until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(owner: &str, key: &str) -> PublishKey {
        PublishKey {
            owner: owner.into(),
            key: key.into(),
            ttl: IDEMPOTENCY_TTL,
        }
    }

    #[test]
    fn a_key_is_published_once_and_a_refused_publish_records_nothing() {
        let keys = PublishedKeys::default();
        let t0 = Instant::now();
        let refused = keys.publish_once(&key("a", "k"), t0, || Err("full"));
        assert_eq!(refused, Err("full"));
        let first = keys.publish_once(&key("a", "k"), t0, || Ok::<(), ()>(()));
        assert_eq!(
            first,
            Ok(Published::Appended),
            "a refused publish freed its key"
        );
        let mut published_again = false;
        let again = keys.publish_once(&key("a", "k"), t0, || {
            published_again = true;
            Ok::<(), ()>(())
        });
        assert_eq!(again, Ok(Published::AlreadyPublished));
        assert!(!published_again);
        let other = keys.publish_once(&key("b", "k"), t0, || Ok::<(), ()>(()));
        assert_eq!(other, Ok(Published::Appended), "owners' keys are apart");
        let later = t0 + IDEMPOTENCY_TTL + Duration::from_secs(1);
        let expired = keys.publish_once(&key("a", "k"), later, || Ok::<(), ()>(()));
        assert_eq!(
            expired,
            Ok(Published::Appended),
            "forgotten after its lifetime"
        );
    }

    #[test]
    fn redis_names_are_digests_beside_the_stream() {
        let name = key("a", "any text: {}\n").redis_name("logstream:logs");
        assert!(name.starts_with("logstream:logs:published:"), "{name}");
        assert_eq!(name.len(), "logstream:logs:published:".len() + 32);
        assert_ne!(
            name,
            key("b", "any text: {}\n").redis_name("logstream:logs")
        );
    }
}
