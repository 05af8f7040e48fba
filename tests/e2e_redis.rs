//! Several logstream instances sharing one real `redis-server`: the seed's channels, exactly
//! once delivery wherever a log comes in, cluster-wide admin, and Redis outages.

mod common;

use std::time::Duration;

use common::redis::{RedisServer, free_port};
use common::{ADMIN_KEY, API_KEY, Server, TestClient, eventually, log};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(500);

fn instance_builder(redis_url: &str, id: &str) -> common::ServerBuilder {
    Server::builder()
        .env("LOGSTREAM_REDIS_URL", redis_url)
        .set("instance_id", id)
        .set("rate_limit", 100_000)
}

fn instance(redis_url: &str, id: &str) -> Server {
    instance_builder(redis_url, id).start()
}

fn messages(logs: &[Value]) -> Vec<String> {
    logs.iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect()
}

async fn health(server: &Server) -> Value {
    server.get("/api/ws/health", &[]).await.1["data"].clone()
}

/// Poll until `pred(health)` holds, for at most `within`.
async fn wait_health(server: &Server, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    eventually(within, "health reaches the expected state", || async {
        let h = health(server).await;
        if pred(&h) { Ok(h) } else { Err(h.to_string()) }
    })
    .await
}

async fn ready(server: &Server) {
    wait_health(server, T, |h| h["bus"]["state"] == "connected").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_log_reaches_each_matching_client_once_wherever_it_came_in() {
    let redis = RedisServer::start();
    let a = instance_builder(&redis.url(), "a")
        .env("RUST_LOG", "info")
        .capture_stderr()
        .start();
    let b = instance(&redis.url(), "b");
    ready(&a).await;
    ready(&b).await;
    let startup = a.stderr().join("\n");
    assert!(
        startup.contains("subscribed to redis") && !startup.contains("Channels {"),
        "the start-up line names the channels, not a Rust struct: {startup}"
    );
    let mut a1 = a.client("u1").await;
    a1.subscribe(json!({ "deviceIds": ["d1"] })).await;
    let mut a2 = a.client("u2").await;
    a2.subscribe(json!({})).await;
    let mut b1 = b.client("u3").await;
    b1.subscribe(json!({ "deviceIds": ["d1"], "levels": ["ERROR"] }))
        .await;
    let mut b2 = b.client("u4").await;
    b2.subscribe(json!({ "deviceIds": ["d2"], "batch": true }))
        .await;

    a.ingest(json!([log("d1", "INFO", "1"), log("d2", "ERROR", "2")]))
        .await;
    b.ingest(json!([log("d1", "ERROR", "3")])).await;
    redis
        .publish("log:new", &log("d2", "INFO", "4").to_string())
        .await;
    redis
        .publish(
            "log:new",
            &json!([log("d1", "error", "5"), log("d2", "WARN", "6")]).to_string(),
        )
        .await;
    redis.publish("log:new", "this is not json").await;
    redis.publish("log:new", r#"{"message":"no device"}"#).await;
    // Seed-channel publishes reach the stream through an instance's bridge, a moment after
    // Redis has delivered them: wait for them before the next HTTP ingest, whose order
    // against them is otherwise a race.
    let mut a2_logs = a2.logs(6, T).await;
    a.ingest(json!([log("d1", "INFO", "7")])).await;

    assert_eq!(messages(&a1.logs(4, T).await), ["1", "3", "5", "7"]);
    a2_logs.extend(a2.logs(1, T).await);
    assert_eq!(messages(&a2_logs), ["1", "2", "3", "4", "5", "6", "7"]);
    assert_eq!(messages(&b1.logs(2, T).await), ["3", "5"]);
    let b2_logs = b2.logs(3, T).await;
    assert_eq!(messages(&b2_logs), ["2", "4", "6"]);
    // Published on the seed's channel without an id: both instances assign the same one.
    let id_of =
        |logs: &[Value], m: &str| logs.iter().find(|l| l["message"] == m).unwrap()["id"].clone();
    for m in ["4", "6"] {
        assert!(id_of(&a2_logs, m).is_string());
        assert_eq!(id_of(&a2_logs, m), id_of(&b2_logs, m), "log {m}");
    }
    assert_ne!(id_of(&a2_logs, "4"), id_of(&a2_logs, "6"));
    for c in [&mut a1, &mut a2, &mut b1, &mut b2] {
        assert!(c.drain("log:new", QUIET).await.is_empty(), "no duplicates");
        assert!(
            c.drain("log:batch", Duration::from_millis(10))
                .await
                .is_empty(),
            "no duplicates"
        );
    }
    for server in [&a, &b] {
        let h = health(server).await;
        assert_eq!(h["bus"]["malformedMessages"], 2, "{h}");
        assert_eq!(h["healthy"], true);
    }
    // A log keeps its id across instances.
    a.ingest(json!({ "id": "fixed-id", "deviceId": "d1", "message": "8" }))
        .await;
    assert_eq!(a1.logs(1, T).await[0]["id"], "fixed-id");
}

/// Several instances bridge the seed channel, each message put into the stream by the first
/// to claim it. Messages published one after another must reach clients in that order
/// whichever instance claimed each (a claim and its append were once two steps, and the
/// instance that claimed a message could append it after another instance had claimed and
/// appended the next one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_channel_messages_keep_their_order_across_instances() {
    let redis = RedisServer::start();
    let a = instance(&redis.url(), "a");
    let b = instance(&redis.url(), "b");
    let c = instance(&redis.url(), "c");
    ready(&a).await;
    ready(&b).await;
    ready(&c).await;
    let mut ca = a.client("u1").await;
    ca.subscribe(json!({})).await;
    let mut cb = b.client("u2").await;
    cb.subscribe(json!({})).await;
    const N: usize = 300;
    let payloads: Vec<String> = (0..N)
        .map(|i| log(&format!("d{}", i % 7), "INFO", &i.to_string()).to_string())
        .collect();
    redis.publish_in_order("log:new", &payloads).await;
    let expected: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(messages(&ca.logs(N, T).await), expected, "instance a");
    assert_eq!(messages(&cb.logs(N, T).await), expected, "instance b");
    for client in [&mut ca, &mut cb] {
        assert!(
            client.drain("log:new", QUIET).await.is_empty(),
            "each message put into the stream once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_status_crosses_instances() {
    let redis = RedisServer::start();
    let a = instance(&redis.url(), "a");
    let b = instance(&redis.url(), "b");
    ready(&a).await;
    ready(&b).await;
    let mut cb = b.client("u").await;
    let (s, _) = a
        .post(
            "/api/devices/dev-9/status",
            &[("x-api-key", API_KEY)],
            r#"{"status":"online"}"#,
        )
        .await;
    assert_eq!(s, 202);
    assert_eq!(
        cb.next("device:status").await,
        json!({ "deviceId": "dev-9", "status": "online" })
    );
    assert_eq!(cb.next("device:online").await["deviceId"], "dev-9");
    redis
        .publish(
            "device:status",
            r#"{"deviceId":"dev-9","status":"offline"}"#,
        )
        .await;
    assert_eq!(cb.next("device:offline").await["deviceId"], "dev-9");
    redis
        .publish("device:status", r#"{"deviceId":"dev-9"}"#)
        .await;
    let h = wait_health(&b, T, |h| h["bus"]["malformedMessages"] == 1).await;
    assert_eq!(h["healthy"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_operations_span_the_cluster() {
    let redis = RedisServer::start();
    let a = instance(&redis.url(), "a");
    let b = instance(&redis.url(), "b");
    ready(&a).await;
    ready(&b).await;
    let admin = [("x-api-key", ADMIN_KEY)];
    let mut alice = a.client("alice").await;
    let mut bob = b.client("bob").await;

    let (s, body) = a.get("/api/ws/connections", &admin).await;
    assert_eq!(s, 200, "{body}");
    let list = body["data"].as_array().unwrap().clone();
    assert_eq!(list.len(), 2, "{body}");
    let bob_conn = list.iter().find(|c| c["userId"] == "bob").unwrap();
    assert_eq!(bob_conn["instance"], "b");
    assert_eq!(
        list.iter().find(|c| c["userId"] == "alice").unwrap()["instance"],
        "a"
    );
    let (_, local) = a.get("/api/ws/connections?scope=local", &admin).await;
    assert_eq!(local["data"].as_array().unwrap().len(), 1);

    let (_, stats) = b.get("/api/ws/stats", &admin).await;
    assert_eq!(stats["data"]["total"], 2);
    assert_eq!(stats["data"]["byUser"], json!({ "alice": 1, "bob": 1 }));
    assert_eq!(stats["data"]["instances"].as_array().unwrap().len(), 2);

    let (s, _) = a
        .post(
            "/api/ws/broadcast",
            &admin,
            r#"{"event":"notice","data":{"text":"hi"}}"#,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(alice.next("notice").await["text"], "hi");
    assert_eq!(bob.next("notice").await["text"], "hi");

    let id = bob_conn["id"].as_str().unwrap();
    let (s, body) = a.delete(&format!("/api/ws/connections/{id}"), &admin).await;
    assert_eq!(
        (s, body["data"]["instance"].as_str()),
        (200, Some("b")),
        "{body}"
    );
    bob.next("close").await;
    let (s, _) = a
        .delete("/api/ws/connections/AAAAAAAAAAAAAAAA", &admin)
        .await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_degrades_then_recovers_without_crashing() {
    let port = free_port();
    let mut redis = RedisServer::start_on(port);
    let a = instance(&redis.url(), "a");
    let b = instance(&redis.url(), "b");
    ready(&a).await;
    ready(&b).await;
    let mut cb = b.client("u").await;
    cb.subscribe(json!({})).await;
    a.ingest(log("d", "INFO", "before")).await;
    assert_eq!(messages(&cb.logs(1, T).await), ["before"]);

    redis.stop();
    for server in [&a, &b] {
        let h = wait_health(server, T, |h| h["bus"]["state"] == "degraded").await;
        assert_eq!(h["healthy"], false);
    }
    let (s, body) = a
        .post(
            "/api/logs",
            &[("x-api-key", API_KEY)],
            &log("d", "INFO", "lost?").to_string(),
        )
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (503, Some("bus_unavailable")),
        "{body}"
    );
    // Sockets are still served meanwhile.
    let _still = TestClient::connect(&b.url, Some(&Server::token("v")))
        .await
        .expect("connect while degraded");

    let _redis = RedisServer::start_on(port);
    for server in [&a, &b] {
        let h = wait_health(server, Duration::from_secs(20), |h| {
            h["bus"]["state"] == "connected"
        })
        .await;
        assert!(h["bus"]["reconnects"].as_u64().unwrap() >= 1, "{h}");
    }
    a.ingest(log("d", "INFO", "after")).await;
    assert_eq!(
        messages(&cb.logs(1, T).await),
        ["after"],
        "the 503 log was never accepted, so never delivered"
    );
    assert!(cb.drain("log:new", QUIET).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_redis_is_down_and_connects_when_it_comes_up() {
    let port = free_port();
    let a = instance(&format!("redis://127.0.0.1:{port}"), "a");
    let h = health(&a).await;
    assert_eq!(
        (h["bus"]["state"].as_str(), h["healthy"].as_bool()),
        (Some("degraded"), Some(false)),
        "{h}"
    );
    let (s, _) = a
        .post(
            "/api/logs",
            &[("x-api-key", API_KEY)],
            &log("d", "INFO", "x").to_string(),
        )
        .await;
    assert_eq!(s, 503);
    let mut c = a.client("u").await;
    c.subscribe(json!({})).await;
    let _redis = RedisServer::start_on(port);
    wait_health(&a, Duration::from_secs(20), |h| {
        h["bus"]["state"] == "connected"
    })
    .await;
    a.ingest(log("d", "INFO", "now")).await;
    assert_eq!(messages(&c.logs(1, T).await), ["now"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_with_redis_delivers_what_was_accepted() {
    let redis = RedisServer::start();
    let mut a = instance(&redis.url(), "a");
    ready(&a).await;
    let mut c = a.client("u").await;
    c.subscribe(json!({ "batch": true })).await;
    let logs: Vec<Value> = (0..300).map(|i| log("d", "INFO", &i.to_string())).collect();
    a.ingest(Value::Array(logs)).await;
    let stopping = tokio::task::spawn_blocking(move || a.terminate(Duration::from_secs(10)));
    let got = c.logs(300, T).await;
    assert_eq!(
        messages(&got),
        (0..300).map(|i| i.to_string()).collect::<Vec<_>>()
    );
    let status = stopping.await.unwrap().expect("exited in time");
    assert!(status.success(), "{status:?}");
}

/// `redis_min_replicas = 1`: a 202 means a replica has the logs too; with the replica gone
/// ingest answers 503 within `redis_min_replicas_timeout_ms`, never a silent 202, and 202
/// again once it is back. Every 202'd log reaches the client once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_min_replicas_a_202_waits_for_a_replica_and_without_one_is_a_503() {
    let primary = RedisServer::start();
    let mut replica = RedisServer::start_replica_of(&primary);
    let server = instance_builder(&primary.url(), "acked")
        .set("redis_min_replicas", 1)
        .set("redis_min_replicas_timeout_ms", 300)
        .start();
    ready(&server).await;
    let mut c = server.client("watcher").await;
    c.subscribe(json!({ "deviceIds": ["r"] })).await;
    // The replica's first sync takes a moment: until then a 503 is the right answer.
    eventually(T, "a 202 once the replica is in sync", || async {
        match server
            .post(
                "/api/logs",
                &[("x-api-key", API_KEY), ("idempotency-key", "first")],
                &log("r", "INFO", "first").to_string(),
            )
            .await
        {
            (202, _) => Ok(()),
            (s, b) => Err(format!("{s} {b}")),
        }
    })
    .await;
    let held: usize = replica
        .query(redis::cmd("XLEN").arg("logstream:logs"))
        .await;
    assert_eq!(held, 1, "the replica has it");
    assert_eq!(messages(&c.logs(1, T).await), ["first"]);

    let short_before = health(&server).await["bus"]["replicasShort"]
        .as_u64()
        .unwrap();
    replica.stop();
    let started = std::time::Instant::now();
    let (s, body) = server
        .post(
            "/api/logs",
            &[("x-api-key", API_KEY), ("idempotency-key", "second")],
            &log("r", "INFO", "second").to_string(),
        )
        .await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["error"]["code"], "bus_unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("0 of the 1 replicas"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered within the timeout"
    );
    let h = health(&server).await;
    assert_eq!(h["bus"]["replicasShort"], short_before + 1, "counted: {h}");

    replica.restart();
    eventually(T, "202 again with the replica back", || async {
        match server
            .post(
                "/api/logs",
                &[("x-api-key", API_KEY), ("idempotency-key", "second")],
                &log("r", "INFO", "second").to_string(),
            )
            .await
        {
            (s, _) if (200..300).contains(&s) => Ok(()),
            (s, b) => Err(format!("{s} {b}")),
        }
    })
    .await;
    // The 503'd request was on the primary already: its retry under the same key is not
    // appended again, and each log reaches the client once.
    assert_eq!(messages(&c.logs(1, T).await), ["second"]);
    assert!(c.drain("log:new", QUIET).await.is_empty(), "nothing twice");
}

/// Two instances, a replica that stops answering (SIGSTOP): a request retried through the
/// other instance under its Idempotency-Key is not answered 202 while no replica has its
/// logs (a key found writes too, so its WAIT covers the first append), and a
/// burst of requests is answered by groups, each 503 saying why, none left to time out in a
/// queue of waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_elsewhere_is_confirmed_by_a_replica_and_waits_are_grouped() {
    let primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary);
    let start = |id| {
        instance_builder(&primary.url(), id)
            .set("redis_min_replicas", 1)
            .set("redis_min_replicas_timeout_ms", 300)
            .start()
    };
    let (a, b) = (start("a"), start("b"));
    ready(&a).await;
    ready(&b).await;
    let mut c = a.client("watcher").await;
    c.subscribe(json!({ "deviceIds": ["k"] })).await;
    let post = |server: &Server, key: &str, msg: &str| {
        let body = log("k", "INFO", msg).to_string();
        let key = key.to_owned();
        let url = server.url.clone();
        async move {
            let r = reqwest::Client::new()
                .post(format!("{url}/api/logs"))
                .header("content-type", "application/json")
                .header("x-api-key", API_KEY)
                .header("idempotency-key", key)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or_default())
        }
    };
    // Both instances' append connections have written (and been confirmed) once.
    for (server, key) in [(&a, "warm-a"), (&b, "warm-b")] {
        eventually(T, "202 once the replica is in sync", || async {
            match post(server, key, key).await {
                (s, _) if (200..300).contains(&s) => Ok(()),
                (s, b) => Err(format!("{s} {b}")),
            }
        })
        .await;
    }
    assert_eq!(c.logs(2, T).await.len(), 2);

    replica.freeze();
    let (s, body) = post(&a, "k1", "once").await;
    assert_eq!(s, 503, "{body}");
    let (s, body) = post(&b, "k1", "once").await;
    assert_eq!(
        s, 503,
        "no replica has it yet, through either instance: {body}"
    );

    // A burst: every request answered with the reason, none timed out behind the others.
    let burst: Vec<_> = (0..16)
        .map(|i| tokio::spawn(post(&a, &format!("burst-{i}"), "burst")))
        .collect();
    for r in burst {
        let (s, body) = r.await.unwrap();
        assert_eq!(s, 503, "{body}");
        let why = body["error"]["message"].as_str().unwrap_or_default();
        assert!(why.contains("only 0 of the 1 replicas"), "{why}");
    }

    replica.thaw();
    eventually(T, "202 for the retry once the replica has it", || async {
        match post(&b, "k1", "once").await {
            (s, _) if (200..300).contains(&s) => Ok(()),
            (s, b) => Err(format!("{s} {b}")),
        }
    })
    .await;
    let got = c.logs(17, T).await;
    assert_eq!(got.iter().filter(|l| l["message"] == "once").count(), 1);
}
