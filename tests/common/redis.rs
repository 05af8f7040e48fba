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
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ]);
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
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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
