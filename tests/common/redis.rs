//! A real `redis-server` on a free port, started and stopped by the test.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// With persistence: the directory of its append-only file.
    dir: Option<std::path::PathBuf>,
    /// A replica: its primary's port.
    primary: Option<u16>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port())
    }

    pub fn start_on(port: u16) -> RedisServer {
        RedisServer::launch(port, None, None)
    }

    /// A replica of `primary` (`--replicaof`), on a free port.
    pub fn start_replica_of(primary: &RedisServer) -> RedisServer {
        RedisServer::launch(free_port(), None, Some(primary.port))
    }

    /// A Redis that keeps its data across restarts (append-only file, fsync always).
    pub fn start_persistent() -> RedisServer {
        RedisServer::launch(free_port(), Some(super::scratch_dir("redis")), None)
    }

    /// Kill it and start it again on the same port (and data, if persistent).
    pub fn restart(&mut self) {
        self.stop();
        *self = RedisServer::launch(self.port, self.dir.clone(), self.primary);
    }

    fn launch(port: u16, dir: Option<std::path::PathBuf>, primary: Option<u16>) -> RedisServer {
        let mut cmd = redis_server(port);
        match &dir {
            Some(d) => {
                cmd.args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                    .arg(d);
            }
            None => {
                // A directory of its own even without persistence: a replica writes the
                // primary's snapshot there (`dump.rdb`), and a server started later in the
                // same directory would load it.
                cmd.args(["--appendonly", "no", "--dir"])
                    .arg(super::scratch_dir("redis-mem"));
            }
        }
        if let Some(p) = primary {
            cmd.args(["--replicaof", "127.0.0.1", &p.to_string()]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): install it (apt-get install redis-server) or run .ci/run")
            });
        wait_listening(port);
        RedisServer {
            child: Some(child),
            port,
            dir,
            primary,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Freeze it (SIGSTOP): its connections stay open, it answers nothing.
    pub fn freeze(&self) {
        let _ = Command::new("kill")
            .args(["-STOP", &self.pid().to_string()])
            .status();
    }

    /// Let it run again (SIGCONT).
    pub fn thaw(&self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.pid().to_string()])
            .status();
    }

    /// Its process id (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Kill the server (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `PUBLISH channel payload`, as `redis-cli` would.
    pub async fn publish(&self, channel: &str, payload: &str) {
        self.publish_in_order(channel, &[payload.to_owned()]).await;
    }

    /// Run one command and read its answer.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let client = redis::Client::open(self.url()).expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis");
        cmd.query_async(&mut conn).await.expect("redis command")
    }

    /// `PUBLISH channel p` for each payload, one after another on one connection, as a
    /// publisher that sends a burst would.
    pub async fn publish_in_order(&self, channel: &str, payloads: &[String]) {
        let client = redis::Client::open(self.url()).expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis");
        for payload in payloads {
            let _: i64 = redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .query_async(&mut conn)
                .await
                .expect("publish");
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Sentinel-watched pair: a primary, its replica and three sentinels (`redis-server
/// --sentinel`, each with a config file of its own that it rewrites), master name
/// `mymaster`, quorum 2.
pub struct SentinelSet {
    pub primary: RedisServer,
    pub replica: RedisServer,
    sentinels: Vec<Child>,
    pub sentinel_ports: Vec<u16>,
}

impl SentinelSet {
    pub fn start() -> SentinelSet {
        let primary = RedisServer::start();
        let replica = RedisServer::start_replica_of(&primary);
        let mut sentinels = Vec::new();
        let mut sentinel_ports = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let dir = super::scratch_dir("sentinel");
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {} 2\nsentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n",
                    dir.display(),
                    primary.port
                ),
            )
            .unwrap();
            let child = spawn_quiet(
                Command::new("redis-server").arg(&conf).arg("--sentinel"),
                port,
            );
            sentinels.push(child);
            sentinel_ports.push(port);
        }
        let set = SentinelSet {
            primary,
            replica,
            sentinels,
            sentinel_ports,
        };
        // Ready when every sentinel knows the replica (it can fail over to it).
        wait_until(
            "the sentinels did not find the replica",
            Duration::from_secs(30),
            Duration::from_millis(200),
            || {
                set.sentinel_ports.iter().all(|p| {
                    sentinel_query(*p, &["SENTINEL", "REPLICAS", "mymaster"])
                        .contains(&set.replica.port.to_string())
                })
            },
        );
        set
    }

    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinel_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{}/mymaster", hosts.join(","))
    }

    /// The process ids of the data nodes and the sentinels.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.primary.pid(), self.replica.pid()];
        pids.extend(self.sentinels.iter().map(Child::id));
        pids
    }

    /// The port of the primary the sentinels name now.
    pub fn primary_port(&self) -> u16 {
        let answer = sentinel_query(
            self.sentinel_ports[0],
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"],
        );
        answer
            .lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0)
    }

    /// `SENTINEL FAILOVER mymaster`, then wait until the sentinels name the replica.
    pub fn failover(&self) {
        let before = self.primary_port();
        sentinel_query(
            self.sentinel_ports[0],
            &["SENTINEL", "FAILOVER", "mymaster"],
        );
        wait_until(
            "no failover",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || self.primary_port() != before,
        );
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        kill_all(&mut self.sentinels);
    }
}

/// Kill and reap `children`.
fn kill_all(children: &mut [Child]) {
    for c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// `redis-cli -p port args…`, its output.
fn sentinel_query(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Start `cmd` with its output discarded, and wait until it listens on `port`.
fn spawn_quiet(cmd: &mut Command, port: u16) -> Child {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server, or run .ci/run)");
    wait_listening(port);
    child
}

fn wait_listening(port: u16) {
    wait_until(
        &format!("nothing listens on {port}"),
        Duration::from_secs(10),
        Duration::from_millis(20),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
}

/// `redis-server` on `port` of 127.0.0.1, without snapshots (the caller adds the rest).
fn redis_server(port: u16) -> Command {
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
    ]);
    cmd
}

/// A Redis Cluster of three primaries, each with a replica (`--cluster-enabled`, then
/// `redis-cli --cluster create … --cluster-replicas 1`).
pub struct RedisCluster {
    nodes: Vec<Child>,
    pub ports: Vec<u16>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let mut nodes = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..6 {
            let port = free_port();
            let dir = super::scratch_dir("redis-cluster");
            let child = spawn_quiet(
                redis_server(port)
                    .args(["--appendonly", "no", "--cluster-enabled", "yes"])
                    .args(["--cluster-node-timeout", "2000", "--dir"])
                    .arg(&dir),
                port,
            );
            nodes.push(child);
            ports.push(port);
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stdout)
        );
        let cluster = RedisCluster { nodes, ports };
        wait_until(
            "the cluster did not come up",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                cluster
                    .ports
                    .iter()
                    .all(|p| sentinel_query(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
            },
        );
        cluster
    }

    pub fn url(&self) -> String {
        format!(
            "redis+cluster://127.0.0.1:{},127.0.0.1:{}",
            self.ports[0], self.ports[1]
        )
    }

    /// The process ids of its nodes.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(Child::id).collect()
    }

    /// Fail over the primary that holds `key`: `CLUSTER FAILOVER` on one of its replicas;
    /// returns once that replica is a primary.
    pub fn failover_of(&self, key: &str) {
        let owner = self.primary_of(key);
        let nodes = sentinel_query(self.ports[0], &["CLUSTER", "NODES"]);
        let replica_port: u16 = nodes
            .lines()
            .find(|l| l.contains("slave") && l.contains(&owner))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|addr| addr.split(['@', ':']).nth(1))
            .and_then(|p| p.parse().ok())
            .expect("a replica of the slot's primary");
        sentinel_query(replica_port, &["CLUSTER", "FAILOVER"]);
        wait_until(
            "the replica did not take over",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || sentinel_query(replica_port, &["ROLE"]).starts_with("master"),
        );
    }

    /// The node id of the primary that holds `key`.
    pub fn primary_of(&self, key: &str) -> String {
        let slot = sentinel_query(self.ports[0], &["CLUSTER", "KEYSLOT", key]);
        let slot: u16 = slot.trim().parse().expect("a slot");
        let nodes = sentinel_query(self.ports[0], &["CLUSTER", "NODES"]);
        nodes
            .lines()
            .find(|l| {
                l.contains("master")
                    && l.split_whitespace().skip(8).any(|range| {
                        let (a, b) = range.split_once('-').unwrap_or((range, range));
                        a.parse::<u16>().is_ok_and(|a| a <= slot)
                            && b.parse::<u16>().is_ok_and(|b| slot <= b)
                    })
            })
            .and_then(|l| l.split_whitespace().next())
            .expect("the slot's primary")
            .to_owned()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        kill_all(&mut self.nodes);
    }
}

/// Poll `done` every `every` until it holds; fail with `what` after `within`.
fn wait_until(what: &str, within: Duration, every: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(every);
    }
}
