//! Sessions kept in Redis, shared by every instance, bounded per user and for the cluster.
//!
//! Keys, beside the stream (`<stream>:…`):
//! - `session:<id>`: the session (JSON), expiring `session_ttl_ms` after its last connection
//!   went (instances holding it push that back, see [`RedisSessions::keep_alive`]);
//! - `sessions:all` and `sessions:user:<digest of the sub>`: sorted sets of session ids. The
//!   score is the expiry of an idle session (ms), or [`ATTACHED`] plus the time it was
//!   attached for one a connection holds;
//! - `sessions:meta`: id → `bytes:user digest`; `sessions:bytes`: the total.
//!
//! One script saves a session, another ends or detaches one: each makes room and keeps the
//! indexes in step in one atomic step. Room is made like in memory: expired sessions go, then
//! the idle sessions nearest their expiry (the user's, then the cluster's); if only attached
//! ones are left, the new session is refused. Sessions attached to an instance that died stop
//! being kept alive and expire; the script drops them from the indexes when it meets them.

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use sha2::{Digest, Sha256};

use super::RedisBus;
use futures_util::future::BoxFuture;

use crate::sessions::{Saved, SessionLimits, SessionRefused, SessionStore, SessionTotals};

/// Scores at or above this are attached sessions (an idle session's score is a time in ms).
const ATTACHED: u64 = 1 << 50;

/// How long one session command may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Shared by the scripts: drop a session from every index and its key (`p` is the prefix).
const DROP: &str = r"
local p = ARGV[1]
local function drop(id)
  local meta = redis.call('HGET', p .. 'sessions:meta', id)
  if meta then
    local b, u = string.match(meta, '^(%d+):(.*)$')
    redis.call('DECRBY', p .. 'sessions:bytes', b)
    redis.call('ZREM', p .. 'sessions:user:' .. u, id)
    redis.call('HDEL', p .. 'sessions:meta', id)
  end
  redis.call('ZREM', p .. 'sessions:all', id)
  redis.call('DEL', p .. 'session:' .. id)
end
";

/// Save (attach) a session. ARGV: prefix, id, JSON, weight, user digest, now (ms), the limits
/// (per user, user bytes, total, total bytes), [`ATTACHED`], the ttl (ms). Returns 'ok',
/// 'user' or 'instance'.
const SAVE: &str = r"
local id, json, weight, u, now = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local per_user, user_bytes = tonumber(ARGV[7]), tonumber(ARGV[8])
local total, total_bytes = tonumber(ARGV[9]), tonumber(ARGV[10])
local attached, ttl = tonumber(ARGV[11]), ARGV[12]
local all, users = p .. 'sessions:all', p .. 'sessions:user:' .. u
for _, old in ipairs(redis.call('ZRANGEBYSCORE', all, '-inf', now, 'LIMIT', 0, 64)) do
  if old ~= id then drop(old) end
end
-- What the session replaces makes room for it, but stays if it is refused.
local own_n, own_w = 0, 0
local own = redis.call('HGET', p .. 'sessions:meta', id)
if own then own_n, own_w = 1, tonumber(string.match(own, '^(%d+)')) end
local mine = 0
if own and redis.call('ZSCORE', users, id) then mine = 1 end
-- In `set`, the idle session nearest its expiry, else an attached one whose key is gone (its
-- instance died), other than `id`: dropped. False if none.
local function make_room(set)
  local first = redis.call('ZRANGE', set, 0, 1, 'WITHSCORES')
  for i = 1, #first, 2 do
    if first[i] ~= id and tonumber(first[i + 1]) < attached then
      drop(first[i])
      return true
    end
  end
  for _, held in ipairs(redis.call('ZRANGE', set, 0, 63)) do
    if held ~= id and redis.call('EXISTS', p .. 'session:' .. held) == 0 then
      drop(held)
      return true
    end
  end
  return false
end
while true do
  local ids = redis.call('ZRANGE', users, 0, -1)
  local bytes = 0
  for _, other in ipairs(ids) do
    local meta = redis.call('HGET', p .. 'sessions:meta', other)
    if meta then bytes = bytes + tonumber(string.match(meta, '^(%d+)')) end
  end
  if mine == 1 then bytes = bytes - own_w end
  if #ids - mine < per_user and bytes + weight <= user_bytes then break end
  if not make_room(users) then return 'user' end
end
while redis.call('ZCARD', all) - own_n >= total
    or tonumber(redis.call('GET', p .. 'sessions:bytes') or '0') - own_w + weight > total_bytes do
  if not make_room(all) then return 'instance' end
end
drop(id)
redis.call('SET', p .. 'session:' .. id, json, 'PX', ttl)
redis.call('ZADD', all, attached + now, id)
redis.call('ZADD', users, attached + now, id)
redis.call('HSET', p .. 'sessions:meta', id, weight .. ':' .. u)
redis.call('INCRBY', p .. 'sessions:bytes', weight)
return 'ok'
";

/// Detach a session: it expires `ttl` ms from now. ARGV: prefix, id, now, ttl.
const DETACH: &str = r"
local id, expires = ARGV[2], tonumber(ARGV[3]) + tonumber(ARGV[4])
local meta = redis.call('HGET', p .. 'sessions:meta', id)
if not meta then return 0 end
local u = string.match(meta, '^%d+:(.*)$')
redis.call('PEXPIRE', p .. 'session:' .. id, ARGV[4])
redis.call('ZADD', p .. 'sessions:all', 'XX', expires, id)
redis.call('ZADD', p .. 'sessions:user:' .. u, 'XX', expires, id)
return 1
";

/// End a session now. ARGV: prefix, id.
const END: &str = "drop(ARGV[2]) return 1";

/// Drop up to 256 expired sessions from the indexes. ARGV: prefix, now.
const PRUNE: &str = r"
local expired = redis.call('ZRANGEBYSCORE', p .. 'sessions:all', '-inf', ARGV[2], 'LIMIT', 0, 256)
for _, id in ipairs(expired) do drop(id) end
return #expired
";

pub struct RedisSessions {
    pub bus: Arc<RedisBus>,
    limits: SessionLimits,
}

fn user_digest(user: &str) -> String {
    Sha256::digest(user.as_bytes())
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RedisSessions {
    pub fn new(bus: Arc<RedisBus>, limits: SessionLimits) -> RedisSessions {
        RedisSessions { bus, limits }
    }

    fn prefix(&self) -> String {
        format!("{}:", self.bus.stream_key())
    }

    fn key(&self, id: &str) -> String {
        format!("{}session:{id}", self.prefix())
    }

    async fn script<T: redis::FromRedisValue>(&self, body: &str, args: &[String]) -> Option<T> {
        let mut eval = redis::cmd("EVAL");
        // One key declared (every key the script touches shares its prefix, and so its
        // hash tag in a cluster): the script runs where that slot lives.
        eval.arg(format!("{DROP}\n{body}"))
            .arg(1)
            .arg(format!("{}sessions:all", self.prefix()))
            .arg(self.prefix());
        for a in args {
            eval.arg(a);
        }
        let mut conn = self.bus.connection();
        match tokio::time::timeout(TIMEOUT, eval.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "a session command failed in redis");
                None
            }
            Err(_) => {
                tracing::warn!("redis did not answer a session command in time");
                None
            }
        }
    }

    pub async fn save(&self, id: &str, saved: &Saved, ttl: Duration) -> Result<(), SessionRefused> {
        let json = serde_json::to_string(saved).unwrap_or_default();
        let l = &self.limits;
        let args = [
            id.to_owned(),
            json,
            saved.weight(id).to_string(),
            user_digest(&saved.user),
            now_ms().to_string(),
            l.per_user.to_string(),
            l.user_bytes.to_string(),
            l.total.to_string(),
            l.total_bytes.to_string(),
            ATTACHED.to_string(),
            (ttl.as_millis() as u64).to_string(),
        ];
        match self.script::<String>(SAVE, &args).await.as_deref() {
            Some("user") => Err(SessionRefused::User),
            Some("instance") => Err(SessionRefused::Instance),
            // Redis unavailable: the subscription still works, it is only not resumable
            // elsewhere (a resume answers `session_expired`).
            _ => Ok(()),
        }
    }

    pub async fn detach(&self, id: &str, ttl: Duration) {
        let args = [
            id.to_owned(),
            now_ms().to_string(),
            (ttl.as_millis() as u64).to_string(),
        ];
        let _ = self.script::<i64>(DETACH, &args).await;
    }

    pub async fn load(&self, id: &str) -> Option<Saved> {
        let mut conn = self.bus.connection();
        let get = conn.get::<_, Option<String>>(self.key(id));
        let text = tokio::time::timeout(TIMEOUT, get).await.ok()?.ok()??;
        serde_json::from_str(&text).ok()
    }

    pub async fn end(&self, id: &str) {
        let _ = self.script::<i64>(END, &[id.to_owned()]).await;
    }

    /// Push back the expiry of the sessions of this instance's live connections (so a
    /// session outlives its instance's death by `ttl`), and drop expired ones from the
    /// indexes.
    pub async fn keep_alive(&self, ids: &[String], ttl: Duration) {
        if !ids.is_empty() {
            let mut pipe = redis::pipe();
            for id in ids {
                pipe.pexpire(self.key(id), ttl.as_millis() as i64).ignore();
            }
            let mut conn = self.bus.connection();
            let _ = tokio::time::timeout(TIMEOUT, pipe.query_async::<()>(&mut conn)).await;
        }
        let _ = self.script::<i64>(PRUNE, &[now_ms().to_string()]).await;
    }

    pub async fn totals(&self) -> Option<SessionTotals> {
        let p = self.prefix();
        let mut pipe = redis::pipe();
        pipe.zcard(format!("{p}sessions:all"))
            .get(format!("{p}sessions:bytes"));
        let mut conn = self.bus.connection();
        let (sessions, bytes): (u64, Option<u64>) =
            tokio::time::timeout(TIMEOUT, pipe.query_async(&mut conn))
                .await
                .ok()?
                .ok()?;
        Some(SessionTotals {
            sessions,
            bytes: bytes.unwrap_or(0),
        })
    }
}

impl SessionStore for RedisSessions {
    fn save<'a>(
        &'a self,
        id: &'a str,
        saved: &'a Saved,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), SessionRefused>> {
        Box::pin(RedisSessions::save(self, id, saved, ttl))
    }

    fn detach<'a>(&'a self, id: &'a str, ttl: Duration) -> BoxFuture<'a, ()> {
        Box::pin(RedisSessions::detach(self, id, ttl))
    }

    fn load<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Option<Saved>> {
        Box::pin(RedisSessions::load(self, id))
    }

    fn end<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(RedisSessions::end(self, id))
    }

    fn keep_alive<'a>(&'a self, ids: &'a [String], ttl: Duration) -> BoxFuture<'a, ()> {
        Box::pin(RedisSessions::keep_alive(self, ids, ttl))
    }

    fn totals(&self) -> BoxFuture<'_, Option<SessionTotals>> {
        Box::pin(RedisSessions::totals(self))
    }
}
