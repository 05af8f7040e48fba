//! `Idempotency-Key` on `POST /api/logs`: a request sent again with the same key (a shipper
//! retrying after a timeout whose first attempt did land) is answered 202 without publishing
//! its logs a second time.
//!
//! The key is claimed before publishing and released if publishing fails, so a refused
//! request can be retried with the same key. Keys are kept for [`KEY_TTL`]: in memory on the
//! embedded bus (at most [`MAX_KEYS`], oldest forgotten first), in Redis (`SET NX PX`, shared
//! by every instance) otherwise.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::bus::Bus;

/// How long a key is remembered.
pub const KEY_TTL: Duration = Duration::from_secs(600);
/// Keys remembered in memory at most.
pub const MAX_KEYS: usize = 100_000;
/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 128;

/// Claims of the embedded bus.
#[derive(Default)]
pub struct Claims {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    at: HashMap<String, Instant>,
    order: VecDeque<(String, Instant)>,
}

/// What a claim found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// First time: publish, then keep (or release on failure).
    New,
    /// Seen within the TTL: already published.
    Duplicate,
}

impl Claims {
    fn claim_local(&self, key: &str, now: Instant) -> Claim {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((old, at)) = inner.order.front().cloned() {
            if now.duration_since(at) < KEY_TTL && inner.order.len() < MAX_KEYS {
                break;
            }
            inner.order.pop_front();
            if inner.at.get(&old) == Some(&at) {
                inner.at.remove(&old);
            }
        }
        if inner.at.contains_key(key) {
            return Claim::Duplicate;
        }
        inner.at.insert(key.to_owned(), now);
        inner.order.push_back((key.to_owned(), now));
        Claim::New
    }

    fn release_local(&self, key: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.at.remove(key);
    }

    /// Claim `key` for a request (per ingest key: `scope` keeps two senders' keys apart).
    pub async fn claim(&self, bus: &Bus, scope: &str, key: &str) -> Result<Claim, String> {
        let full = format!("{scope}\u{0}{key}");
        match bus.redis() {
            None => Ok(self.claim_local(&full, Instant::now())),
            Some(redis) => {
                let mut conn = redis.connection();
                let name = format!("{}:idem:{}", redis.stream_key(), digest(&full));
                let set: Option<String> = redis::cmd("SET")
                    .arg(&name)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(KEY_TTL.as_millis() as u64)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(if set.is_some() {
                    Claim::New
                } else {
                    Claim::Duplicate
                })
            }
        }
    }

    /// Publishing failed: the key may be used again.
    pub async fn release(&self, bus: &Bus, scope: &str, key: &str) {
        let full = format!("{scope}\u{0}{key}");
        match bus.redis() {
            None => self.release_local(&full),
            Some(redis) => {
                let mut conn = redis.connection();
                let name = format!("{}:idem:{}", redis.stream_key(), digest(&full));
                let _: Result<(), _> = redis::cmd("DEL").arg(&name).query_async(&mut conn).await;
            }
        }
    }
}

fn digest(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_new_once_until_released_or_expired() {
        let claims = Claims::default();
        let t0 = Instant::now();
        assert_eq!(claims.claim_local("k", t0), Claim::New);
        assert_eq!(claims.claim_local("k", t0), Claim::Duplicate);
        claims.release_local("k");
        assert_eq!(claims.claim_local("k", t0), Claim::New);
        assert_eq!(
            claims.claim_local("k", t0 + KEY_TTL + Duration::from_secs(1)),
            Claim::New,
            "forgotten after the TTL"
        );
    }
}
