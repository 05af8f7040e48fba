//! No client can hurt the others: one user's costly subscriptions must not switch delivery
//! off for everyone, and a subscription's cost is bounded at admission.

mod common;

use std::time::Duration;

use common::{ADMIN_KEY, Server, log};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);

/// 100 distinct keywords of 256 bytes that never occur in a message.
fn heavy_keywords(seed: usize) -> Vec<String> {
    (0..100)
        .map(|k| {
            let unit = format!("zq{seed}x{k}y");
            unit.repeat(256 / unit.len() + 1)[..256].to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_heavy_keyword_subscriptions_do_not_switch_delivery_off_for_everyone() {
    let server = Server::builder().set("rate_limit", 100_000).start();
    // Eight sockets of one user, each with 100 keywords of 256 bytes.
    let mut attackers = Vec::new();
    for i in 0..8 {
        let mut c = server.client("mallory").await;
        c.subscribe(json!({ "keywords": heavy_keywords(i) })).await;
        attackers.push(c);
    }
    let mut victim = server.client("victim").await;
    victim
        .subscribe(json!({ "deviceIds": ["victim-device"] }))
        .await;

    // Ordinary traffic: 1 KB logs at 500/s for a second, and the victim's 200 logs.
    let filler = "the quick brown fox jumps over the lazy dog ".repeat(24);
    let mut expected = Vec::new();
    for tick in 0..20 {
        let mut batch: Vec<Value> = (0..25)
            .map(|i| log(&format!("noise-{i}"), "INFO", &filler[..1000]))
            .collect();
        for j in 0..10 {
            let m = format!("v{}", tick * 10 + j);
            expected.push(m.clone());
            batch.push(log("victim-device", "INFO", &m));
        }
        server.ingest(Value::Array(batch)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = victim.logs(expected.len(), T).await;
    let messages: Vec<&str> = got.iter().map(|l| l["message"].as_str().unwrap()).collect();
    assert_eq!(messages, expected, "the victim got every one of its logs");

    let (_, plugins) = server
        .get("/api/plugins", &[("x-api-key", ADMIN_KEY)])
        .await;
    let default = plugins["data"]["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "default")
        .cloned()
        .unwrap();
    println!(
        "default filter under the keyword-heavy load: {} calls, average {} µs, {} failures",
        default["calls"], default["averageCallUs"], default["failures"]
    );
    assert_eq!(default["status"], "active", "{default}");
    assert_eq!(default["failures"], 0, "{default}");
    let (_, health) = server.get("/api/ws/health", &[]).await;
    assert_eq!(health["data"]["healthy"], true);
    for a in attackers {
        a.disconnect().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_costs_what_its_params_weigh_within_per_user_caps() {
    let server = Server::builder()
        .set("max_subscription_bytes", 4096)
        .set("max_user_subscription_bytes", 10_000)
        .start();
    let mut c = server.client("heavy").await;
    // Over the per-subscription cap: refused, naming the cap.
    let big = json!({ "keywords": vec!["k".repeat(250); 20] });
    let ack = c.emit_ack("log:subscribe", big).await;
    assert_eq!(ack["error"]["code"], "subscription_too_costly", "{ack}");
    assert!(
        ack["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_subscription_bytes")
    );
    assert_eq!(c.next("error").await["code"], "subscription_too_costly");
    // Within it, until the user's sockets together pass the per-user cap.
    let medium = |i: usize| json!({ "keywords": vec![format!("{i}{}", "k".repeat(240)); 12] });
    let mut others = Vec::new();
    for i in 0..3 {
        let mut o = server.client("heavy").await;
        o.subscribe(medium(i)).await;
        others.push(o);
    }
    let ack = c.emit_ack("log:subscribe", medium(9)).await;
    assert_eq!(ack["error"]["code"], "subscription_too_costly", "{ack}");
    assert!(
        ack["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_user_subscription_bytes")
    );
    // Another user is not charged for it.
    let mut other_user = server.client("light").await;
    other_user.subscribe(medium(1)).await;
    // Leaving frees the budget.
    others.pop().unwrap().disconnect().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let ack = c.emit_ack("log:subscribe", medium(8)).await;
        if ack["success"] == true {
            break;
        }
        c.next("error").await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the budget was not freed: {ack}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_keeps_flooding_is_disconnected() {
    let server = Server::builder().set("events_per_second", 5).start();
    let flooder = server.client("flooder").await;
    let mut calm = server.client("calm").await;
    calm.subscribe(json!({"deviceIds": ["d"]})).await;
    let mut sent = 0;
    while sent < 400 && flooder.try_emit("log:pause", Value::Null).await {
        sent += 1;
    }
    // The server drops it (whenever the client library notices; its emits fail once the
    // server has closed the connection, which can come before the 400th).
    common::eventually(
        Duration::from_secs(30),
        "the flooder is disconnected",
        || async {
            let list = server
                .get("/api/ws/connections", &[("x-api-key", ADMIN_KEY)])
                .await
                .1;
            let users: Vec<String> = list["data"]
                .as_array()
                .map(|a| a.iter().map(|c| c["userId"].to_string()).collect())
                .unwrap_or_default();
            if users.iter().any(|u| u.contains("flooder")) {
                Err(format!("{users:?}"))
            } else {
                Ok(())
            }
        },
    )
    .await;
    // Everyone else is served.
    server.ingest(log("d", "INFO", "still here")).await;
    assert_eq!(calm.logs(1, T).await[0]["message"], "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_origins_apply_to_the_socket_io_handshake() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = Server::builder()
        .set("cors_origins", "http://good.example")
        .start();
    let handshake = |origin: &'static str| {
        let url = format!(
            "{}/socket.io/?EIO=4&transport=websocket",
            server.url.replacen("http", "ws", 1)
        );
        async move {
            let mut request = url.into_client_request().unwrap();
            request
                .headers_mut()
                .insert("Origin", origin.parse().unwrap());
            let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
            let auth = json!({ "token": Server::token("o") });
            ws.send(Message::Text(format!("40{auth}").into()))
                .await
                .unwrap();
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.starts_with("4") && !t.starts_with("42") => {
                        return t.to_string();
                    }
                    Some(Ok(_)) => continue,
                    other => return format!("{other:?}"),
                }
            }
        }
    };
    let refused = handshake("http://evil.example").await;
    assert!(
        refused.starts_with("44") && refused.contains("Origin not allowed"),
        "{refused}"
    );
    let admitted = handshake("http://good.example").await;
    assert!(admitted.starts_with("40"), "{admitted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_takes_json_only_and_no_control_characters_in_ids() {
    let server = Server::start();
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/api/logs", server.url))
        .header("x-api-key", common::API_KEY)
        .header("content-type", "text/plain")
        .body(log("d", "INFO", "m").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    let (s, body) = server
        .post(
            "/api/logs",
            &[("x-api-key", common::API_KEY)],
            &json!([log("d", "INFO", "ok"), log("evil\u{1b}[2J", "INFO", "m")]).to_string(),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"]["field"], "[1].deviceId");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_filter_never_stays_down() {
    // A `default` that fails on demand: the misbehaving fixture under that name.
    let dir = common::scratch_dir("default-down");
    std::fs::copy(
        std::path::PathBuf::from(env!("LOGSTREAM_BUILT_PLUGINS")).join("misbehave.wasm"),
        dir.join("default.wasm"),
    )
    .unwrap();
    let server = Server::builder()
        .env("LOGSTREAM_PLUGINS_DIR", dir.display())
        .set("plugin_timeout_ms", 30)
        .set("plugin_max_failures", 3)
        .start();
    let mut c = server.client("u").await;
    c.subscribe(json!({})).await;
    // Three failing batches in a row (one at a time, so they are three batches).
    let mut codes = Vec::new();
    for _ in 0..3 {
        server.ingest(log("d", "INFO", "trap")).await;
        codes.push(c.next("error").await["code"].as_str().unwrap().to_owned());
    }
    assert_eq!(codes, ["plugin_failed", "plugin_failed", "filter_disabled"]);
    let (_, health) = server.get("/api/ws/health", &[]).await;
    assert_eq!(health["data"]["healthy"], false, "{health}");
    // Restarted on its own after its back-off (1 s): subscriptions work again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, health) = server.get("/api/ws/health", &[]).await;
    assert_eq!(health["data"]["healthy"], true, "{health}");
    c.subscribe(json!({})).await;
    server.ingest(log("d", "INFO", "fine")).await;
    assert_eq!(c.logs(1, T).await[0]["message"], "fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_makes_a_filter_fail_is_found_and_ended_alone() {
    let dir = common::scratch_dir("triage");
    std::fs::copy(
        std::path::PathBuf::from(env!("LOGSTREAM_BUILT_PLUGINS")).join("misbehave.wasm"),
        dir.join("misbehave.wasm"),
    )
    .unwrap();
    let server = Server::builder()
        .env("LOGSTREAM_PLUGINS_DIR", dir.display())
        .set("plugin_timeout_ms", 30)
        .set("plugin_max_failures", 3)
        .set("rate_limit", 100_000)
        .start();
    // Five ordinary subscribers (distinct params, so five registrations) and one whose
    // params make every evaluation spin.
    let mut victims = Vec::new();
    for i in 0..5 {
        let mut c = server.client(&format!("victim-{i}")).await;
        c.subscribe(json!({ "filter": "misbehave", "params": { "v": i } }))
            .await;
        victims.push(c);
    }
    let mut attacker = server.client("mallory").await;
    attacker
        .subscribe(json!({ "filter": "misbehave", "params": { "spin": true } }))
        .await;

    // Several batches, one after the other: each would fail while the spinner is registered.
    let mut expected = Vec::new();
    for round in 0..4 {
        let batch: Vec<Value> = (0..5)
            .map(|i| {
                let m = format!("r{round}-{i}");
                expected.push(m.clone());
                log("d", "INFO", &m)
            })
            .collect();
        server.ingest(Value::Array(batch)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, v) in victims.iter_mut().enumerate() {
        let got = v.logs(expected.len(), T).await;
        let messages: Vec<&str> = got.iter().map(|l| l["message"].as_str().unwrap()).collect();
        assert_eq!(messages, expected, "victim {i} got every log, in order");
        let errors = v.drain("error", Duration::from_millis(200)).await;
        assert!(
            errors.is_empty(),
            "victim {i} heard of no failure: {errors:?}"
        );
    }
    println!(
        "triage: {} victims received {}/{} logs each",
        victims.len(),
        expected.len(),
        expected.len()
    );

    // The spinner's subscription was ended, with the reason, and what it missed reported.
    let (name, dropped) = attacker
        .next_of(&["log:dropped"], Duration::from_secs(10))
        .await;
    assert_eq!(name, "log:dropped");
    assert_eq!(dropped["reason"], "plugin_failed", "{dropped}");
    assert_eq!(dropped["count"], 5, "{dropped}");
    let e = attacker.next("error").await;
    assert_eq!(e["code"], "subscription_too_costly", "{e}");
    assert_eq!(e["filter"], "misbehave", "{e}");
    // The same params are refused for a while.
    attacker
        .emit(
            "log:subscribe",
            json!({ "filter": "misbehave", "params": { "spin": true } }),
        )
        .await;
    let e = attacker.next("error").await;
    assert_eq!(e["code"], "subscription_too_costly", "{e}");

    // The plugin was not disabled and the server is healthy.
    let (_, plugins) = server
        .get("/api/plugins", &[("x-api-key", ADMIN_KEY)])
        .await;
    let m = plugins["data"]["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "misbehave")
        .cloned()
        .unwrap();
    assert_eq!(m["status"], "active", "{m}");
    let (_, health) = server.get("/api/ws/health", &[]).await;
    assert_eq!(health["data"]["healthy"], true, "{health}");
}
