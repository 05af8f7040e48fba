//! Read amplification of the Redis bus (issue 24): stream entries read from Redis per log
//! ingested, with one stream and with logs sharded by device (`redis_stream_shards`).
//!
//! `cargo bench --bench shards -- [--seconds 10] [--rate 5000] [--instances 4]`
//!
//! One `redis-server` and `--instances` release logstream servers on it. Each instance has
//! one client (raw engine.io v4 WebSocket, `batch: true`) subscribed to its own devices:
//! with 8 shards, the devices of 2 shards per instance (disjoint sets); every device is
//! watched by exactly one instance. Logs of all devices are POSTed round-robin over the
//! instances at `--rate` logs/s in 20 ms ticks. Reported per setup: entries read from Redis
//! per ingested log (the sum of every instance's `bus.entriesRead`, which counts history,
//! live and wake-up reads), logs delivered per ingested log (should be 1: each log reaches
//! the one client of its device), and the CPU per ingested log of the instances together
//! and of Redis.
//!
//! Setups: one stream (today: every instance reads everything), 8 shards with the disjoint
//! clients, and 8 shards with every client unscoped (each instance needs every shard).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;
use support::{Server, cpu_seconds, scratch_dir};

#[path = "../tests/common/redis.rs"]
#[allow(dead_code)]
mod redis_servers;
use redis_servers::RedisServer;

const KEYS: support::Keys = support::Keys {
    secret: "bench-secret-0123456789abcdef",
    api_key: "bench-api-key",
    admin_key: "bench-admin-key",
};

const SHARDS: usize = 8;
/// Devices per shard.
const PER_SHARD: usize = 8;

struct Args {
    seconds: u64,
    rate: usize,
    instances: usize,
}

fn args() -> Args {
    Args {
        seconds: support::flag("--seconds", 10).max(1),
        rate: support::flag("--rate", 5000).max(50) as usize,
        instances: support::flag("--instances", 4).clamp(1, SHARDS as u64) as usize,
    }
}

/// `PER_SHARD` device ids for each of the `SHARDS` shards.
fn devices_by_shard() -> Vec<Vec<String>> {
    let mut by_shard = vec![Vec::new(); SHARDS];
    for i in 0.. {
        let d = format!("dev-{i:04}");
        let s = logstream::shards::shard_of(&d, SHARDS);
        if by_shard[s].len() < PER_SHARD {
            by_shard[s].push(d);
        }
        if by_shard.iter().all(|v| v.len() == PER_SHARD) {
            break;
        }
    }
    by_shard
}

async fn bus(http: &reqwest::Client, url: &str) -> Value {
    let r = http
        .get(format!("{url}/api/ws/health"))
        .send()
        .await
        .expect("health");
    r.json::<Value>().await.expect("health json")["data"]["bus"].clone()
}

struct Figures {
    commands: u64,
    ingested: u64,
    delivered: u64,
    read: u64,
    servers_us: f64,
    redis_us: f64,
}

/// Commands Redis has processed so far (`INFO stats`).
async fn commands(redis: &RedisServer) -> u64 {
    let stats: String = redis.query(redis::cmd("INFO").arg("stats")).await;
    stats
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

async fn run(a: &Args, shards: usize, scoped: bool) -> Figures {
    let redis = RedisServer::start();
    let bin = env!("CARGO_BIN_EXE_logstream");
    let env = vec![("LOGSTREAM_REDIS_URL".to_owned(), redis.url())];
    let sets = vec![
        format!("redis_stream_shards={shards}"),
        "stats_interval_ms=3600000".to_owned(),
        "rate_limit=1000000".to_owned(),
        "max_client_rate_limit=1000000".to_owned(),
    ];
    let servers: Vec<Server> = (0..a.instances)
        .map(|_| Server::start(bin, &KEYS, &env, &sets))
        .collect();
    let http = reqwest::Client::new();
    let by_shard = devices_by_shard();
    let got = Arc::new(AtomicU64::new(0));
    // Instance i watches shards i, i + instances, …: disjoint, together all of them.
    for (i, s) in servers.iter().enumerate() {
        let mine: Vec<&String> = by_shard
            .iter()
            .enumerate()
            .filter(|(shard, _)| shard % a.instances == i)
            .flat_map(|(_, d)| d)
            .collect();
        let sub = if scoped {
            json!({ "deviceIds": mine, "batch": true })
        } else {
            json!({ "batch": true })
        };
        tokio::spawn(support::subscriber(
            s.url.clone(),
            support::token(KEYS.secret, &format!("u{i}")),
            sub,
            got.clone(),
        ));
    }
    // Ready: every instance connected and reading what its client needs.
    let wanted_per_instance = match (shards, scoped) {
        (1, _) => 1,
        (_, true) => SHARDS / a.instances,
        (_, false) => SHARDS,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    for s in &servers {
        loop {
            let b = bus(&http, &s.url).await;
            let reading = b["shardsRead"].as_array().map_or(0, Vec::len);
            if b["state"] == "connected" && reading >= wanted_per_instance {
                break;
            }
            assert!(Instant::now() < deadline, "never ready: {b}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all: Vec<String> = by_shard.into_iter().flatten().collect();
    let read0: u64 = {
        let mut n = 0;
        for s in &servers {
            n += bus(&http, &s.url).await["entriesRead"]
                .as_u64()
                .unwrap_or(0);
        }
        n
    };
    let got0 = got.load(Ordering::Relaxed);
    let commands0 = commands(&redis).await;
    let cpu0: f64 = servers.iter().map(|s| cpu_seconds(s.pid())).sum();
    let redis0 = cpu_seconds(redis.pid());
    let tick = Duration::from_millis(20);
    let per_tick = (a.rate / 50).max(1);
    let ticks = a.seconds * 50;
    let mut ingested = 0u64;
    let mut next = tokio::time::Instant::now();
    for t in 0..ticks {
        let logs: Vec<Value> = (0..per_tick)
            .map(|j| {
                let k = t as usize * per_tick + j;
                json!({
                    "deviceId": all[k % all.len()],
                    "level": "INFO",
                    "message": format!("GET /api/v1/items/{k} 200 in {} ms", k % 900),
                })
            })
            .collect();
        let url = &servers[t as usize % servers.len()].url;
        let r = http
            .post(format!("{url}/api/logs"))
            .header("x-api-key", KEYS.api_key)
            .json(&logs)
            .send()
            .await
            .expect("post");
        if r.status().is_success() {
            ingested += per_tick as u64;
        }
        next += tick;
        tokio::time::sleep_until(next).await;
    }
    // Everything delivered (or 5 s).
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.load(Ordering::Relaxed) - got0 < ingested && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut read = 0;
    for s in &servers {
        read += bus(&http, &s.url).await["entriesRead"]
            .as_u64()
            .unwrap_or(0);
    }
    let servers_cpu: f64 = servers.iter().map(|s| cpu_seconds(s.pid())).sum::<f64>() - cpu0;
    let redis_cpu = cpu_seconds(redis.pid()) - redis0;
    let commands = commands(&redis).await - commands0;
    Figures {
        commands,
        ingested,
        delivered: got.load(Ordering::Relaxed) - got0,
        read: read - read0,
        servers_us: servers_cpu * 1e6 / ingested.max(1) as f64,
        redis_us: redis_cpu * 1e6 / ingested.max(1) as f64,
    }
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "read amplification: {} instances on one redis-server, {} logs/s for {} s, {} devices",
        a.instances,
        a.rate,
        a.seconds,
        SHARDS * PER_SHARD
    );
    let setups: [(&str, usize, bool); 3] = [
        ("one stream (redis_stream_shards = 1)", 1, true),
        (
            "8 shards, each instance's clients on their own devices",
            8,
            true,
        ),
        ("8 shards, every client unscoped", 8, false),
    ];
    println!();
    println!(
        "| setup | logs ingested | entries read per log | delivered per log | Redis commands per log | logstream CPU per log (all instances) | Redis CPU per log |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, shards, scoped) in setups {
        let f = rt.block_on(run(&a, shards, scoped));
        let per = |n: u64| n as f64 / f.ingested.max(1) as f64;
        println!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.1} µs | {:.1} µs |",
            f.ingested,
            per(f.read),
            per(f.delivered),
            per(f.commands),
            f.servers_us,
            f.redis_us
        );
    }
}
