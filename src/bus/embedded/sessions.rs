//! Sessions kept in this process (the embedded bus), bounded per user and per instance.
//!
//! A session is *attached* while a connection holds it and *idle* from its disconnect until
//! `session_ttl_ms` later. When a new one would pass a bound (sessions per user, subscription
//! bytes per user, sessions or bytes of the instance), the idle sessions nearest their expiry
//! end first; if only attached ones are left, the new session is refused.
//!
//! With the history on disk, every change also goes to a [`Journal`] beside it, so sessions
//! survive a restart.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::journal::Journal;
use futures_util::future::BoxFuture;

use crate::sessions::{Saved, SessionLimits, SessionRefused, SessionStore, SessionTotals};

struct Entry {
    saved: Saved,
    /// What it weighs (see [`Saved::weight`]).
    bytes: usize,
    /// Idle until then; `None` while attached.
    idle_until: Option<Instant>,
}

#[derive(Default)]
struct User {
    count: usize,
    bytes: usize,
    /// This user's idle sessions, the first to expire first.
    idle: BTreeSet<(Instant, String)>,
}

#[derive(Default)]
struct Store {
    entries: HashMap<String, Entry>,
    users: HashMap<String, User>,
    /// Every idle session, the first to expire first.
    idle: BTreeSet<(Instant, String)>,
    bytes: usize,
    journal: Option<Journal>,
}

pub struct MemorySessions {
    store: Mutex<Store>,
    limits: SessionLimits,
}

impl Store {
    fn remove(&mut self, id: &str) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        if let Some(journal) = &mut self.journal {
            journal.del(id);
        }
        self.bytes -= entry.bytes;
        if let Some(user) = self.users.get_mut(&entry.saved.user) {
            user.count -= 1;
            user.bytes -= entry.bytes;
            if let Some(until) = entry.idle_until {
                user.idle.remove(&(until, id.to_owned()));
            }
            if user.count == 0 {
                self.users.remove(&entry.saved.user);
            }
        }
        if let Some(until) = entry.idle_until {
            self.idle.remove(&(until, id.to_owned()));
        }
        Some(entry)
    }

    fn insert(&mut self, id: &str, entry: Entry) {
        if let Some(journal) = &mut self.journal {
            journal.put(id, &entry.saved);
            let live = self.entries.len() + 1;
            journal.compact_if_long(
                live,
                self.entries
                    .iter()
                    .map(|(id, e)| (id.as_str(), &e.saved))
                    .chain(std::iter::once((id, &entry.saved))),
            );
        }
        self.bytes += entry.bytes;
        let user = self.users.entry(entry.saved.user.clone()).or_default();
        user.count += 1;
        user.bytes += entry.bytes;
        if let Some(until) = entry.idle_until {
            user.idle.insert((until, id.to_owned()));
            self.idle.insert((until, id.to_owned()));
        }
        self.entries.insert(id.to_owned(), entry);
    }

    fn prune_expired(&mut self, now: Instant) {
        while let Some((until, id)) = self.idle.first().cloned() {
            if until > now {
                break;
            }
            self.remove(&id);
        }
    }

    /// End `user`'s idle session nearest its expiry; `false` if it has none.
    fn evict_users_oldest(&mut self, user: &str) -> bool {
        let Some((_, id)) = self.users.get(user).and_then(|u| u.idle.first().cloned()) else {
            return false;
        };
        self.remove(&id).is_some()
    }

    /// End the instance's idle session nearest its expiry; `false` if there is none.
    fn evict_oldest(&mut self) -> bool {
        let Some((_, id)) = self.idle.first().cloned() else {
            return false;
        };
        self.remove(&id).is_some()
    }
}

impl MemorySessions {
    pub fn new(limits: SessionLimits) -> MemorySessions {
        MemorySessions {
            store: Mutex::default(),
            limits,
        }
    }

    /// Sessions kept in `journal` as well, starting with the ones it held (idle for `ttl`
    /// from `now`, as far as the bounds allow).
    pub fn durable(
        limits: SessionLimits,
        journal: Journal,
        sessions: Vec<(String, Saved)>,
        ttl: Duration,
        now: Instant,
    ) -> MemorySessions {
        let mut store = Store::default();
        let until = now + ttl;
        for (id, saved) in sessions {
            let bytes = saved.weight(&id);
            let user = store.users.get(&saved.user);
            let (count, user_bytes) = user.map_or((0, 0), |u| (u.count, u.bytes));
            if count >= limits.per_user
                || user_bytes + bytes > limits.user_bytes
                || store.entries.len() >= limits.total
                || store.bytes + bytes > limits.total_bytes
            {
                continue;
            }
            store.insert(
                &id,
                Entry {
                    saved,
                    bytes,
                    idle_until: Some(until),
                },
            );
        }
        store.journal = Some(journal);
        MemorySessions {
            store: Mutex::new(store),
            limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn save(&self, id: &str, saved: &Saved, now: Instant) -> Result<(), SessionRefused> {
        let bytes = saved.weight(id);
        let limits = &self.limits;
        let mut store = self.lock();
        // What it replaces makes room for it, but stays if the new one is refused.
        let replaced = store.remove(id);
        store.prune_expired(now);
        let refused = loop {
            let user = store.users.get(&saved.user);
            let (count, user_bytes) = user.map_or((0, 0), |u| (u.count, u.bytes));
            if count < limits.per_user && user_bytes + bytes <= limits.user_bytes {
                break None;
            }
            if !store.evict_users_oldest(&saved.user) {
                break Some(SessionRefused::User);
            }
        };
        let refused = refused.or_else(|| {
            while store.entries.len() >= limits.total || store.bytes + bytes > limits.total_bytes {
                if !store.evict_oldest() {
                    return Some(SessionRefused::Instance);
                }
            }
            None
        });
        if let Some(refused) = refused {
            if let Some(entry) = replaced {
                store.insert(id, entry);
            }
            return Err(refused);
        }
        let entry = Entry {
            saved: saved.clone(),
            bytes,
            idle_until: None,
        };
        store.insert(id, entry);
        Ok(())
    }

    pub fn detach(&self, id: &str, ttl: Duration, now: Instant) {
        let mut store = self.lock();
        let Some(entry) = store.entries.get_mut(id) else {
            return;
        };
        let until = now + ttl;
        let user = entry.saved.user.clone();
        if let Some(before) = entry.idle_until.replace(until) {
            store.idle.remove(&(before, id.to_owned()));
            if let Some(u) = store.users.get_mut(&user) {
                u.idle.remove(&(before, id.to_owned()));
            }
        }
        store.idle.insert((until, id.to_owned()));
        if let Some(u) = store.users.get_mut(&user) {
            u.idle.insert((until, id.to_owned()));
        }
    }

    pub fn load(&self, id: &str, now: Instant) -> Option<Saved> {
        let store = self.lock();
        let entry = store.entries.get(id)?;
        if entry.idle_until.is_some_and(|until| until <= now) {
            return None;
        }
        Some(entry.saved.clone())
    }

    pub fn end(&self, id: &str) {
        self.lock().remove(id);
    }

    pub fn prune(&self, now: Instant) {
        self.lock().prune_expired(now);
    }

    pub fn totals(&self) -> SessionTotals {
        let store = self.lock();
        SessionTotals {
            sessions: store.entries.len() as u64,
            bytes: store.bytes as u64,
        }
    }
}

impl SessionStore for MemorySessions {
    fn save<'a>(
        &'a self,
        id: &'a str,
        saved: &'a Saved,
        _ttl: Duration,
    ) -> BoxFuture<'a, Result<(), SessionRefused>> {
        Box::pin(std::future::ready(MemorySessions::save(
            self,
            id,
            saved,
            Instant::now(),
        )))
    }

    fn detach<'a>(&'a self, id: &'a str, ttl: Duration) -> BoxFuture<'a, ()> {
        MemorySessions::detach(self, id, ttl, Instant::now());
        Box::pin(std::future::ready(()))
    }

    fn load<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Option<Saved>> {
        Box::pin(std::future::ready(MemorySessions::load(
            self,
            id,
            Instant::now(),
        )))
    }

    fn end<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ()> {
        MemorySessions::end(self, id);
        Box::pin(std::future::ready(()))
    }

    /// Its connections are this instance's: only the expired are dropped.
    fn keep_alive<'a>(&'a self, _ids: &'a [String], _ttl: Duration) -> BoxFuture<'a, ()> {
        self.prune(Instant::now());
        Box::pin(std::future::ready(()))
    }

    fn totals(&self) -> BoxFuture<'_, Option<SessionTotals>> {
        Box::pin(std::future::ready(Some(MemorySessions::totals(self))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(user: &str, weight: usize) -> Saved {
        Saved {
            user: user.into(),
            subscription: serde_json::json!({"keywords": ["x".repeat(weight)]}),
        }
    }

    fn limits() -> SessionLimits {
        SessionLimits {
            per_user: 3,
            user_bytes: 10_000,
            total: 5,
            total_bytes: 1 << 20,
        }
    }

    #[test]
    fn a_user_past_its_count_loses_its_idle_session_nearest_expiry() {
        let s = MemorySessions::new(limits());
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            s.save(id, &saved("ann", 10), t0).unwrap();
            s.detach(id, ttl, t0 + Duration::from_secs(i as u64));
        }
        s.save("d", &saved("ann", 10), t0).unwrap();
        assert!(s.load("a", t0).is_none(), "the first to expire ended");
        assert!(s.load("b", t0).is_some() && s.load("d", t0).is_some());
        assert_eq!(s.totals().sessions, 3);
        // Attached sessions are never ended for a new one: past the bound it is refused.
        for id in ["b", "c", "d"] {
            s.save(id, &saved("ann", 10), t0).unwrap();
        }
        assert_eq!(
            s.save("e", &saved("ann", 10), t0),
            Err(SessionRefused::User)
        );
        assert!(s.save("e", &saved("bob", 10), t0).is_ok(), "per user");
    }

    #[test]
    fn a_refused_replacement_keeps_the_session_it_would_have_replaced() {
        let s = MemorySessions::new(limits());
        let t0 = Instant::now();
        s.save("a", &saved("ann", 4000), t0).unwrap();
        s.save("b", &saved("ann", 4000), t0).unwrap();
        // Both attached: "a" cannot grow past the user's bytes.
        assert_eq!(
            s.save("a", &saved("ann", 7000), t0),
            Err(SessionRefused::User)
        );
        assert!(s.load("a", t0).is_some(), "the old one stays");
        assert_eq!(s.totals().sessions, 2);
    }

    #[test]
    fn a_users_subscription_bytes_are_bounded_too() {
        let s = MemorySessions::new(limits());
        let t0 = Instant::now();
        s.save("a", &saved("ann", 6000), t0).unwrap();
        s.detach("a", Duration::from_secs(60), t0);
        s.save("b", &saved("ann", 6000), t0).unwrap();
        assert!(s.load("a", t0).is_none(), "two would pass user_bytes");
        assert_eq!(
            s.save("c", &saved("ann", 6000), t0),
            Err(SessionRefused::User)
        );
        let totals = s.totals();
        assert_eq!(totals.sessions, 1);
        assert!(totals.bytes > 6000 && totals.bytes < 7000, "{totals:?}");
    }

    #[test]
    fn the_instance_is_bounded_and_expired_sessions_go() {
        let s = MemorySessions::new(limits());
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        for i in 0..5 {
            let id = format!("s{i}");
            s.save(&id, &saved(&format!("u{i}"), 10), t0).unwrap();
            s.detach(&id, ttl, t0);
        }
        s.save("new", &saved("v", 10), t0).unwrap();
        assert_eq!(s.totals().sessions, 5, "one idle session made room");
        s.save("other", &saved("w", 10), t0).unwrap();
        for id in ["new", "other", "s2", "s3", "s4"] {
            s.save(id, &saved(id, 10), t0).unwrap();
        }
        assert_eq!(
            s.save("more", &saved("x", 10), t0),
            Err(SessionRefused::Instance)
        );
        // Expired ones are gone by the time they are looked at.
        s.detach("s4", ttl, t0);
        assert!(s.load("s4", t0 + ttl).is_none());
        s.prune(t0 + ttl);
        assert_eq!(s.totals().sessions, 4);
        // A session ended and saved again does not count twice.
        s.end("new");
        assert_eq!(s.totals().sessions, 3);
    }

    #[tokio::test]
    async fn sessions_belong_to_their_user_and_expire_once_detached() {
        let s = crate::sessions::Sessions::new(std::sync::Arc::new(MemorySessions::new(
            SessionLimits {
                per_user: 10,
                user_bytes: 1 << 20,
                total: 100,
                total_bytes: 1 << 20,
            },
        )));
        let saved = Saved {
            user: "ann".into(),
            subscription: serde_json::json!({"deviceIds": ["d"]}),
        };
        let ttl = Duration::from_millis(50);
        s.save("id1", &saved, ttl).await.unwrap();
        assert_eq!(s.load("id1", "ann").await, Some(saved.clone()));
        assert_eq!(s.load("id1", "bob").await, None, "not another user's");
        s.detach("id1", ttl).await;
        assert!(s.load("id1", "ann").await.is_some(), "within the ttl");
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(s.load("id1", "ann").await, None, "expired");
        s.save("id2", &saved, ttl).await.unwrap();
        s.end("id2").await;
        assert_eq!(s.load("id2", "ann").await, None);
    }
}
