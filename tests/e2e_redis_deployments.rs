//! The Redis deployments people run, with real servers started here: a primary and replica
//! watched by three sentinels (`redis+sentinel://`), and a Redis Cluster of three primaries
//! with a replica each (`redis+cluster://`). A failover during ingest: with
//! `redis_min_replicas = 1` every log answered 202 reaches every matching client once, in
//! order, and a client that resumes recovers. Sharded streams spread over a cluster's
//! primaries, and a manual failover of one shard's primary loses and repeats nothing.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::redis::{RedisCluster, SentinelSet};
use common::{API_KEY, Server, TestClient, eventually, log};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

fn builder(url: &str, id: &str) -> common::ServerBuilder {
    Server::builder()
        .env("LOGSTREAM_REDIS_URL", url)
        .set("instance_id", id)
        .set("rate_limit", 100_000)
}

/// Appends wait for a replica.
fn instance(url: &str, id: &str) -> Server {
    builder(url, id)
        .set("redis_min_replicas", 1)
        .set("redis_min_replicas_timeout_ms", 500)
        .start()
}

/// Logs spread over 8 shards (on a cluster, without `redis_min_replicas`: refused there).
fn sharded(url: &str, id: &str) -> Server {
    builder(url, id).set("redis_stream_shards", SHARDS).start()
}

const SHARDS: usize = 8;

async fn ready(server: &Server) {
    eventually(T, "the bus is connected", || async {
        let h = server.get("/api/ws/health", &[]).await.1;
        if h["data"]["bus"]["state"] == "connected" {
            Ok(())
        } else {
            Err(h.to_string())
        }
    })
    .await;
}

/// Post batch `i` (5 logs of device `dev`) under its own Idempotency-Key until a 2xx, for
/// at most `T`.
async fn post_until_accepted(server: &Server, dev: &str, i: usize) {
    let body = Value::Array(
        (0..5)
            .map(|j| log(dev, "INFO", &format!("m{:05}", i * 5 + j)))
            .collect(),
    )
    .to_string();
    let key = format!("batch-{i}");
    let deadline = std::time::Instant::now() + T;
    loop {
        let (s, _) = server
            .post(
                "/api/logs",
                &[("x-api-key", API_KEY), ("idempotency-key", &key)],
                &body,
            )
            .await;
        if (200..300).contains(&s) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "batch {i} never accepted ({s})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `batches` batches posted through `servers` in turn, one after another, while `during`
/// runs (a failover) once `at` of them were accepted.
async fn ingest_across(
    servers: &[Arc<Server>],
    dev: &str,
    batches: usize,
    at: usize,
    during: impl FnOnce() + Send + 'static,
) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let failing_over = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (accepted, failing_over) = (accepted.clone(), failing_over.clone());
        tokio::task::spawn_blocking(move || {
            while accepted.load(Ordering::Relaxed) < at {
                std::thread::sleep(Duration::from_millis(10));
            }
            failing_over.store(true, Ordering::Relaxed);
            during();
        })
    };
    for i in 0..batches {
        post_until_accepted(&servers[i % servers.len()], dev, i).await;
        accepted.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    watcher.await.unwrap();
    assert!(failing_over.load(Ordering::Relaxed));
}

/// `c` got the logs of `batches` batches, each once, in order, and nothing more.
async fn got_every_batch(c: &mut TestClient, batches: usize) {
    let want = expected(batches);
    let mut got = messages(&c.logs(want.len(), T).await);
    got.extend(messages(
        &c.drain("log:new", Duration::from_millis(500)).await,
    ));
    same(&got, &want, "each once, in order");
}

fn expected(batches: usize) -> Vec<String> {
    (0..batches * 5).map(|n| format!("m{n:05}")).collect()
}

/// `got` is `want`: else say what is missing, repeated or out of place.
fn same(got: &[String], want: &[String], what: &str) {
    if got == want {
        return;
    }
    let mut seen = std::collections::HashMap::new();
    for g in got {
        *seen.entry(g.as_str()).or_insert(0) += 1;
    }
    let twice: Vec<&&str> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(m, _)| m)
        .collect();
    let missing: Vec<&String> = want
        .iter()
        .filter(|w| !seen.contains_key(w.as_str()))
        .collect();
    let first_off = got.iter().zip(want).position(|(g, w)| g != w);
    panic!(
        "{what}: {} got, {} wanted; twice {twice:?}; missing {missing:?}; first out of place at {first_off:?}",
        got.len(),
        want.len()
    );
}

/// Instances `a` and `b` on `url`, ready; a client of `a` subscribed to `dev`, and one of
/// `b` connected (the test subscribes it).
async fn two_instances(
    url: &str,
    dev: &str,
    start: fn(&str, &str) -> Server,
) -> (Arc<Server>, Arc<Server>, TestClient, TestClient) {
    let a = Arc::new(start(url, "a"));
    let b = Arc::new(start(url, "b"));
    ready(&a).await;
    ready(&b).await;
    let mut on_a = a.client("watcher-a").await;
    on_a.subscribe(json!({ "deviceIds": [dev] })).await;
    let on_b = b.client("watcher-b").await;
    (a, b, on_a, on_b)
}

fn messages(logs: &[Value]) -> Vec<String> {
    logs.iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_during_ingest_loses_and_repeats_nothing_answered_202() {
    let set = Arc::new(SentinelSet::start());
    let (a, b, mut on_a, mut on_b) = two_instances(&set.url(), "s", instance).await;
    let ack = on_b
        .subscribe(json!({ "deviceIds": ["s"], "resume": true }))
        .await;
    let session = ack["session"].as_str().unwrap().to_owned();
    let first_primary = set.primary_port();

    let batches = 120;
    let failover = set.clone();
    ingest_across(&[a.clone(), b.clone()], "s", batches, 40, move || {
        failover.failover()
    })
    .await;
    assert_ne!(
        set.primary_port(),
        first_primary,
        "the sentinels moved the primary"
    );

    got_every_batch(&mut on_a, batches).await;
    let want = expected(batches);
    // A client that resumes its session after the failover recovers (on the other
    // instance), from the offset of the last log it got.
    let got_b = on_b.logs(200, T).await;
    let offset = on_b.offset_of(got_b.last().unwrap()).expect("offsets");
    on_b.disconnect().await;
    let auth = json!({ "token": Server::token("watcher-b"), "session": session, "offset": offset });
    let mut resumed = TestClient::connect_auth(&a.url, Some(auth)).await.unwrap();
    let event = resumed.next("log:subscribed").await;
    assert_eq!(event["recovered"], true, "{event}");
    let mut rest = messages(&resumed.logs(want.len() - 200, T).await);
    rest.extend(messages(
        &resumed.drain("log:new", Duration::from_millis(500)).await,
    ));
    same(&rest, &want[200..], "the rest, once, after resuming");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_during_ingest_loses_and_repeats_nothing_answered_202() {
    let cluster = Arc::new(RedisCluster::start());
    let (a, b, mut on_a, mut on_b) = two_instances(&cluster.url(), "c", instance).await;
    // Resumable: its session is saved by a script, in the stream's slot.
    let ack = on_b
        .subscribe(json!({ "deviceIds": ["c"], "resume": true }))
        .await;
    assert!(ack["session"].is_string(), "{ack}");

    let batches = 120;
    let failover = cluster.clone();
    ingest_across(&[a.clone(), b.clone()], "c", batches, 40, move || {
        // Every key of the bus carries the stream's hash tag: its primary holds them all.
        failover.failover_of("{logstream:logs}")
    })
    .await;

    for c in [&mut on_a, &mut on_b] {
        got_every_batch(c, batches).await;
    }
    // Admin views span the cluster (heartbeats in one sorted set, not a SCAN of one node).
    eventually(T, "both instances answer a cluster view", || async {
        let (_, stats) = a
            .get("/api/ws/stats", &[("x-api-key", common::ADMIN_KEY)])
            .await;
        if stats["data"]["instances"].as_array().map(Vec::len) == Some(2)
            && stats["data"]["sessions"]["sessions"] == 1
        {
            Ok(())
        } else {
            Err(stats.to_string())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_streams_spread_over_the_cluster_primaries_and_survive_a_failover() {
    let cluster = Arc::new(RedisCluster::start());
    // One WAIT covers one primary: shards with redis_min_replicas on a cluster are refused.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_logstream"))
        .args(["serve", "--host", "127.0.0.1", "--port", "0"])
        .args([
            "--set",
            "redis_stream_shards=8",
            "--set",
            "redis_min_replicas=1",
        ])
        .env("LOGSTREAM_REDIS_URL", cluster.url())
        .env(
            "LOGSTREAM_DATA_DIR",
            common::scratch_dir("shards-wait").display().to_string(),
        )
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("redis_stream_shards > 1 with redis_min_replicas"),
        "{said}"
    );

    let (a, b, mut on_a, mut on_b) = two_instances(&cluster.url(), "c", sharded).await;
    let ack = on_b
        .subscribe(json!({ "deviceIds": ["c"], "resume": true }))
        .await;
    assert!(ack["session"].is_string(), "{ack}");
    // Each shard its own hash tag: the shards live on several primaries.
    let primaries: std::collections::BTreeSet<String> = (0..SHARDS)
        .map(|i| cluster.primary_of(&format!("{{logstream:logs:{i}}}")))
        .collect();
    assert!(primaries.len() >= 2, "{primaries:?}");
    // One request whose logs go to shards on different primaries, without a key: one
    // transaction per shard (a cluster pipeline reaches one node).
    let mut spread: Vec<String> = Vec::new();
    for i in 0.. {
        let d = format!("spread-{i}");
        let s = logstream::shards::shard_of(&d, SHARDS);
        if !spread
            .iter()
            .any(|p| logstream::shards::shard_of(p, SHARDS) == s)
        {
            spread.push(d);
        }
        if spread.len() == 4 {
            break;
        }
    }
    let mut watcher = a.client("spread").await;
    watcher.subscribe(json!({ "deviceIds": spread })).await;
    let body = Value::Array(spread.iter().map(|d| log(d, "INFO", d)).collect());
    let (status, answer) = a
        .post("/api/logs", &[("x-api-key", API_KEY)], &body.to_string())
        .await;
    assert_eq!(status, 202, "{answer}");
    let mut got = messages(&watcher.logs(spread.len(), T).await);
    got.sort();
    let mut want = spread.clone();
    want.sort();
    assert_eq!(got, want);

    let batches = 120;
    let failover = cluster.clone();
    let shard = logstream::shards::shard_of("c", SHARDS);
    ingest_across(&[a.clone(), b.clone()], "c", batches, 40, move || {
        // A coordinated failover (the replica catches up first): nothing acknowledged is
        // lost even without WAIT.
        failover.failover_of(&format!("{{logstream:logs:{shard}}}"))
    })
    .await;
    for c in [&mut on_a, &mut on_b] {
        got_every_batch(c, batches).await;
    }
}
