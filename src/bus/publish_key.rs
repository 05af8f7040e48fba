//! `Idempotency-Key` on `POST /api/logs`: a request sent again with the same key (a shipper
//! retrying after a timeout whose first attempt did land) is answered 202 without publishing
//! its logs a second time.
//!
//! A key is *pending* from its claim until the publish lands, then *done*. A repeat while it
//! is pending is told to retry (409), never "accepted": the first attempt may still fail. A
//! claim whose request ends without publishing (refused, or the client went away and the
//! handler was dropped) is released by [`Pending`]'s drop, so the key can be used again. Keys
//! are kept for [`KEY_TTL`]: in memory on the embedded bus (at most [`MAX_KEYS`] per sender,
//! oldest forgotten first), in Redis (`SET NX PX`, shared by every instance) otherwise.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bus::Bus;

/// How long a key is remembered.
pub const KEY_TTL: Duration = Duration::from_secs(600);
/// Keys remembered in memory per sender (ingest key) at most.
pub const MAX_KEYS: usize = 100_000;
/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Done,
}

/// Claims of the embedded bus, per sender.
#[derive(Default)]
pub struct Claims {
    inner: Arc<Mutex<HashMap<String, Sender>>>,
}

#[derive(Default)]
struct Sender {
    at: HashMap<String, (Instant, State)>,
    order: VecDeque<(String, Instant)>,
}

/// What a claim found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// First time: publish, then [`Pending::commit`].
    New,
    /// Another request with this key is being published: retry shortly.
    InFlight,
    /// Published within the TTL.
    Duplicate,
}

impl Sender {
    fn claim(&mut self, key: &str, now: Instant) -> Claim {
        while let Some((old, at)) = self.order.front().cloned() {
            if now.duration_since(at) < KEY_TTL && self.order.len() < MAX_KEYS {
                break;
            }
            self.order.pop_front();
            if self.at.get(&old).is_some_and(|(t, _)| *t == at) {
                self.at.remove(&old);
            }
        }
        match self.at.get(key) {
            Some((_, State::Pending)) => Claim::InFlight,
            Some((_, State::Done)) => Claim::Duplicate,
            None => {
                self.at.insert(key.to_owned(), (now, State::Pending));
                self.order.push_back((key.to_owned(), now));
                Claim::New
            }
        }
    }
}

/// A claimed key whose publish has not landed yet: released when dropped uncommitted.
pub struct Pending {
    release: Option<Box<dyn FnOnce() + Send>>,
    commit: Option<Box<dyn FnOnce() + Send>>,
}

impl Pending {
    /// The publish landed: the key is done.
    pub fn commit(mut self) {
        self.release = None;
        if let Some(commit) = self.commit.take() {
            commit();
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

fn redis_name(stream: &str, sender: &str, key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest: String = Sha256::digest(format!("{sender}\u{0}{key}").as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{stream}:idem:{digest}")
}

impl Claims {
    /// Claim `key` of `sender` (an ingest key's name: two senders' keys never collide).
    pub async fn claim(
        &self,
        bus: &Bus,
        sender: &str,
        key: &str,
    ) -> Result<(Claim, Option<Pending>), String> {
        match bus.redis() {
            None => {
                let claim = {
                    let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                    inner
                        .entry(sender.to_owned())
                        .or_default()
                        .claim(key, Instant::now())
                };
                if claim != Claim::New {
                    return Ok((claim, None));
                }
                let (a, b) = (self.inner.clone(), self.inner.clone());
                let (s1, k1, s2, k2) = (
                    sender.to_owned(),
                    key.to_owned(),
                    sender.to_owned(),
                    key.to_owned(),
                );
                Ok((
                    Claim::New,
                    Some(Pending {
                        release: Some(Box::new(move || {
                            let mut inner = a.lock().unwrap_or_else(|p| p.into_inner());
                            if let Some(s) = inner.get_mut(&s1) {
                                s.at.remove(&k1);
                            }
                        })),
                        commit: Some(Box::new(move || {
                            let mut inner = b.lock().unwrap_or_else(|p| p.into_inner());
                            if let Some((_, state)) =
                                inner.get_mut(&s2).and_then(|s| s.at.get_mut(&k2))
                            {
                                *state = State::Done;
                            }
                        })),
                    }),
                ))
            }
            Some(redis) => {
                let mut conn = redis.connection();
                let name = redis_name(redis.stream_key(), sender, key);
                let ttl = KEY_TTL.as_millis() as u64;
                let set: Option<String> = redis::cmd("SET")
                    .arg(&name)
                    .arg("pending")
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                if set.is_none() {
                    let state: Option<String> = redis::cmd("GET")
                        .arg(&name)
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| e.to_string())?;
                    return Ok((
                        if state.as_deref() == Some("done") {
                            Claim::Duplicate
                        } else {
                            Claim::InFlight
                        },
                        None,
                    ));
                }
                let (release_conn, commit_conn) = (redis.connection(), redis.connection());
                let (n1, n2) = (name.clone(), name);
                Ok((
                    Claim::New,
                    Some(Pending {
                        release: Some(Box::new(move || {
                            let mut conn = release_conn;
                            // Drop runs inside a request handler, on the runtime.
                            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                                handle.spawn(async move {
                                    let _: Result<(), _> =
                                        redis::cmd("DEL").arg(&n1).query_async(&mut conn).await;
                                });
                            }
                        })),
                        commit: Some(Box::new(move || {
                            let mut conn = commit_conn;
                            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                                handle.spawn(async move {
                                    let _: Result<(), _> = redis::cmd("SET")
                                        .arg(&n2)
                                        .arg("done")
                                        .arg("XX")
                                        .arg("PX")
                                        .arg(ttl)
                                        .query_async(&mut conn)
                                        .await;
                                });
                            }
                        })),
                    }),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_pending_until_committed_and_free_again_if_dropped() {
        let mut s = Sender::default();
        let t0 = Instant::now();
        assert_eq!(s.claim("k", t0), Claim::New);
        assert_eq!(
            s.claim("k", t0),
            Claim::InFlight,
            "a repeat while publishing"
        );
        s.at.get_mut("k").unwrap().1 = State::Done;
        assert_eq!(s.claim("k", t0), Claim::Duplicate);
        assert_eq!(
            s.claim("k", t0 + KEY_TTL + Duration::from_secs(1)),
            Claim::New,
            "forgotten after the TTL"
        );
    }

    #[tokio::test]
    async fn an_uncommitted_claim_is_released_when_dropped() {
        let (tx, _rx) = crossbeam_channel::bounded(1);
        let bus = Bus::Embedded(tx);
        let claims = Claims::default();
        let (claim, pending) = claims.claim(&bus, "api_key", "k").await.unwrap();
        assert_eq!(claim, Claim::New);
        drop(pending);
        let (claim, pending) = claims.claim(&bus, "api_key", "k").await.unwrap();
        assert_eq!(claim, Claim::New, "released: the key can be used again");
        pending.unwrap().commit();
        let (claim, _) = claims.claim(&bus, "api_key", "k").await.unwrap();
        assert_eq!(claim, Claim::Duplicate);
        let (claim, _) = claims.claim(&bus, "other-key", "k").await.unwrap();
        assert_eq!(claim, Claim::New, "senders' keys are apart");
    }
}
