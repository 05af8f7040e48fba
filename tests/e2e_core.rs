//! End-to-end tests of the core server over real sockets: the seed's contract, done right.

mod common;

use std::time::Duration;

use common::{ADMIN_KEY, API_KEY, Server, TestClient, eventually, log, token_with};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(400);

fn messages(logs: &[Value]) -> Vec<&str> {
    logs.iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_test_script_scenario() {
    let server = Server::start();
    let mut c = server.client("alice").await;
    let ack = c
        .subscribe(json!({ "deviceIds": ["device-001"], "levels": ["ERROR", "WARN"] }))
        .await;
    assert_eq!(ack["success"], true);
    server
        .ingest(json!([
            { "deviceId": "device-001", "timestamp": "2025-01-03T10:00:00Z", "level": "ERROR", "message": "Test error log" },
            log("device-001", "INFO", "not this level"),
            log("device-002", "ERROR", "not this device"),
            log("device-001", "warn", "lower-case level"),
        ]))
        .await;
    let got = c.logs(2, T).await;
    assert_eq!(messages(&got), ["Test error log", "lower-case level"]);
    assert_eq!(got[0]["timestamp"], "2025-01-03T10:00:00Z");
    assert_eq!(got[0]["level"], "ERROR");
    assert_eq!(got[1]["level"], "WARN");
    assert!(got[0]["id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(
        c.drain("log:new", QUIET).await.is_empty(),
        "nothing else, and nothing twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_rejects_bad_tokens_with_the_seeds_messages() {
    let server = Server::start();
    let refused = |r: Result<TestClient, common::client::ConnectRefused>| match r {
        Ok(_) => panic!("connection should be refused"),
        Err(e) => e.0,
    };
    let msg = refused(TestClient::connect(&server.url, None).await);
    assert!(msg.contains("Authentication required"), "{msg}");
    let msg = refused(TestClient::connect(&server.url, Some("not-a-jwt")).await);
    assert!(msg.contains("Authentication failed"), "{msg}");
    // Signed with another secret.
    let mut other = logstream::config::Config::default();
    other.auth.jwt_secret = Some("some-other-secret-0123456789".into());
    let (keys, _) = logstream::auth::Keys::from_config(&other).unwrap();
    let foreign = keys
        .mint("alice", Duration::from_secs(60), &Default::default())
        .unwrap();
    let msg = refused(TestClient::connect(&server.url, Some(&foreign)).await);
    assert!(msg.contains("Authentication failed"), "{msg}");
    // Expired (exp in the past, beyond leeway).
    let expired = token_with("alice", &[]);
    let parts: Vec<&str> = expired.split('.').collect();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    claims["exp"] = json!(1_000_000);
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(claims.to_string()),
        parts[2]
    );
    let msg = refused(TestClient::connect(&server.url, Some(&tampered)).await);
    assert!(msg.contains("Authentication failed"), "{msg}");
    // alg: none.
    let none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(json!({"sub": "alice", "exp": 9_999_999_999u64}).to_string())
    );
    let msg = refused(TestClient::connect(&server.url, Some(&none)).await);
    assert!(msg.contains("Authentication failed"), "{msg}");
    // The server is fine afterwards.
    let _ok = server.client("alice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_global_and_per_user() {
    let server = Server::builder()
        .set("max_connections", 2)
        .set("max_connections_per_user", 1)
        .start();
    let a = server.client("alice").await;
    let err = TestClient::connect(&server.url, Some(&Server::token("alice")))
        .await
        .err()
        .unwrap();
    assert!(err.0.contains("Connection limit reached"), "{}", err.0);
    let _b = server.client("bob").await;
    let err = TestClient::connect(&server.url, Some(&Server::token("carol")))
        .await
        .err()
        .unwrap();
    assert!(err.0.contains("Connection limit reached"), "{}", err.0);
    let (_, health) = server.get("/api/ws/health", &[]).await;
    assert_eq!(health["data"]["connections"], 2);
    assert_eq!(health["data"]["maxConnections"], 2);
    a.disconnect().await;
    // The slot frees once the server has seen the disconnect.
    let _admitted = eventually(
        Duration::from_secs(5),
        "a slot frees after disconnect",
        || async {
            TestClient::connect(&server.url, Some(&Server::token("carol")))
                .await
                .map_err(|e| e.0)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_semantics_over_the_wire() {
    let server = Server::start();
    let mut tags = server.client("u").await;
    tags.subscribe(json!({ "tags": ["net", "disk"] })).await;
    let mut kw = server.client("u").await;
    kw.subscribe(json!({ "keywords": ["TimeOut", "refused"], "levels": ["error"] }))
        .await;
    let mut all = server.client("u").await;
    all.subscribe(json!({ "deviceIds": [], "levels": null }))
        .await;
    server
        .ingest(json!([
            { "deviceId": "a", "level": "ERROR", "message": "Connection TIMEOUT", "tags": ["net"] },
            { "deviceId": "b", "level": "INFO", "message": "timeout but info", "tags": ["cpu"] },
            { "deviceId": "c", "level": "ERROR", "message": "connection refused", "tags": [] },
            { "deviceId": "d", "level": "DEBUG", "message": "disk full", "tags": ["disk", "x"] },
        ]))
        .await;
    assert_eq!(
        messages(&tags.logs(2, T).await),
        ["Connection TIMEOUT", "disk full"]
    );
    assert_eq!(
        messages(&kw.logs(2, T).await),
        ["Connection TIMEOUT", "connection refused"]
    );
    assert_eq!(all.logs(4, T).await.len(), 4);
    for c in [&mut tags, &mut kw, &mut all] {
        assert!(c.drain("log:new", QUIET).await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subscription_names_the_field_and_keeps_the_old_one() {
    let server = Server::start();
    let mut c = server.client("u").await;
    c.subscribe(json!({ "deviceIds": ["keep"] })).await;
    let cases = [
        (json!({ "deviceIds": "dev-1" }), "deviceIds"),
        (json!({ "levels": ["LOUD"] }), "levels[0]"),
        (json!({ "keywords": [1] }), "keywords[0]"),
        (json!({ "tags": vec!["t"; 101] }), "tags"),
        (json!({ "deviceIds": vec!["d"; 1001] }), "deviceIds"),
        (json!({ "devices": ["x"] }), "devices"),
        (json!({ "batch": "yes" }), "batch"),
        (json!([1, 2]), "subscription"),
    ];
    for (bad, field) in cases {
        c.emit("log:subscribe", bad.clone()).await;
        let err = c.next("error").await;
        assert_eq!(
            err["code"]
                .as_str()
                .map(|s| s == "invalid_subscription" || s == "invalid_params"),
            Some(true),
            "{err}"
        );
        assert!(
            err["message"].as_str().unwrap().contains(field),
            "{bad} -> {err}"
        );
    }
    // The ack says it too.
    let ack = c
        .emit_ack("log:subscribe", json!({ "levels": ["nope"] }))
        .await;
    assert_eq!(ack["success"], false);
    assert!(
        ack["error"]["message"]
            .as_str()
            .unwrap()
            .contains("levels[0]"),
        "{ack}"
    );
    // Previous subscription still in force.
    server
        .ingest(json!([
            log("other", "INFO", "no"),
            log("keep", "INFO", "yes")
        ]))
        .await;
    assert_eq!(messages(&c.logs(1, T).await), ["yes"]);
    assert!(c.drain("log:new", QUIET).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_answer_every_event() {
    let server = Server::start();
    let c = server.client("u").await;
    let ack = c
        .emit_ack(
            "log:subscribe",
            json!({ "deviceIds": ["d"], "batch": true }),
        )
        .await;
    assert_eq!(ack["success"], true);
    assert_eq!(ack["batch"], true);
    assert_eq!(ack["filter"], "default");
    assert_eq!(c.emit_ack("log:pause", json!({})).await["paused"], true);
    assert_eq!(c.emit_ack("log:resume", json!({})).await["paused"], false);
    assert_eq!(
        c.emit_ack("log:unsubscribe", json!({})).await["success"],
        true
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribe_mid_stream_has_no_gap_and_no_duplicate() {
    let server = Server::builder().set("rate_limit", 100_000).start();
    let mut c = server.client("u").await;
    c.subscribe(json!({ "deviceIds": ["d"] })).await;
    let total = 600;
    let url = server.url.clone();
    let poster = common::post_numbered(url, "d", total, Duration::from_millis(2));
    // Switch between equivalent subscriptions while the stream flows.
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(15)).await;
        let sub = if i % 2 == 0 {
            json!({ "deviceIds": ["d"], "levels": ["INFO", "ERROR"] })
        } else {
            json!({ "deviceIds": ["d", "e"] })
        };
        c.emit("log:subscribe", sub).await;
    }
    poster.await.unwrap();
    let got = c.logs(total, Duration::from_secs(30)).await;
    let seq: Vec<usize> = got
        .iter()
        .map(|l| l["message"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        seq,
        (0..total).collect::<Vec<_>>(),
        "in order, no gap, no duplicate"
    );
    assert!(c.drain("log:new", QUIET).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_mode_emits_arrays_in_order() {
    let server = Server::builder().set("rate_limit", 100_000).start();
    let mut c = server.client("u").await;
    c.subscribe(json!({ "deviceIds": ["d"], "batch": true }))
        .await;
    let logs: Vec<Value> = (0..120).map(|i| log("d", "INFO", &i.to_string())).collect();
    server.ingest(Value::Array(logs)).await;
    let mut got = Vec::new();
    while got.len() < 120 {
        let batch = c.next("log:batch").await;
        let items = batch.as_array().expect("array");
        assert!(
            !items.is_empty() && items.len() <= 50,
            "batch of {}",
            items.len()
        );
        got.extend(
            items
                .iter()
                .map(|l| l["message"].as_str().unwrap().parse::<usize>().unwrap()),
        );
    }
    assert_eq!(got, (0..120).collect::<Vec<_>>());
    assert!(
        c.drain("log:new", QUIET).await.is_empty(),
        "batch mode sends no log:new"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_clients_get_the_first_log_at_once_and_the_rest_gathered() {
    let server = Server::builder().set("batch_max_delay_ms", 3000).start();
    let mut c = server.client("u").await;
    c.subscribe(json!({ "deviceIds": ["d"], "batch": true }))
        .await;
    server.ingest(log("d", "INFO", "0")).await;
    let first = c.next_of(&["log:batch"], Duration::from_secs(1)).await.1;
    assert_eq!(
        messages(first.as_array().unwrap()),
        ["0"],
        "leading edge: no wait (well within the 3 s window)"
    );
    for i in 1..5 {
        server.ingest(log("d", "INFO", &i.to_string())).await;
    }
    let second = c.next_of(&["log:batch"], Duration::from_secs(10)).await.1;
    assert_eq!(
        messages(second.as_array().unwrap()),
        ["1", "2", "3", "4"],
        "the rest in one message"
    );
    // Pausing sends nothing, and what was gathered is held, not lost.
    server.ingest(log("d", "INFO", "5")).await;
    c.emit_ack("log:pause", json!({})).await;
    c.emit_ack("log:resume", json!({})).await;
    let rest = c.logs(1, Duration::from_secs(10)).await;
    assert_eq!(messages(&rest), ["5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_log_is_not_held_for_the_batch_window() {
    // Functional check only (the latency numbers live in BENCHMARKS.md): with a batch window
    // of 60 s, a lone log must still arrive, because an idle queue flushes at once.
    let server = Server::builder().set("batch_max_delay_ms", 60_000).start();
    let mut c = server.client("u").await;
    c.subscribe(json!({})).await;
    server.ingest(log("d", "INFO", "alone")).await;
    assert_eq!(
        messages(&c.logs(1, Duration::from_secs(10)).await),
        ["alone"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_and_resume_delivers_in_order() {
    let server = Server::builder().set("pause_buffer", 3).start();
    let mut c = server.client("u").await;
    c.subscribe(json!({ "deviceIds": ["d"] })).await;
    c.emit_ack("log:pause", json!({})).await;
    let logs: Vec<Value> = (0..5).map(|i| log("d", "INFO", &i.to_string())).collect();
    server.ingest(Value::Array(logs)).await;
    assert!(
        c.drain("log:new", QUIET).await.is_empty(),
        "nothing while paused"
    );
    c.emit_ack("log:resume", json!({})).await;
    assert_eq!(messages(&c.logs(3, T).await), ["0", "1", "2"]);
    let dropped = c.next("log:dropped").await;
    assert_eq!(dropped, json!({ "count": 2, "reason": "pause_overflow" }));
    // Live again.
    server.ingest(log("d", "INFO", "live")).await;
    assert_eq!(messages(&c.logs(1, T).await), ["live"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_drops_are_reported_and_add_up() {
    let server = Server::builder().set("rate_limit", 10).start();
    let mut c = server.client("u").await;
    c.subscribe(json!({ "deviceIds": ["d"] })).await;
    let mut slow = server.client("v").await;
    let ack = slow
        .subscribe(json!({ "deviceIds": ["d"], "rateLimit": 4 }))
        .await;
    assert_eq!(ack["rateLimit"], 4);
    let logs: Vec<Value> = (0..30).map(|i| log("d", "INFO", &i.to_string())).collect();
    server.ingest(Value::Array(logs)).await;
    for (client, allowed) in [(&mut c, 10usize), (&mut slow, 4)] {
        let got = client.logs(allowed, T).await;
        assert_eq!(got.len(), allowed);
        let dropped = client
            .next_of(&["log:dropped"], Duration::from_secs(5))
            .await
            .1;
        assert_eq!(dropped["reason"], "rate_limit");
        assert_eq!(
            dropped["count"].as_u64().unwrap() as usize + allowed,
            30,
            "delivered + dropped = matched"
        );
        assert!(client.drain("log:new", QUIET).await.is_empty());
    }
    let stats = server.admin_stats().await;
    assert_eq!(stats["drops"]["rateLimit"], 20 + 26);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_flood_is_refused_without_hurting_the_server() {
    let server = Server::builder().set("events_per_second", 5).start();
    let mut c = server.client("u").await;
    for _ in 0..60 {
        c.emit("log:subscribe", json!({ "deviceIds": ["d"] })).await;
    }
    let err = c.next("error").await;
    assert_eq!(err["code"], "rate_limited");
    let subscribed = c.drain("log:subscribed", Duration::from_millis(500)).await;
    assert!(
        subscribed.len() <= 12,
        "{} subscribes went through",
        subscribed.len()
    );
    // Still connected and served; another client unaffected.
    let mut other = server.client("w").await;
    other.subscribe(json!({ "deviceIds": ["d"] })).await;
    server.ingest(log("d", "INFO", "still here")).await;
    assert_eq!(messages(&c.logs(1, T).await), ["still here"]);
    assert_eq!(messages(&other.logs(1, T).await), ["still here"]);
    let stats = server.admin_stats().await;
    assert_eq!(stats["total"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_validates_everything_and_accepts_nothing_from_a_bad_request() {
    let server = Server::builder().set("max_body_bytes", 2000).start();
    let mut c = server.client("u").await;
    c.subscribe(json!({})).await;
    let key = [("x-api-key", API_KEY)];
    let (s, _) = server
        .post("/api/logs", &[], &log("d", "INFO", "m").to_string())
        .await;
    assert_eq!(s, 401);
    let (s, _) = server
        .post(
            "/api/logs",
            &[("x-api-key", "wrong")],
            &log("d", "INFO", "m").to_string(),
        )
        .await;
    assert_eq!(s, 401);
    let (s, b) = server.post("/api/logs", &key, "{not json").await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );
    let (s, b) = server
        .post(
            "/api/logs",
            &key,
            &json!([log("d", "INFO", "ok"), { "message": "no device" }]).to_string(),
        )
        .await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (400, Some("[1].deviceId")),
        "{b}"
    );
    for (body, field) in [
        (
            json!({ "deviceId": "d", "message": "m", "level": "LOUD" }),
            "level",
        ),
        (
            json!({ "deviceId": "d", "message": "m", "timestamp": "yesterday" }),
            "timestamp",
        ),
        (
            json!({ "deviceId": "d", "message": "m", "tags": "t" }),
            "tags",
        ),
        (json!({ "deviceId": "d" }), "message"),
        (json!([]), "(body)"),
        (json!("text"), "(body)"),
    ] {
        let (s, b) = server.post("/api/logs", &key, &body.to_string()).await;
        assert_eq!(
            (s, b["error"]["field"].as_str()),
            (400, Some(field)),
            "{body} -> {b}"
        );
    }
    let big = json!({ "deviceId": "d", "message": "x".repeat(3000) });
    let (s, b) = server.post("/api/logs", &key, &big.to_string()).await;
    assert_eq!(s, 413, "{b}");
    assert!(
        c.drain("log:new", QUIET).await.is_empty(),
        "nothing from bad requests was accepted"
    );
    // A good one: id assigned, timestamp defaulted, extra fields passed through.
    let (s, b) = server
        .post(
            "/api/logs",
            &key,
            &json!({ "deviceId": "d", "message": "m", "region": { "zone": 3 } }).to_string(),
        )
        .await;
    assert_eq!(
        (s, b.clone()),
        (202, json!({ "success": true, "accepted": 1 }))
    );
    let got = c.logs(1, T).await.remove(0);
    assert_eq!(got["region"], json!({ "zone": 3 }));
    assert_eq!(got["level"], "INFO");
    assert!(got["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(!got["id"].as_str().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_status_reaches_every_client() {
    let server = Server::start();
    let mut c = server.client("u").await;
    let key = [("x-api-key", API_KEY)];
    let (s, _) = server
        .post("/api/devices/dev-7/status", &key, r#"{"status":"online"}"#)
        .await;
    assert_eq!(s, 202);
    assert_eq!(
        c.next("device:status").await,
        json!({ "deviceId": "dev-7", "status": "online" })
    );
    assert_eq!(
        c.next("device:online").await,
        json!({ "deviceId": "dev-7", "status": "online" })
    );
    server
        .post("/api/devices/dev-7/status", &key, r#"{"status":"offline"}"#)
        .await;
    assert_eq!(c.next("device:offline").await["deviceId"], "dev-7");
    server
        .post(
            "/api/devices/dev-7/status",
            &key,
            r#"{"status":"rebooting"}"#,
        )
        .await;
    assert_eq!(c.next("device:status").await["status"], "offline");
    assert_eq!(c.next("device:status").await["status"], "rebooting");
    assert!(c.drain("device:online", QUIET).await.is_empty());
    let (s, b) = server
        .post("/api/devices/dev-7/status", &key, r#"{"state":"x"}"#)
        .await;
    assert_eq!((s, b["error"]["field"].as_str()), (400, Some("status")));
    let (s, _) = server
        .post("/api/devices/dev-7/status", &[], r#"{"status":"x"}"#)
        .await;
    assert_eq!(s, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_stats_are_broadcast_periodically() {
    let server = Server::builder().set("stats_interval_ms", 200).start();
    let mut c = server.client("u").await;
    c.subscribe(json!({})).await;
    server.ingest(log("d", "INFO", "m")).await;
    c.logs(1, T).await;
    let stats = c.drain("system:stats", Duration::from_millis(1200)).await;
    assert!(stats.len() >= 3, "{} stats in 1.2 s", stats.len());
    let last = stats.last().unwrap();
    assert_eq!(last["connections"], 1);
    for key in ["logsInPerSec", "deliveriesPerSec", "drops", "uptime"] {
        assert!(!last[key].is_null(), "system:stats lacks {key}: {last}");
    }
}

/// A client being sent logs gets its `system:stats` in the same write as one of them (one
/// wake-up of its socket's writer instead of two), still once per interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_stats_ride_along_with_logs() {
    use common::raw::{raw_client, subscribe_raw};
    use futures_util::{SinkExt, StreamExt};
    use std::time::Instant;
    use tokio_tungstenite::tungstenite::Message;

    let server = Server::builder()
        .set("stats_interval_ms", 600)
        .set("rate_limit", 1000)
        .start();
    let mut ws = raw_client(&server, "rider").await;
    subscribe_raw(&mut ws, "d").await;
    // Frames with when they arrived, read while logs come every 50 ms for 3 s.
    let frames = tokio::spawn(async move {
        let mut frames: Vec<(Instant, String)> = Vec::new();
        let until = Instant::now() + Duration::from_millis(3600);
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(until.into(), ws.next()).await {
            if let Message::Text(t) = msg {
                if t == "2" {
                    let _ = ws.send(Message::Text("3".into())).await;
                }
                frames.push((Instant::now(), t.to_string()));
            }
        }
        frames
    });
    for i in 0..60 {
        server.ingest(log("d", "INFO", &i.to_string())).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let frames = frames.await.unwrap();
    let logs = frames
        .iter()
        .filter(|(_, t)| t.contains("\"log:new\""))
        .count();
    assert!(
        logs >= 55,
        "{logs} logs arrived: {:?}",
        &frames[..frames.len().min(5)]
    );
    let stats: Vec<usize> = (0..frames.len())
        .filter(|&i| frames[i].1.contains("\"system:stats\""))
        .collect();
    // Once the logs flow (after the first second), every round rides along: right behind a
    // log, in the same write. (Sent on their own, stats would arrive at any point between
    // two logs 50 ms apart.)
    let flowing = frames[0].0 + Duration::from_millis(1000);
    let last_log = frames
        .iter()
        .rev()
        .find(|(_, t)| t.contains("\"log:new\""))
        .map(|(at, _)| *at)
        .unwrap();
    let riding: Vec<&usize> = stats
        .iter()
        .filter(|&&i| frames[i].0 > flowing && frames[i].0 < last_log)
        .collect();
    assert!(
        riding.len() >= 2,
        "{} stats while logs flowed",
        riding.len()
    );
    for &&i in &riding {
        let (at, before) = (&frames[i].0, &frames[i - 1]);
        assert!(
            before.1.contains("\"log:new\"")
                && at.duration_since(before.0) < Duration::from_millis(10),
            "system:stats at {:?} did not come with a log (previous frame {:?} earlier: {})",
            at.duration_since(frames[0].0),
            at.duration_since(before.0),
            before.1
        );
    }
    // Still one per round: never two within 3/4 of the interval (less a little jitter).
    for pair in stats.windows(2) {
        let gap = frames[pair[1]].0.duration_since(frames[pair[0]].0);
        assert!(
            gap >= Duration::from_millis(400),
            "two system:stats {gap:?} apart"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api() {
    let server = Server::start();
    let admin = [("x-api-key", ADMIN_KEY)];
    let mut c = server.client("alice").await;
    c.subscribe(json!({ "deviceIds": ["d"] })).await;
    let _c2 = server.client("alice").await;
    let _c3 = server.client("bob").await;
    server
        .ingest(json!([log("d", "INFO", "1"), log("d", "INFO", "2")]))
        .await;
    c.logs(2, T).await;

    assert_eq!(server.get("/api/ws/connections", &[]).await.0, 401);
    assert_eq!(
        server
            .get("/api/ws/connections", &[("x-api-key", API_KEY)])
            .await
            .0,
        401
    );
    let user_token = format!("Bearer {}", Server::token("alice"));
    assert_eq!(
        server
            .get("/api/ws/stats", &[("authorization", &user_token)])
            .await
            .0,
        403
    );
    let admin_token = format!("Bearer {}", token_with("root", &[("role", json!("admin"))]));
    assert_eq!(
        server
            .get("/api/ws/stats", &[("authorization", &admin_token)])
            .await
            .0,
        200
    );

    let (s, conns) = server.get("/api/ws/connections", &admin).await;
    assert_eq!(s, 200);
    let list = conns["data"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    let mine = list
        .iter()
        .find(|x| x["subscription"].is_object())
        .expect("subscribed one");
    assert_eq!(mine["userId"], "alice");
    assert_eq!(mine["ip"], "127.0.0.1");
    assert_eq!(mine["messageCount"], 2);
    assert!(mine["connectedAt"].as_str().unwrap().contains('T'));
    assert_eq!(mine["subscription"]["params"]["deviceIds"], json!(["d"]));

    let (_, stats) = server.get("/api/ws/stats", &admin).await;
    assert_eq!(stats["data"]["total"], 3);
    assert_eq!(stats["data"]["byUser"], json!({ "alice": 2, "bob": 1 }));
    assert!(stats["data"]["averageUptime"].as_f64().unwrap() > 0.0);

    let (s, b) = server
        .post(
            "/api/ws/broadcast",
            &admin,
            r#"{"event":"maintenance","data":{"in":"5m"}}"#,
        )
        .await;
    assert_eq!((s, b["data"]["recipients"].as_u64()), (200, Some(3)));
    assert_eq!(c.next("maintenance").await, json!({ "in": "5m" }));
    for bad in [
        r#"{"data":1}"#,
        r#"{"event":"disconnect"}"#,
        r#"{"event":"log:new","data":{}}"#,
        r#"{"event":"error","data":{"code":"x"}}"#,
        r#"{"event":"system:stats","data":{}}"#,
        r#"{"event":"device:status","data":{}}"#,
        "nope",
    ] {
        assert_eq!(
            server.post("/api/ws/broadcast", &admin, bad).await.0,
            400,
            "{bad}"
        );
    }

    let id = mine["id"].as_str().unwrap();
    assert_eq!(
        server
            .delete("/api/ws/connections/AAAAAAAAAAAAAAAA", &admin)
            .await
            .0,
        404
    );
    assert_eq!(
        server.delete("/api/ws/connections/bad!", &admin).await.0,
        400
    );
    assert_eq!(
        server
            .delete(&format!("/api/ws/connections/{id}"), &[])
            .await
            .0,
        401
    );
    assert_eq!(
        server
            .delete(&format!("/api/ws/connections/{id}"), &admin)
            .await
            .0,
        200
    );
    c.next("close").await;
    eventually(T, "the kicked connection leaves the list", || async {
        let remaining = server.get("/api/ws/connections", &admin).await.1["data"]
            .as_array()
            .map_or(0, Vec::len);
        if remaining == 2 {
            Ok(())
        } else {
            Err(format!("{remaining} connections"))
        }
    })
    .await;
    let (s, health) = server.get("/api/ws/health", &[]).await;
    assert_eq!((s, health["success"].as_bool()), (200, Some(true)));
    assert_eq!(health["data"]["healthy"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_delivers_everything_accepted_then_exits_zero() {
    let mut server = Server::builder().set("rate_limit", 100_000).start();
    let mut c = server.client("u").await;
    c.subscribe(json!({ "deviceIds": ["d"], "batch": true }))
        .await;
    let logs: Vec<Value> = (0..500).map(|i| log("d", "INFO", &i.to_string())).collect();
    server.ingest(Value::Array(logs)).await;
    let status = tokio::task::spawn_blocking(move || {
        let status = server.terminate(Duration::from_secs(10));
        (server, status)
    });
    let got = c.logs(500, T).await;
    let seq: Vec<usize> = got
        .iter()
        .map(|l| l["message"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(seq, (0..500).collect::<Vec<_>>());
    // (How clients see the close, `transport close` so that they reconnect elsewhere, is
    // checked by the JS suite.)
    let (_server, status) = status.await.unwrap();
    let status = status.expect("exited within 10 s");
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_with_no_configuration_and_prints_usable_keys() {
    let server = Server::builder().unconfigured().start();
    let find = |label: &str| server.printed(label);
    assert!(
        server
            .stdout_lines
            .iter()
            .any(|l| l.contains("WARNING") && l.contains("development"))
    );
    let token = find("export LOGSTREAM_TOKEN=");
    let api_key = find("api key    : ");
    let admin_key = find("admin key  : ");
    let mut c = TestClient::connect(&server.url, Some(&token))
        .await
        .expect("printed token works");
    c.subscribe(json!({})).await;
    let (s, _) = server
        .post(
            "/api/logs",
            &[("x-api-key", &api_key)],
            &log("d", "INFO", "hi").to_string(),
        )
        .await;
    assert_eq!(s, 202);
    assert_eq!(messages(&c.logs(1, T).await), ["hi"]);
    assert_eq!(
        server
            .get("/api/ws/stats", &[("x-api-key", &admin_key)])
            .await
            .0,
        200
    );
}

/// A client that subscribes and then never reads: its socket queue overflows, the overflow is
/// counted as `slow_consumer`, and other clients are served in full meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_overflow_is_counted_and_isolated() {
    use common::raw::{raw_client, subscribe_raw};

    let server = Server::builder()
        .set("socket_queue", 8)
        .set("rate_limit", 1_000_000)
        // `system:stats` often: it waits for room in the full queue, and the logs that come
        // behind it must still be counted at once, not held uncounted while it waits.
        .set("stats_interval_ms", 100)
        .start();
    let mut ws = raw_client(&server, "slow").await;
    subscribe_raw(&mut ws, "d").await;
    // From here on the raw client reads nothing.

    let mut good = server.client("good").await;
    good.subscribe(json!({ "deviceIds": ["e"] })).await;
    let payload = "x".repeat(4000);
    for round in 0..40 {
        let mut logs: Vec<Value> = (0..200).map(|_| log("d", "INFO", &payload)).collect();
        logs.push(log("e", "INFO", &round.to_string()));
        server.ingest(Value::Array(logs)).await;
    }
    let got = good.logs(40, Duration::from_secs(30)).await;
    assert_eq!(
        messages(&got),
        (0..40).map(|i| i.to_string()).collect::<Vec<_>>()
    );
    eventually(
        Duration::from_secs(5),
        "a client that never reads must overflow its bounded queue",
        || async {
            let stats = server.admin_stats().await;
            let slow = &stats["drops"]["slowConsumer"];
            if slow.as_u64() > Some(0) {
                Ok(())
            } else {
                Err(slow.to_string())
            }
        },
    )
    .await;
    // Every matched log is either delivered or counted as dropped, exactly once: the socket
    // refuses packets after the router handed them on (its queue of 8 packets is full, far
    // below the byte bound), and those refusals come back to be counted.
    eventually(
        Duration::from_secs(5),
        "deliveries + slow_consumer drops = the 40 × 200 + 40 logs matched",
        || async {
            let stats = server.admin_stats().await;
            let data = &stats;
            let delivered = data["deliveries"].as_u64().unwrap_or(0);
            let slow = data["drops"]["slowConsumer"].as_u64().unwrap_or(0);
            if delivered + slow == 40 * 200 + 40 {
                Ok(())
            } else {
                Err(format!("{delivered} delivered + {slow} dropped; {data}"))
            }
        },
    )
    .await;
    let (_, health) = server.get("/api/ws/health", &[]).await;
    assert_eq!(health["data"]["healthy"], true);
    drop(ws);
}

/// Browsers start Socket.IO with HTTP long-polling; from another origin that needs CORS on
/// the Socket.IO path too, restricted to the configured origins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_covers_socket_io_polling_and_rest() {
    let server = Server::builder()
        .set("cors_origins", "http://dash.example")
        .start();
    let http = reqwest::Client::new();
    for path in ["/socket.io/?EIO=4&transport=polling", "/api/ws/health"] {
        let allowed = http
            .get(format!("{}{path}", server.url))
            .header("origin", "http://dash.example")
            .send()
            .await
            .unwrap();
        assert_eq!(
            allowed
                .headers()
                .get("access-control-allow-origin")
                .map(|v| v.to_str().unwrap()),
            Some("http://dash.example"),
            "{path}"
        );
        let other = http
            .get(format!("{}{path}", server.url))
            .header("origin", "http://evil.example")
            .send()
            .await
            .unwrap();
        assert!(
            other.headers().get("access-control-allow-origin").is_none(),
            "{path}"
        );
    }
}
