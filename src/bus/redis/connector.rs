//! How the Redis bus reaches Redis, whatever the deployment: one server (`redis://`,
//! `rediss://`, `unix://`), a primary watched by Sentinel
//! (`redis+sentinel://[:password@]s1:p1,s2:p2/master-name`) or a Redis Cluster
//! (`redis+cluster://[:password@]h1:p1,h2:p2`).
//!
//! - Commands go through a [`BusConn`], one type for the three (it is a
//!   `redis::aio::ConnectionLike`, so every command and pipeline works on it).
//! - Sentinel: the primary is asked of the sentinels when first needed and every
//!   [`WATCH_EVERY`] by [`Connector::watch`]. When it moves, the command connections are
//!   rebuilt on the new primary and [`Connector::moved`] changes, so the long-lived
//!   connections (pub/sub, the stream reader) reconnect: after a failover the old primary
//!   keeps accepting writes until Sentinel demotes it (about 10 s), and what went there would
//!   be lost. A write refused with `READONLY` (it reached the demoted primary) was not
//!   executed: it is sent again, once, after asking the sentinels.
//! - Cluster: commands through the crate's cluster connection (it follows MOVED/ASK and
//!   failovers); every key carries the stream's hash tag (see [`hash_tagged`]), so scripts
//!   and pipelines stay in one slot. Pub/sub goes through any node: in a cluster a PUBLISH
//!   reaches the subscribers of every node.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, ErrorKind, Pipeline, RedisFuture, RedisResult, ServerErrorKind, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use crate::config::redis::Target;

/// How often the sentinels are asked where the primary is.
pub const WATCH_EVERY: Duration = Duration::from_millis(500);

/// `key` with a hash tag: itself if it has one (`{…}` with something inside), else
/// `{key}`. In a cluster every key of the bus starts with the tagged stream name, so all of
/// them, and the scripts and pipelines that touch several, are in one slot.
pub fn hash_tagged(key: &str) -> String {
    let tagged = key
        .find('{')
        .and_then(|open| key[open + 1..].find('}').map(|len| len > 0))
        .unwrap_or(false);
    if tagged {
        key.to_owned()
    } else {
        format!("{{{key}}}")
    }
}

/// The command connections of the current primary (Sentinel).
struct Primary {
    addr: String,
    client: redis::Client,
    commands: ConnectionManager,
    appends: ConnectionManager,
}

/// The primary as the sentinels last said, and how to ask them again.
pub struct SentinelLink {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    /// The monitored master's name.
    master: String,
    /// A connection to a sentinel kept for the watch (asking through `sentinel` opens new
    /// connections to the primary each time, to check its role).
    watching: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    /// With `redis_min_replicas`, the stream is read from a replica (see
    /// [`Connector::dedicated`]).
    replicas: Option<tokio::sync::Mutex<SentinelClient>>,
    primary: Mutex<Option<Arc<Primary>>>,
    commands_config: ConnectionManagerConfig,
    appends_config: ConnectionManagerConfig,
    moved: watch::Sender<u64>,
}

impl SentinelLink {
    /// Ask the sentinels where the primary is; when it moved, rebuild the command
    /// connections and say so on `moved`.
    async fn resolve(&self) -> RedisResult<Arc<Primary>> {
        let client = self.sentinel.lock().await.async_get_client().await?;
        let addr = client.get_connection_info().addr().to_string();
        let mut primary = self.primary.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = primary.as_ref()
            && p.addr == addr
        {
            return Ok(p.clone());
        }
        let fresh = Arc::new(Primary {
            addr: addr.clone(),
            commands: ConnectionManager::new_lazy_with_config(
                client.clone(),
                self.commands_config.clone(),
            )?,
            appends: ConnectionManager::new_lazy_with_config(
                client.clone(),
                self.appends_config.clone(),
            )?,
            client,
        });
        let was = primary.replace(fresh.clone());
        drop(primary);
        if let Some(was) = was {
            tracing::warn!(from = %was.addr, to = %addr, "the redis primary moved (sentinel): reconnecting to it");
        }
        self.moved.send_modify(|n| *n += 1);
        Ok(fresh)
    }

    /// Where the sentinels say the primary is (`host:port`), on the kept connection.
    async fn primary_addr(&self) -> RedisResult<String> {
        let mut kept = self.watching.lock().await;
        let conn = match kept.as_mut() {
            Some(conn) => conn,
            None => {
                let client = self
                    .sentinel
                    .lock()
                    .await
                    .async_get_sentinel_client()
                    .await?;
                kept.insert(client.get_multiplexed_async_connection().await?)
            }
        };
        let asked = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.master)
            .query_async::<Vec<String>>(conn)
            .await;
        match asked {
            Ok(addr) if addr.len() == 2 => Ok(format!("{}:{}", addr[0], addr[1])),
            Ok(_) => Err(redis::RedisError::from((
                ErrorKind::Client,
                "the sentinel does not know the master",
            ))),
            Err(e) => {
                // Another sentinel next time.
                *kept = None;
                Err(e)
            }
        }
    }

    /// The watch's step: ask where the primary is, and follow it if it moved.
    async fn follow(&self) -> RedisResult<()> {
        let addr = self.primary_addr().await?;
        let known = self
            .primary
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|p| p.addr.clone());
        if known.as_deref() != Some(addr.as_str()) {
            self.resolve().await?;
        }
        Ok(())
    }

    async fn current(&self) -> RedisResult<Arc<Primary>> {
        let known = self
            .primary
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match known {
            Some(p) => Ok(p),
            None => self.resolve().await,
        }
    }
}

/// Which of the command connections a [`BusConn`] uses.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything but appends.
    Commands,
    /// Appends, which may hold their connection (`WAIT`).
    Appends,
}

/// A connection for commands, whatever the deployment (cheap to clone).
#[derive(Clone)]
pub enum BusConn {
    Manager(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
    Sentinel(Arc<SentinelLink>, Role),
    Dedicated(redis::aio::MultiplexedConnection),
}

/// Whether `e` says the command reached a primary that is one no more (it was not run).
fn demoted(e: &redis::RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
    )
}

impl ConnectionLike for BusConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            BusConn::Manager(c) => c.req_packed_command(cmd),
            BusConn::Cluster(c) => c.req_packed_command(cmd),
            BusConn::Dedicated(c) => c.req_packed_command(cmd),
            BusConn::Sentinel(link, role) => {
                let (link, role) = (link.clone(), *role);
                Box::pin(async move {
                    let first = link.current().await?;
                    match manager(&first, role).req_packed_command(cmd).await {
                        Err(e) if demoted(&e) => {
                            let next = link.resolve().await?;
                            manager(&next, role).req_packed_command(cmd).await
                        }
                        Err(e) if e.is_io_error() || e.is_timeout() => {
                            // Ask again for next time; this one may have run.
                            let _ = link.resolve().await;
                            Err(e)
                        }
                        other => other,
                    }
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            BusConn::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            BusConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            BusConn::Dedicated(c) => c.req_packed_commands(pipeline, offset, count),
            BusConn::Sentinel(link, role) => {
                let (link, role) = (link.clone(), *role);
                Box::pin(async move {
                    let first = link.current().await?;
                    match manager(&first, role)
                        .req_packed_commands(pipeline, offset, count)
                        .await
                    {
                        Err(e) if demoted(&e) => {
                            let next = link.resolve().await?;
                            manager(&next, role)
                                .req_packed_commands(pipeline, offset, count)
                                .await
                        }
                        Err(e) if e.is_io_error() || e.is_timeout() => {
                            let _ = link.resolve().await;
                            Err(e)
                        }
                        other => other,
                    }
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            BusConn::Manager(c) => c.get_db(),
            BusConn::Cluster(c) => c.get_db(),
            BusConn::Dedicated(c) => c.get_db(),
            BusConn::Sentinel(..) => 0,
        }
    }
}

fn manager(primary: &Primary, role: Role) -> ConnectionManager {
    match role {
        Role::Commands => primary.commands.clone(),
        Role::Appends => primary.appends.clone(),
    }
}

enum Kind {
    Single {
        client: redis::Client,
        commands: ConnectionManager,
        appends: ConnectionManager,
    },
    Sentinel(Arc<SentinelLink>),
    Cluster(Box<ClusterLink>),
}

/// A Redis Cluster: the crate's client and connections, and its nodes for pub/sub.
struct ClusterLink {
    client: redis::cluster::ClusterClient,
    commands: redis::cluster_async::ClusterConnection,
    appends: redis::cluster_async::ClusterConnection,
    /// One client per node given, for pub/sub (rotated on each reconnection).
    seeds: Vec<redis::Client>,
    next_seed: AtomicUsize,
}

/// The way to Redis: command connections, and clients for the long-lived ones.
pub struct Connector {
    kind: Kind,
    /// Changes each time the primary moves (Sentinel); never in the other modes.
    moved: watch::Receiver<u64>,
}

impl Connector {
    /// Connect lazily to `target`: nothing is asked of Redis until the first command, so a
    /// Redis that is down at start does not stop the server. `appends_wait` is how long an
    /// append may wait for replicas (0: appends share the command connection).
    pub fn new(
        target: &Target,
        config: ConnectionManagerConfig,
        appends_wait: Option<Duration>,
    ) -> RedisResult<Connector> {
        let long_reply = Duration::from_secs(1) + appends_wait.unwrap_or_default();
        let appends_config = config.clone().set_response_timeout(Some(long_reply));
        let (moved_tx, moved) = watch::channel(0);
        let kind = match target {
            Target::Single(url) => {
                let client = redis::Client::open(url.as_str())?;
                let commands = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
                let appends = match appends_wait {
                    Some(_) => {
                        ConnectionManager::new_lazy_with_config(client.clone(), appends_config)?
                    }
                    None => commands.clone(),
                };
                Kind::Single {
                    client,
                    commands,
                    appends,
                }
            }
            Target::Sentinel {
                sentinels,
                master,
                username,
                password,
            } => {
                let mut node = redis::RedisConnectionInfo::default();
                if let Some(u) = username {
                    node = node.set_username(u.clone());
                }
                if let Some(p) = password {
                    node = node.set_password(p.clone());
                }
                let info = SentinelNodeConnectionInfo::default().set_redis_connection_info(node);
                let build = |server_type| {
                    SentinelClient::build(
                        sentinels.clone(),
                        master.clone(),
                        Some(info.clone()),
                        server_type,
                    )
                };
                let sentinel = build(SentinelServerType::Master)?;
                let replicas = match appends_wait {
                    Some(_) => Some(tokio::sync::Mutex::new(build(SentinelServerType::Replica)?)),
                    None => None,
                };
                Kind::Sentinel(Arc::new(SentinelLink {
                    sentinel: tokio::sync::Mutex::new(sentinel),
                    master: master.clone(),
                    watching: tokio::sync::Mutex::default(),
                    replicas,
                    primary: Mutex::default(),
                    commands_config: config,
                    appends_config,
                    moved: moved_tx,
                }))
            }
            Target::Cluster(nodes) => {
                let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .retries(3)
                    .build()?;
                // An append is not idempotent, and the crate also sends a command again
                // after a dropped connection (when it may have run): appends are never
                // retried here; a failed one is a 503, which a client retries under its
                // Idempotency-Key.
                let appends_client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .retries(0)
                    .build()?;
                let cluster_config = |timeout: Duration| {
                    redis::cluster::ClusterConfig::new()
                        .set_connection_timeout(Duration::from_secs(1))
                        .set_response_timeout(timeout)
                };
                let commands = client.get_pending_async_connection_with_config(cluster_config(
                    Duration::from_secs(1),
                ));
                let appends = appends_client
                    .get_pending_async_connection_with_config(cluster_config(long_reply));
                let seeds = nodes
                    .iter()
                    .map(|n| redis::Client::open(n.as_str()))
                    .collect::<RedisResult<Vec<_>>>()?;
                Kind::Cluster(Box::new(ClusterLink {
                    client,
                    commands,
                    appends,
                    seeds,
                    next_seed: AtomicUsize::new(0),
                }))
            }
        };
        Ok(Connector { kind, moved })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.kind, Kind::Cluster(_))
    }

    /// The connection for commands (`Role::Commands`) or appends.
    pub fn commands(&self, role: Role) -> BusConn {
        match (&self.kind, role) {
            (Kind::Single { commands, .. }, Role::Commands) => BusConn::Manager(commands.clone()),
            (Kind::Single { appends, .. }, Role::Appends) => BusConn::Manager(appends.clone()),
            (Kind::Cluster(c), Role::Commands) => BusConn::Cluster(c.commands.clone()),
            (Kind::Cluster(c), Role::Appends) => BusConn::Cluster(c.appends.clone()),
            (Kind::Sentinel(link), role) => BusConn::Sentinel(link.clone(), role),
        }
    }

    /// A client on the node for a long-lived connection now: the server, the current
    /// primary, or (cluster, for pub/sub) the next node given.
    pub async fn client(&self) -> RedisResult<redis::Client> {
        match &self.kind {
            Kind::Single { client, .. } => Ok(client.clone()),
            Kind::Sentinel(link) => Ok(link.current().await?.client.clone()),
            Kind::Cluster(c) => {
                let i = c.next_seed.fetch_add(1, Ordering::Relaxed) % c.seeds.len().max(1);
                c.seeds.get(i).cloned().ok_or_else(|| {
                    redis::RedisError::from((ErrorKind::InvalidClientConfig, "no cluster node"))
                })
            }
        }
    }

    /// A connection of its own (the stream reader's `XREAD BLOCK` holds it), answering
    /// within `timeout`.
    ///
    /// Sentinel with `redis_min_replicas`: on a replica, and only there. A replica holds
    /// only what was replicated, so after a failover the reader has delivered nothing the
    /// new primary lacks: appends that reached the old primary in the moments before the
    /// switch (answered 503, since no replica confirmed them, and sent again) are never
    /// read, and are not delivered twice. With no replica, nothing new can be confirmed
    /// either: the reader waits for one (the instance reports itself degraded meanwhile).
    pub async fn dedicated(&self, timeout: Duration) -> RedisResult<BusConn> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(timeout));
        if let Kind::Sentinel(link) = &self.kind
            && let Some(replicas) = &link.replicas
        {
            let client = replicas.lock().await.async_get_client().await?;
            return Ok(BusConn::Dedicated(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            ));
        }
        match &self.kind {
            Kind::Cluster(c) => {
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(Duration::from_secs(2))
                    .set_response_timeout(timeout);
                Ok(BusConn::Cluster(
                    c.client.get_async_connection_with_config(config).await?,
                ))
            }
            _ => {
                let client = self.client().await?;
                Ok(BusConn::Dedicated(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                ))
            }
        }
    }

    /// Whether [`Connector::dedicated`] gives a replica (Sentinel with
    /// `redis_min_replicas`).
    pub fn reads_replicas(&self) -> bool {
        matches!(&self.kind, Kind::Sentinel(link) if link.replicas.is_some())
    }

    /// Changes when the primary moved (Sentinel): long-lived connections reconnect.
    pub fn moved(&self) -> watch::Receiver<u64> {
        self.moved.clone()
    }

    /// Sentinel: ask where the primary is every [`WATCH_EVERY`] until `stop` (a failover
    /// is followed within that, not when the old primary is demoted ~10 s later).
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let Kind::Sentinel(link) = &self.kind else {
            return;
        };
        loop {
            if let Err(e) = link.follow().await {
                tracing::debug!(error = %e, "the sentinels did not say where the primary is");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(WATCH_EVERY) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_gets_one_hash_tag() {
        assert_eq!(hash_tagged("logstream:logs"), "{logstream:logs}");
        assert_eq!(hash_tagged("{app}:logs"), "{app}:logs");
        assert_eq!(hash_tagged("a{}b"), "{a{}b}", "an empty tag is no tag");
        assert_eq!(hash_tagged("a{b"), "{a{b}");
    }
}
