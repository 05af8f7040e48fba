//! Who writes and sees what, from the REST side and across instances: scoped ingest keys
//! (403 naming the entry, nothing of the request delivered), SIGHUP adding a key without
//! dropping connections, full token checks, the audit trail, and scopes held on two Redis
//! instances. (The socket side is in `tests/js/scope.test.js`, with the official client.)

mod common;

use std::process::Command;
use std::time::Duration;

use common::redis::RedisServer;
use common::{API_KEY, SECRET, Server, TestClient, eventually, log, scratch_dir, token_with};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(10);

/// `logstream key new`, as an operator runs it: (the key, the TOML entry).
fn new_key(name: &str, devices: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_logstream"))
        .args(["key", "new", "--name", name, "--devices"])
        .args(devices)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text
        .lines()
        .find_map(|l| {
            l.split_once("X-API-Key): ")
                .map(|(_, k)| k.trim().to_owned())
        })
        .expect("the key is printed");
    let entry = text[text.find("[[ingest_keys]]").expect("the TOML entry")..].to_owned();
    (key, entry)
}

fn messages(logs: &[Value]) -> Vec<String> {
    logs.iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_ingest_keys_refuse_whole_requests_and_sighup_adds_keys() {
    let dir = scratch_dir("scoped-keys");
    let config = dir.join("logstream.toml");
    let (plant_a, entry_a) = new_key("plant-a", &["plant-a/*"]);
    std::fs::write(&config, &entry_a).unwrap();
    let server = Server::builder().config_file(&config).start();
    let mut c = server.client("watcher").await;
    c.subscribe(json!({})).await;

    let post = |key: String, body: Value| {
        let server = &server;
        async move {
            server
                .post("/api/logs", &[("x-api-key", &key)], &body.to_string())
                .await
        }
    };
    // One entry outside the key's devices refuses the whole request, naming it.
    let (s, body) = post(
        plant_a.clone(),
        json!([
            log("plant-a/1", "INFO", "a1"),
            log("plant-b/1", "INFO", "b1")
        ]),
    )
    .await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(body["error"]["field"], "[1].deviceId");
    let (s, body) = post(plant_a.clone(), log("plant-b/1", "INFO", "b1")).await;
    assert_eq!(
        (s, body["error"]["field"].as_str()),
        (403, Some("deviceId"))
    );
    let (s, _) = server
        .post(
            "/api/devices/plant-b%2F1/status",
            &[("x-api-key", &plant_a)],
            r#"{"status":"online"}"#,
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = post(plant_a.clone(), json!([log("plant-a/2", "INFO", "a2")])).await;
    assert_eq!(s, 202);
    assert_eq!(
        messages(&c.logs(1, T).await),
        ["a2"],
        "nothing of a refused request was delivered"
    );
    // The unrestricted key still writes anything; a wrong key is 401.
    let (s, _) = post(API_KEY.into(), log("plant-b/1", "INFO", "b2")).await;
    assert_eq!(s, 202);
    assert_eq!(messages(&c.logs(1, T).await), ["b2"]);
    assert_eq!(post("nope".into(), log("x", "INFO", "x")).await.0, 401);

    // SIGHUP: a key added to the file works, and the connection stays.
    let (plant_b, entry_b) = new_key("plant-b", &["plant-b/*"]);
    std::fs::write(&config, format!("{entry_a}\n{entry_b}")).unwrap();
    assert_eq!(
        post(plant_b.clone(), log("plant-b/3", "INFO", "b3"))
            .await
            .0,
        401
    );
    let hup = |server: &Server| {
        Command::new("kill")
            .args(["-HUP", &server.pid().to_string()])
            .status()
            .unwrap()
    };
    hup(&server);
    eventually(T, "the new key works after SIGHUP", || async {
        match post(plant_b.clone(), log("plant-b/3", "INFO", "b3")).await {
            (202, _) => Ok(()),
            (s, b) => Err(format!("{s} {b}")),
        }
    })
    .await;
    assert_eq!(
        messages(&c.logs(1, T).await),
        ["b3"],
        "still connected and served"
    );

    // A broken file keeps the keys in force.
    std::fs::write(&config, "ingest_keys = 7\n").unwrap();
    hup(&server);
    eventually(T, "the failed reload is logged", || async {
        let log = server.stderr().join("\n");
        if log.contains("reload (SIGHUP) failed") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;
    assert_eq!(
        post(plant_b.clone(), log("plant-b/4", "INFO", "b4"))
            .await
            .0,
        202
    );

    // The audit trail names who, what and from where, and never a key.
    let audit = server.stderr().join("\n");
    assert!(
        audit.contains("ingest refused")
            && audit.contains("plant-a")
            && audit.contains("127.0.0.1"),
        "{audit}"
    );
    assert!(
        !audit.contains(&plant_a) && !audit.contains(&plant_b),
        "a key reached the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_in_full() {
    let server = Server::start();
    let now = jsonwebtoken::get_current_timestamp();
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let sign = |claims: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &key,
        )
        .unwrap()
    };
    let refused = [
        // An 800 KB token, validly signed.
        sign(json!({"sub": "a", "exp": now + 600, "pad": "x".repeat(800_000)})),
        // Not valid yet.
        sign(json!({"sub": "a", "exp": now + 600, "nbf": now + 300})),
        // Issued in the future.
        sign(json!({"sub": "a", "exp": now + 600, "iat": now + 300})),
        // A `devices` claim that is not a list of patterns.
        sign(json!({"sub": "a", "exp": now + 600, "devices": "plant-a/*"})),
        sign(json!({"sub": "a", "exp": now + 600, "devices": [""]})),
    ];
    for token in refused {
        let r = TestClient::connect(&server.url, Some(&token)).await;
        assert!(r.is_err(), "accepted a token of {} bytes", token.len());
    }
    let fine = token_with("a", &[("devices", json!(["plant-a/*"]))]);
    TestClient::connect(&server.url, Some(&fine))
        .await
        .expect("a well-formed scoped token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_hold_on_every_instance_of_a_redis_cluster() {
    let redis = RedisServer::start();
    let start = |id: &str| {
        Server::builder()
            .env("LOGSTREAM_REDIS_URL", redis.url())
            .set("instance_id", id)
            .start()
    };
    let a = start("a");
    let b = start("b");
    for s in [&a, &b] {
        s.wait_for_redis().await;
    }
    let scoped = token_with("ann", &[("devices", json!(["plant-a/*"]))]);
    let mut ann = TestClient::connect(&b.url, Some(&scoped)).await.unwrap();
    ann.subscribe(json!({})).await;
    let mut all = b.client("root").await;
    all.subscribe(json!({})).await;
    // Refused on B as on A.
    let ack = ann
        .emit_ack("log:subscribe", json!({"deviceIds": ["plant-b/1"]}))
        .await;
    assert_eq!(ack["error"]["code"], "forbidden");
    a.ingest(json!([
        log("plant-b/1", "INFO", "b"),
        log("plant-a/1", "INFO", "a")
    ]))
    .await;
    assert_eq!(messages(&all.logs(2, T).await), ["b", "a"]);
    assert_eq!(messages(&ann.logs(1, T).await), ["a"]);
    for (device, status) in [("plant-b%2F1", "offline"), ("plant-a%2F1", "online")] {
        let (s, _) = a
            .post(
                &format!("/api/devices/{device}/status"),
                &[("x-api-key", API_KEY)],
                &json!({ "status": status }).to_string(),
            )
            .await;
        assert_eq!(s, 202);
    }
    assert_eq!(all.next("device:status").await["deviceId"], "plant-b/1");
    assert_eq!(ann.next("device:status").await["deviceId"], "plant-a/1");
    assert!(
        ann.try_next_of(&["device:status", "log:new"], Duration::from_millis(400))
            .await
            .is_none(),
        "nothing outside the scope"
    );
}
