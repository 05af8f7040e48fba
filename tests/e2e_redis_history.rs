//! History and resume across a Redis cluster: a client of an instance that dies (SIGKILL)
//! resumes on another without a gap or a duplicate, a seed-channel publish is delivered once
//! and is resumable, and a Redis restart loses nothing that was accepted.

mod common;

use std::time::Duration;

use common::redis::RedisServer;
use common::{API_KEY, Server, TestClient, log};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(15);

fn instance(redis_url: &str, id: &str) -> Server {
    Server::builder()
        .env("LOGSTREAM_REDIS_URL", redis_url)
        .set("instance_id", id)
        .set("rate_limit", 100_000)
        .start()
}

async fn ready(server: &Server) {
    server.wait_for_redis().await;
}

fn messages(logs: &[Value]) -> Vec<String> {
    logs.iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect()
}

fn numbered(device: &str, from: usize, n: usize) -> Value {
    Value::Array(
        (from..from + n)
            .map(|i| log(device, "INFO", &i.to_string()))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_another_instance_after_its_instance_is_killed() {
    let redis = RedisServer::start();
    let mut a = instance(&redis.url(), "a");
    let b = instance(&redis.url(), "b");
    ready(&a).await;
    ready(&b).await;
    let token = Server::token("roamer");
    let mut c = TestClient::connect(&a.url, Some(&token)).await.unwrap();
    let subscribed = c
        .subscribe(json!({"deviceIds": ["d"], "resume": true}))
        .await;
    let session = subscribed["session"].as_str().unwrap().to_owned();

    a.ingest(numbered("d", 0, 10)).await;
    let first = c.logs(10, T).await;
    let mut got = messages(&first);
    let mut last = first.last().cloned().unwrap();
    // Accepted by A just before it dies: in the stream, whether or not A delivered them.
    a.ingest(numbered("d", 10, 5)).await;
    a.kill();
    while let Some((_, v)) = c
        .try_next_of(&["log:new"], Duration::from_millis(300))
        .await
    {
        got.push(v["message"].as_str().unwrap().to_owned());
        last = v;
    }
    let offset = c.offset_of(&last).expect("resumable logs carry offsets");
    c.disconnect().await;
    // B took more meanwhile.
    b.ingest(numbered("d", 15, 10)).await;

    let auth = json!({"token": token, "session": session, "offset": offset});
    let mut resumed = TestClient::connect_auth(&b.url, Some(auth)).await.unwrap();
    let event = resumed.next("log:subscribed").await;
    assert_eq!(event["recovered"], true, "{event}");
    assert_eq!(event["session"], session.as_str());
    let expected_rest = 25 - got.len();
    got.extend(messages(&resumed.logs(expected_rest, T).await));
    assert_eq!(
        got,
        (0..25).map(|i| i.to_string()).collect::<Vec<_>>(),
        "every log once, in order, across the failover"
    );
    assert!(
        resumed
            .try_next_of(&["log:new"], Duration::from_millis(400))
            .await
            .is_none(),
        "no duplicate"
    );
    // And then live, from B.
    b.ingest(numbered("d", 25, 1)).await;
    assert_eq!(messages(&resumed.logs(1, T).await), ["25"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_channel_publish_reaches_each_client_once_and_is_resumable() {
    let redis = RedisServer::start();
    let a = instance(&redis.url(), "a");
    let b = instance(&redis.url(), "b");
    ready(&a).await;
    ready(&b).await;
    let mut ca = a.client("u1").await;
    ca.subscribe(json!({"resume": true})).await;
    let mut cb = b.client("u2").await;
    cb.subscribe(json!({"resume": true})).await;
    redis
        .publish("log:new", &log("d", "INFO", "s0").to_string())
        .await;
    redis
        .publish(
            "log:new",
            &json!([log("d", "INFO", "s1"), log("d", "INFO", "s2")]).to_string(),
        )
        .await;
    let mut s0 = None;
    for c in [&mut ca, &mut cb] {
        let got = c.logs(3, T).await;
        assert_eq!(messages(&got), ["s0", "s1", "s2"]);
        assert!(got.iter().all(|l| c.offset_of(l).is_some()), "with offsets");
        s0 = c.offset_of(&got[0]);
        assert!(
            c.try_next_of(&["log:new"], Duration::from_millis(400))
                .await
                .is_none(),
            "once, not once per instance"
        );
    }
    // Resumable, on either instance: from the first one's offset, the other two.
    let mut again = b.client("u3").await;
    let ack = again
        .emit_ack("log:subscribe", json!({"since": s0.unwrap()}))
        .await;
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!(messages(&again.logs(2, T).await), ["s1", "s2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_stream_loses_nothing_that_was_accepted() {
    let mut redis = RedisServer::start_persistent();
    let a = instance(&redis.url(), "a");
    ready(&a).await;
    let mut c = a.client("u").await;
    c.subscribe(json!({"deviceIds": ["d"]})).await;
    let http = reqwest::Client::new();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..60 {
        if i == 20 {
            redis.restart();
        }
        let r = http
            .post(format!("{}/api/logs", a.url))
            .header("x-api-key", API_KEY)
            .json(&log("d", "INFO", &i.to_string()))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            202 => accepted.push(i.to_string()),
            503 => refused += 1,
            s => panic!("unexpected status {s}"),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    println!(
        "{} accepted, {refused} refused with 503 during the restart",
        accepted.len()
    );
    assert!(accepted.len() >= 30, "most requests went through");
    let got = messages(&c.logs(accepted.len(), Duration::from_secs(30)).await);
    assert_eq!(got, accepted, "every accepted log, once, in order");
    assert!(
        c.try_next_of(&["log:new"], Duration::from_millis(400))
            .await
            .is_none()
    );
}
