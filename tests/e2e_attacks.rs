//! What an ordinary client could do to exhaust the server, each bounded: resumable sessions
//! created faster than they expire, Engine.IO sessions opened without a token, the
//! development token read across origins, and a retried ingest after an instance died
//! mid-request. (The page-side cross-origin test runs in Chromium: tests/web_page.rs.)

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
    eventually(T, "connected to redis", || async {
        let h = server.get("/api/ws/health", &[]).await.1;
        if h["data"]["bus"]["state"] == "connected" {
            Ok(())
        } else {
            Err(h.to_string())
        }
    })
    .await;
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
