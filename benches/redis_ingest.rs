//! Ingest through the Redis deployments of issue 24: what a replicated acknowledgement
//! (`redis_min_replicas`), Sentinel, a Redis Cluster and logs sharded by device
//! (`redis_stream_shards = 8`, on one Redis and over the cluster's primaries) cost, on this
//! machine. With one stream an instance reads every log back whether or not a client
//! listens; with shards it reads only what its clients need, so the sharded rows run both
//! with no client and with one client subscribed to everything (which makes the instance
//! read every shard, like the one stream).
//!
//! `cargo bench --bench redis_ingest -- [--seconds 10] [--posters 4]`
//!
//! For each deployment, real `redis-server`s started here and one release logstream server
//! on it (`LOGSTREAM_REDIS_URL`): `--posters` loops POST batches of 50 fleet log lines
//! (~300 bytes each) back to back for `--seconds`, each with its own `Idempotency-Key` (as
//! `logstream ship` sends). Reported: logs/s answered 202, p50 / p99 of a POST, CPU per log
//! of logstream and of all the Redis processes together. Everything shares two cores, so
//! the ratios between rows say more than the absolute figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;
use support::{Server, cpu_seconds, percentile, scratch_dir};

#[path = "../tests/common/redis.rs"]
#[allow(dead_code)]
mod redis_servers;
use redis_servers::{RedisCluster, RedisServer, SentinelSet};

const KEYS: support::Keys = support::Keys {
    secret: "bench-secret-0123456789abcdef",
    api_key: "bench-api-key",
    admin_key: "bench-admin-key",
};

struct Args {
    seconds: u64,
    posters: usize,
}

fn args() -> Args {
    Args {
        seconds: support::flag("--seconds", 10).max(1),
        posters: support::flag("--posters", 4).max(1) as usize,
    }
}

/// A deployment and the processes to charge its CPU to.
enum Deployment {
    Single(RedisServer),
    Replicated(RedisServer, RedisServer),
    Sentinel(SentinelSet),
    Cluster(RedisCluster),
}

impl Deployment {
    fn url(&self) -> String {
        match self {
            Deployment::Single(r) | Deployment::Replicated(r, _) => r.url(),
            Deployment::Sentinel(s) => s.url(),
            Deployment::Cluster(c) => c.url(),
        }
    }

    fn pids(&self) -> Vec<u32> {
        match self {
            Deployment::Single(r) => vec![r.pid()],
            Deployment::Replicated(p, r) => vec![p.pid(), r.pid()],
            Deployment::Sentinel(s) => s.pids(),
            Deployment::Cluster(c) => c.pids(),
        }
    }
}

/// Batch `k` of 50 fleet log lines.
fn batch(k: u64) -> Value {
    Value::Array(
        (0..50u64)
            .map(|i| {
                let n = k * 50 + i;
                json!({
                    "deviceId": format!("dev-{:03}", n % 100),
                    "level": "INFO",
                    "message": format!("GET /api/v1/items/{n} 200 in {} ms from 10.0.0.{} user agent fleet-agent/2.4.1", n % 900, n % 250),
                })
            })
            .collect(),
    )
}

struct Figures {
    logs_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    server_us: f64,
    redis_us: f64,
    refused: u64,
}

/// What a row sets: `redis_min_replicas`, `redis_stream_shards`, and whether one client
/// subscribed to everything (so the instance reads every shard back, as it reads the one
/// stream whether or not anyone listens).
#[derive(Clone, Copy)]
struct Row {
    min_replicas: usize,
    shards: usize,
    reader: bool,
}

const fn row(min_replicas: usize, shards: usize, reader: bool) -> Row {
    Row {
        min_replicas,
        shards,
        reader,
    }
}

async fn run(name: &str, deployment: &Deployment, r: Row, a: &Args) -> Figures {
    let Row {
        min_replicas,
        shards,
        reader,
    } = r;
    let bin = env!("CARGO_BIN_EXE_logstream");
    let env = vec![("LOGSTREAM_REDIS_URL".to_owned(), deployment.url())];
    let sets = vec![
        format!("redis_min_replicas={min_replicas}"),
        format!("redis_stream_shards={shards}"),
        "stats_interval_ms=3600000".to_owned(),
        "history_max_logs=200000".to_owned(),
        // The reader takes everything: no per-client rate limit.
        "rate_limit=10000000".to_owned(),
        "max_client_rate_limit=10000000".to_owned(),
    ];
    let server = Server::start(bin, &KEYS, &env, &sets);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    // Ready: the bus is connected and a first batch is accepted.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = http
            .post(format!("{}/api/logs", server.url))
            .header("x-api-key", KEYS.api_key)
            .header("idempotency-key", format!("{name}-warm"))
            .json(&batch(u64::MAX / 100))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "{name}: never ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let delivered = Arc::new(AtomicU64::new(0));
    if reader {
        let token = support::token(KEYS.secret, "reader");
        let sub = json!({ "batch": true });
        tokio::spawn(support::subscriber(
            server.url.clone(),
            token,
            sub,
            delivered.clone(),
        ));
        // Subscribed and reading: the warm-up batch arrives.
        while delivered.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            let _ = http
                .post(format!("{}/api/logs", server.url))
                .header("x-api-key", KEYS.api_key)
                .json(&batch(u64::MAX / 100 - 1))
                .send()
                .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let delivered0 = delivered.load(Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let cpu0 = cpu_seconds(server.pid());
    let redis0: f64 = deployment.pids().iter().map(|p| cpu_seconds(*p)).sum();
    let t0 = Instant::now();
    let mut posters = Vec::new();
    for p in 0..a.posters {
        let (stop, accepted, refused, latencies, http, url) = (
            stop.clone(),
            accepted.clone(),
            refused.clone(),
            latencies.clone(),
            http.clone(),
            server.url.clone(),
        );
        let name = name.to_owned();
        posters.push(tokio::spawn(async move {
            let mut k = (p as u64) << 32;
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let ok = http
                    .post(format!("{url}/api/logs"))
                    .header("x-api-key", KEYS.api_key)
                    .header("idempotency-key", format!("{name}-{k}"))
                    .json(&batch(k))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                let us = sent.elapsed().as_micros() as u64;
                if ok {
                    accepted.fetch_add(50, Ordering::Relaxed);
                    latencies.lock().unwrap().push(us);
                    k += 1;
                } else {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for p in posters {
        let _ = p.await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let logs = accepted.load(Ordering::Relaxed).max(1) as f64;
    let server_cpu = cpu_seconds(server.pid()) - cpu0;
    let redis_cpu: f64 = deployment
        .pids()
        .iter()
        .map(|p| cpu_seconds(*p))
        .sum::<f64>()
        - redis0;
    if reader {
        // Everything accepted reaches the reader (or 10 s).
        let until = Instant::now() + Duration::from_secs(10);
        while delivered.load(Ordering::Relaxed) - delivered0 < accepted.load(Ordering::Relaxed)
            && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let got = delivered.load(Ordering::Relaxed) - delivered0;
        assert!(
            got >= accepted.load(Ordering::Relaxed),
            "{name}: the reader got {got} of {} logs",
            accepted.load(Ordering::Relaxed)
        );
    }
    let mut lat = std::mem::take(&mut *latencies.lock().unwrap());
    lat.sort_unstable();
    drop(server);
    Figures {
        logs_per_s: logs / elapsed,
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        server_us: server_cpu * 1e6 / logs,
        redis_us: redis_cpu * 1e6 / logs,
        refused: refused.load(Ordering::Relaxed),
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
        "redis ingest: {} posters of batches of 50 (each with an Idempotency-Key) for {} s",
        a.posters, a.seconds
    );
    let mut rows = Vec::new();
    type Make = fn() -> Deployment;
    let one: Make = || Deployment::Single(RedisServer::start());
    let cluster: Make = || Deployment::Cluster(RedisCluster::start());
    let plans: [(&str, Make, Row); 11] = [
        ("one Redis", one, row(0, 1, false)),
        ("one Redis, 8 shards, no client", one, row(0, 8, false)),
        (
            "one Redis, a client reading everything",
            one,
            row(0, 1, true),
        ),
        (
            "one Redis, 8 shards, a client reading everything",
            one,
            row(0, 8, true),
        ),
        (
            "primary + replica, redis_min_replicas = 1",
            || {
                let p = RedisServer::start();
                let r = RedisServer::start_replica_of(&p);
                Deployment::Replicated(p, r)
            },
            row(1, 1, false),
        ),
        (
            "Sentinel (primary, replica, 3 sentinels), redis_min_replicas = 1",
            || Deployment::Sentinel(SentinelSet::start()),
            row(1, 1, false),
        ),
        (
            "Cluster, 3 primaries + 3 replicas",
            cluster,
            row(0, 1, false),
        ),
        ("Cluster, 8 shards, no client", cluster, row(0, 8, false)),
        (
            "Cluster, a client reading everything",
            cluster,
            row(0, 1, true),
        ),
        (
            "Cluster, 8 shards, a client reading everything",
            cluster,
            row(0, 8, true),
        ),
        (
            "Cluster, 3 primaries + 3 replicas, redis_min_replicas = 1",
            cluster,
            row(1, 1, false),
        ),
    ];
    for (i, (name, make, settings)) in plans.into_iter().enumerate() {
        let deployment = make();
        let f = rt.block_on(run(&format!("d{i}"), &deployment, settings, &a));
        println!(
            "{name:<64} {:>8.0} logs/s  p50 {:>6.1} ms  p99 {:>6.1} ms  logstream {:>5.2} µs/log  redis {:>5.2} µs/log  refused {}",
            f.logs_per_s, f.p50_ms, f.p99_ms, f.server_us, f.redis_us, f.refused
        );
        rows.push((name, f));
        drop(deployment);
    }
    let base = rows[0].1.logs_per_s;
    println!();
    println!(
        "| deployment | logs/s (batches of 50) | vs one Redis | POST p50 | p99 | logstream CPU per log | Redis CPU per log |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, f) in rows {
        println!(
            "| {name} | {:.0} | {:.2}× | {:.1} ms | {:.1} ms | {:.2} µs | {:.2} µs |",
            f.logs_per_s,
            f.logs_per_s / base,
            f.p50_ms,
            f.p99_ms,
            f.server_us,
            f.redis_us
        );
    }
}
