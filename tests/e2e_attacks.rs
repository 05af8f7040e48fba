//! What an ordinary client could do to exhaust or stall the server, each bounded: resumable
//! sessions created faster than they expire, Engine.IO sessions opened without a token, a
//! retried ingest after an instance died mid-request; and smaller faults found with them (a
//! SIGHUP on a FIFO, a misleading log line at start). The development token read across
//! origins is tested in Chromium (tests/web/page.test.js).

mod common;

use std::time::Duration;

use common::redis::RedisServer;
use common::{Server, TestClient, eventually};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(15);

/// A subscription of about `kb` KB (100 keywords at most, 256 bytes each).
fn heavy_subscription(kb: usize) -> Value {
    let keywords: Vec<String> = (0..(kb * 1000 / 256).min(100))
        .map(|i| format!("{i:04}{}", "k".repeat(246)))
        .collect();
    json!({ "keywords": keywords, "resume": true })
}

/// One user creates resumable sessions in a loop, disconnecting each time.
async fn create_sessions(url: &str, user: &str, n: usize, subscription: &Value) -> Vec<Value> {
    let token = Server::token(user);
    let mut answers = Vec::new();
    for _ in 0..n {
        let c = TestClient::connect(url, Some(&token)).await.unwrap();
        answers.push(c.emit_ack("log:subscribe", subscription.clone()).await);
        c.disconnect().await;
    }
    answers
}

async fn resume(url: &str, user: &str, session: &str) -> Value {
    let auth = json!({"token": Server::token(user), "session": session});
    let mut c = TestClient::connect_auth(url, Some(auth)).await.unwrap();
    let (event, value) = c.next_of(&["log:subscribed", "error"], T).await;
    assert_eq!(event, "log:subscribed", "{value}");
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumable_sessions_are_bounded_per_user_and_a_legitimate_one_still_resumes() {
    let server = Server::builder()
        .set("max_sessions_per_user", 6)
        .set("max_user_subscription_bytes", 100_000)
        .set("session_ttl_ms", 600_000)
        .start();
    let legit = create_sessions(
        &server.url,
        "alice",
        1,
        &json!({"deviceIds": ["d"], "resume": true}),
    )
    .await;
    let legit_session = legit[0]["session"].as_str().unwrap().to_owned();

    // Small sessions: the count bounds them.
    let small = create_sessions(&server.url, "mallory", 20, &json!({"resume": true})).await;
    assert!(small.iter().all(|a| a["success"] == true), "{small:?}");
    let sessions = server.admin_stats().await["sessions"].clone();
    assert_eq!(sessions["sessions"], 6 + 1, "{sessions}");
    // The oldest went first: the newest still resumes.
    let newest = small.last().unwrap()["session"].as_str().unwrap();
    resume(&server.url, "mallory", newest).await;

    // Heavy sessions (~25 KB): the user's subscription bytes bound them.
    let heavy = create_sessions(&server.url, "mallory", 12, &heavy_subscription(25)).await;
    assert!(heavy.iter().all(|a| a["success"] == true), "{heavy:?}");
    let sessions = server.admin_stats().await["sessions"].clone();
    let bytes = sessions["bytes"].as_u64().unwrap();
    assert!(
        bytes <= 100_000 + 1000,
        "mallory's sessions hold at most max_user_subscription_bytes: {sessions}"
    );
    assert!(sessions["sessions"].as_u64().unwrap() <= 7, "{sessions}");

    // Another user's session was never touched.
    let back = resume(&server.url, "alice", &legit_session).await;
    assert_eq!(back["session"], legit_session.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_whose_sessions_are_all_attached_is_refused_a_new_one_with_a_clear_code() {
    let server = Server::builder().set("max_sessions_per_user", 2).start();
    let mut held = Vec::new();
    for _ in 0..2 {
        let c = server.client("bob").await;
        let a = c.emit_ack("log:subscribe", json!({"resume": true})).await;
        assert_eq!(a["success"], true, "{a}");
        held.push(c);
    }
    let third = server.client("bob").await;
    let refused = third
        .emit_ack("log:subscribe", json!({"resume": true}))
        .await;
    assert_eq!(refused["error"]["code"], "too_many_sessions", "{refused}");
    // Not resumable is fine: no session needed.
    let plain = third
        .emit_ack("log:subscribe", json!({"deviceIds": ["d"]}))
        .await;
    assert_eq!(plain["success"], true, "{plain}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_in_redis_are_bounded_per_user_and_for_the_cluster() {
    let redis = RedisServer::start();
    let server = Server::builder()
        .env("LOGSTREAM_REDIS_URL", redis.url())
        .set("max_sessions_per_user", 5)
        .set("max_sessions", 12)
        .set("max_user_subscription_bytes", 100_000)
        .set("session_ttl_ms", 600_000)
        .start();
    server.wait_for_redis().await;
    create_sessions(&server.url, "alice", 1, &json!({"resume": true})).await;
    create_sessions(&server.url, "mallory", 15, &json!({"resume": true})).await;
    let zcard = |key: &'static str| {
        let redis = &redis;
        async move { redis.query::<u64>(redis::cmd("ZCARD").arg(key)).await }
    };
    assert_eq!(zcard("logstream:logs:sessions:all").await, 5 + 1);
    create_sessions(&server.url, "mallory", 6, &heavy_subscription(25)).await;
    let bytes: u64 = redis
        .query(redis::cmd("GET").arg("logstream:logs:sessions:bytes"))
        .await;
    assert!(bytes <= 100_000 + 1000, "{bytes}");
    // Other users fill the cluster's bound: the idle sessions nearest expiry go.
    for i in 0..14 {
        create_sessions(&server.url, &format!("u{i}"), 1, &json!({"resume": true})).await;
    }
    assert!(zcard("logstream:logs:sessions:all").await <= 12);
    let keys: u64 = redis.query(&redis::cmd("DBSIZE")).await;
    assert!(keys < 60, "keys kept: {keys}");
    let sessions = server.admin_stats().await["sessions"].clone();
    assert!(sessions["sessions"].as_u64().unwrap() <= 12, "{sessions}");
    // The newest sessions still resume.
    let last = create_sessions(&server.url, "carol", 1, &json!({"resume": true})).await;
    resume(&server.url, "carol", last[0]["session"].as_str().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_io_sessions_opened_without_a_token_are_bounded_per_address_and_expire() {
    let server = Server::builder()
        .set("max_unauthenticated_per_ip", 8)
        .set("unauthenticated_sessions_per_second", 1000)
        .set("unauthenticated_timeout_ms", 1500)
        .start();
    // One keep-alive connection opening session after session, as the attack did.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let open = || async {
        let url = format!("{}/socket.io/?EIO=4&transport=polling", server.url);
        match http.get(&url).send().await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    };
    let (mut created, mut refused) = (0, 0);
    for _ in 0..60 {
        match open().await {
            (200, body) if body.starts_with("0{") => created += 1,
            (429, body) => {
                assert!(body.contains("max_unauthenticated_per_ip"), "{body}");
                refused += 1
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        (created, refused),
        (8, 52),
        "sessions past the bound are refused"
    );
    let metrics = server
        .get_text("/metrics", &[("x-api-key", common::ADMIN_KEY)])
        .await;
    assert!(
        metrics.contains("logstream_unauthenticated_sessions_refused_total 52"),
        "{metrics}"
    );
    // The transport ends them when their handshake does not come: room again.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(open().await.0, 200);
    // A real client from the same address connects, and its session leaves the count.
    let mut c = server.client("alice").await;
    c.subscribe(json!({"deviceIds": ["d"]})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_on_a_fifo_is_refused_without_stalling_the_server() {
    let dir = common::scratch_dir("fifo-config");
    let config = dir.join("logstream.toml");
    std::fs::write(&config, "rate_limit = 50\n").unwrap();
    let server = Server::builder()
        .args(&["serve", "--host", "127.0.0.1", "--port", "0", "--config"])
        .args_more(&[config.to_str().unwrap()])
        .capture_stderr()
        .start();
    std::fs::remove_file(&config).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&config)
        .status()
        .unwrap();
    assert!(made.success());
    // Before: each SIGHUP blocked a runtime worker in open() for as long as nobody wrote.
    for _ in 0..4 {
        server.signal("-HUP");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = tokio::time::timeout(Duration::from_secs(3), server.get("/api/ws/health", &[]))
        .await
        .expect("the server still answers");
    assert_eq!(health.0, 200);
    eventually(T, "the refusal is logged", || async {
        let log = server.stderr().join("\n");
        if log.contains("not a regular file") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_on_redis_does_not_log_a_changed_epoch() {
    let redis = RedisServer::start();
    let server = Server::builder()
        .env("LOGSTREAM_REDIS_URL", redis.url())
        .env("RUST_LOG", "info")
        .capture_stderr()
        .start();
    server.wait_for_redis().await;
    server.ingest(json!([common::log("d", "INFO", "x")])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = server.stderr().join("\n");
    assert!(log.contains("using the redis bus"), "{log}");
    assert!(!log.contains("epoch changed"), "{log}");
}

/// Two instances on one Redis, ready.
async fn pair(redis: &RedisServer) -> (Server, Server) {
    let start = |id: &str| {
        Server::builder()
            .env("LOGSTREAM_REDIS_URL", redis.url())
            .set("instance_id", id)
            .start()
    };
    let (a, b) = (start("a"), start("b"));
    for s in [&a, &b] {
        s.wait_for_redis().await;
    }
    (a, b)
}

/// POST `body` to `server` with `Idempotency-Key: key`: (status, answer).
async fn post_keyed(http: &reqwest::Client, url: &str, key: &str, body: &Value) -> (u16, Value) {
    match http
        .post(format!("{url}/api/logs"))
        .header("x-api-key", common::API_KEY)
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
    {
        Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

/// How many entries of the stream carry each message.
async fn stream_messages(redis: &RedisServer) -> std::collections::HashMap<String, usize> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis
        .query(redis::cmd("XRANGE").arg("logstream:logs").arg("-").arg("+"))
        .await;
    let mut count = std::collections::HashMap::new();
    for (_, fields) in entries {
        for (_, json) in fields {
            let v: Value = serde_json::from_str(&json).unwrap();
            *count
                .entry(v["message"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_sent_to_two_instances_at_once_is_published_once_and_never_refused() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis).await;
    let http = reqwest::Client::new();
    for round in 0..30 {
        let key = format!("round-{round}");
        let body = json!([common::log("d", "INFO", &key)]);
        let (x, y) = tokio::join!(
            post_keyed(&http, &a.url, &key, &body),
            post_keyed(&http, &b.url, &key, &body)
        );
        // Before: the second claim answered 409 "being published" while the first ran.
        assert_eq!((x.0, y.0), (202, 202), "{x:?} {y:?}");
        let duplicates = [&x.1, &y.1]
            .iter()
            .filter(|v| v["duplicate"] == true)
            .count();
        assert_eq!(
            duplicates, 1,
            "one published, one told it is a duplicate: {x:?} {y:?}"
        );
    }
    let count = stream_messages(&redis).await;
    assert_eq!(count.len(), 30);
    assert!(count.values().all(|n| *n == 1), "{count:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_its_instance_died_mid_request_is_answered_at_once_and_lands_once() {
    let redis = RedisServer::start();
    let (mut a, b) = pair(&redis).await;
    let http = reqwest::Client::new();
    // Eight shippers send batches to A one after another; A is killed with some in flight.
    let mut shippers = Vec::new();
    for worker in 0..8 {
        let (http, url) = (http.clone(), a.url.clone());
        shippers.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            for i in 0.. {
                let key = format!("batch-{worker}-{i}");
                let body: Value = (0..50)
                    .map(|j| common::log("d", "INFO", &format!("{key}/{j}")))
                    .collect();
                let (status, _) = post_keyed(&http, &url, &key, &body).await;
                sent.push((key, body, status));
                if status != 202 {
                    return sent;
                }
            }
            sent
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.kill();
    let (mut batches, mut retried) = (0, 0);
    for shipper in shippers {
        for (key, body, status) in shipper.await.unwrap() {
            batches += 1;
            if status == 202 {
                continue;
            }
            retried += 1;
            // The retry a shipper makes, to the other instance: answered now, never "retry
            // later" (before: 409 for the key's 10 minutes when A died between its claim and
            // its publish).
            let (status, answer) = post_keyed(&http, &b.url, &key, &body).await;
            assert_eq!(status, 202, "{key}: {answer}");
        }
    }
    assert!(retried > 0, "batches were in flight when A died");
    let count = stream_messages(&redis).await;
    assert_eq!(
        count.len(),
        batches * 50,
        "every batch landed ({retried} retried)"
    );
    assert!(count.values().all(|n| *n == 1), "and once");
}
