//! Log streams sharded by device (`redis_stream_shards`), with a real `redis-server`: each
//! instance reads only the shards its clients can match, a subscription that needs a new
//! shard starts with no gap and no duplicate, a replay merges shards in offset order, and an
//! instance with another shard count is refused.

mod common;

use std::process::Command;
use std::time::Duration;

use common::redis::RedisServer;
use common::{API_KEY, Server, TestClient, eventually, log, scratch_dir};
use logstream::shards::shard_of;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(15);
const SHARDS: usize = 8;

fn instance(url: &str, id: &str) -> Server {
    Server::builder()
        .env("LOGSTREAM_REDIS_URL", url)
        .set("instance_id", id)
        .set("rate_limit", 100_000)
        .set("redis_stream_shards", SHARDS)
        .start()
}

async fn health(server: &Server) -> Value {
    server.get("/api/ws/health", &[]).await.1["data"]["bus"].clone()
}

async fn ready(server: &Server) {
    eventually(T, "the bus is connected", || async {
        let h = health(server).await;
        if h["state"] == "connected" {
            Ok(())
        } else {
            Err(h.to_string())
        }
    })
    .await;
}

/// Wait until `server` reads exactly `shards`.
async fn reads(server: &Server, shards: &[usize]) {
    let want = json!(shards);
    eventually(
        T,
        "the instance reads the shards its clients need",
        || async {
            let h = health(server).await;
            if h["shardsRead"] == want {
                Ok(())
            } else {
                Err(h.to_string())
            }
        },
    )
    .await;
}

/// `n` device ids, each in a shard of its own.
fn devices_in_distinct_shards(n: usize) -> Vec<String> {
    let mut taken = Vec::new();
    let mut out = Vec::new();
    for i in 0.. {
        let d = format!("dev-{i}");
        let s = shard_of(&d, SHARDS);
        if !taken.contains(&s) {
            taken.push(s);
            out.push(d);
            if out.len() == n {
                break;
            }
        }
    }
    out
}

/// An offset (`epoch:ms-n`) as something ordered.
fn ordered(offset: &str) -> (u64, u64) {
    let (_, pos) = offset.rsplit_once(':').expect("epoch:position");
    let (ms, n) = pos.split_once('-').expect("ms-n");
    (ms.parse().unwrap(), n.parse().unwrap())
}

fn messages(logs: &[Value]) -> Vec<String> {
    logs.iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect()
}

async fn post(server: &Server, logs: Vec<Value>) {
    let (s, body) = server
        .post(
            "/api/logs",
            &[("x-api-key", API_KEY)],
            &Value::Array(logs).to_string(),
        )
        .await;
    assert_eq!(s, 202, "{body}");
}

async fn entries_read(server: &Server) -> u64 {
    health(server).await["entriesRead"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_instance_reads_only_the_shards_its_clients_watch() {
    let redis = RedisServer::start();
    let a = instance(&redis.url(), "a");
    let b = instance(&redis.url(), "b");
    ready(&a).await;
    ready(&b).await;
    // No client: nothing read.
    assert_eq!(health(&a).await["shardsRead"], json!([]));
    let devs = devices_in_distinct_shards(3);
    let (da, db, nobody) = (&devs[0], &devs[1], &devs[2]);
    let mut ca = a.client("ua").await;
    ca.subscribe(json!({"deviceIds": [da]})).await;
    let mut cb = b.client("ub").await;
    cb.subscribe(json!({"deviceIds": [db]})).await;
    reads(&a, &[shard_of(da, SHARDS)]).await;
    reads(&b, &[shard_of(db, SHARDS)]).await;
    let before = (entries_read(&a).await, entries_read(&b).await);
    // 20 posts of 3 × 10 logs, through both instances.
    let posts = 20;
    for i in 0..posts {
        let logs = [da, db, nobody]
            .iter()
            .flat_map(|d| (0..10).map(move |j| log(d, "INFO", &format!("{d}-{:03}", i * 10 + j))))
            .collect();
        post(if i % 2 == 0 { &a } else { &b }, logs).await;
    }
    let want = |d: &str| {
        (0..posts * 10)
            .map(|k| format!("{d}-{k:03}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(messages(&ca.logs(posts * 10, T).await), want(da));
    assert_eq!(messages(&cb.logs(posts * 10, T).await), want(db));
    for c in [&mut ca, &mut cb] {
        assert!(
            c.try_next_of(&["log:new", "log:batch"], Duration::from_millis(500))
                .await
                .is_none(),
            "each log once"
        );
    }
    // Each instance read its own shard's logs (and at most one wake-up entry per post),
    // not the 600 a single stream would have made it read.
    let read = (
        entries_read(&a).await - before.0,
        entries_read(&b).await - before.1,
    );
    let own = (posts * 10) as u64;
    for (instance, n) in [("a", read.0), ("b", read.1)] {
        assert!(
            (own..=own + posts as u64 * 2).contains(&n),
            "instance {instance} read {n} entries for {own} logs of its shard"
        );
    }
    // The logs nobody watched are in their shard all the same.
    let key = format!("logstream:logs:{}", shard_of(nobody, SHARDS));
    let len: usize = redis.query(redis::cmd("XLEN").arg(&key)).await;
    assert_eq!(len, posts * 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_shard_starts_without_gap_or_duplicate_and_replays_merge_in_offset_order() {
    let redis = RedisServer::start();
    let a = instance(&redis.url(), "a");
    ready(&a).await;
    let devs = devices_in_distinct_shards(2);
    let (d1, d2) = (devs[0].clone(), devs[1].clone());
    let mut first = a.client("u1").await;
    first
        .subscribe(json!({"deviceIds": [d1], "resume": true}))
        .await;
    reads(&a, &[shard_of(&d1, SHARDS)]).await;
    // Both devices log continuously while a second client adds the other shard.
    let url = a.url.clone();
    let (dd1, dd2) = (d1.clone(), d2.clone());
    let total = 400;
    let ingest = tokio::spawn(async move {
        let http = reqwest::Client::new();
        for i in 0..total / 5 {
            let logs: Vec<Value> = (0..5)
                .flat_map(|j| {
                    let k = i * 5 + j;
                    [
                        log(&dd1, "INFO", &format!("{dd1}-{k:03}")),
                        log(&dd2, "INFO", &format!("{dd2}-{k:03}")),
                    ]
                })
                .collect();
            common::post_accepted(&http, &url, &logs).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut second = a.client("u2").await;
    second
        .subscribe(json!({"deviceIds": [d2], "resume": true}))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A replay across both shards, from an offset of the first client's.
    let seen = first.logs(5, T).await;
    let since = first.offset_of(seen.last().unwrap()).unwrap();
    ingest.await.unwrap();
    let all_first = {
        let mut v = seen.clone();
        v.extend(first.logs(total - 5, T).await);
        v
    };
    assert_eq!(
        messages(&all_first),
        (0..total)
            .map(|k| format!("{d1}-{k:03}"))
            .collect::<Vec<_>>()
    );
    // The second client: from where it began to the end, every log of its device once, in
    // order, with growing offsets.
    let mut got_second = Vec::new();
    loop {
        let more = second.drain("log:new", Duration::from_millis(700)).await;
        if more.is_empty() {
            break;
        }
        got_second.extend(more);
    }
    let numbers: Vec<usize> = messages(&got_second)
        .iter()
        .map(|m| m.rsplit_once('-').unwrap().1.parse().unwrap())
        .collect();
    assert!(!numbers.is_empty(), "the second client got logs");
    let start = numbers[0];
    assert!(start > 0, "it began mid-ingest, not with history");
    assert_eq!(
        numbers,
        (start..total).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    let offsets: Vec<(u64, u64)> = got_second
        .iter()
        .map(|l| ordered(&second.offset_of(l).unwrap()))
        .collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "offsets grow");

    // What the merged replay must give: every log of both devices after `since`, by offset.
    let mut by_offset: Vec<((u64, u64), String)> = all_first
        .iter()
        .map(|l| {
            (
                ordered(&first.offset_of(l).unwrap()),
                l["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    by_offset.extend(got_second.iter().map(|l| {
        (
            ordered(&second.offset_of(l).unwrap()),
            l["message"].as_str().unwrap().to_owned(),
        )
    }));
    by_offset.retain(|(o, _)| *o > ordered(&since));
    by_offset.sort();
    let mut replay = a.client("u3").await;
    let ack = replay
        .emit_ack(
            "log:subscribe",
            json!({"deviceIds": [d1, d2], "since": since}),
        )
        .await;
    assert_eq!(ack["recovered"], true, "{ack}");
    let mut replayed = Vec::new();
    loop {
        let more = replay.drain("log:new", Duration::from_millis(700)).await;
        if more.is_empty() {
            break;
        }
        replayed.extend(more);
    }
    let got: Vec<String> = messages(&replayed);
    // The first device: exactly what followed `since`. The second: its shard's history
    // (read when the shard was added) and on, every log once, to the end.
    let of = |v: &[String], d: &str| -> Vec<usize> {
        v.iter()
            .filter_map(|m| m.strip_prefix(&format!("{d}-")))
            .map(|n| n.parse().unwrap())
            .collect()
    };
    let expected: Vec<String> = by_offset.iter().map(|(_, m)| m.clone()).collect();
    assert_eq!(of(&got, &d1), of(&expected, &d1));
    let second_in_replay = of(&got, &d2);
    let from = second_in_replay[0];
    assert_eq!(second_in_replay, (from..total).collect::<Vec<_>>());
    // Where both are known, the interleaving is the offsets' order.
    let second_start = format!("{d2}-{start:03}");
    let cut = |v: &[String]| -> Vec<String> {
        let from = v.iter().position(|m| *m == second_start).unwrap_or(v.len());
        v[from..].to_vec()
    };
    assert_eq!(cut(&got), cut(&expected), "merged in offset order");
    let offsets: Vec<(u64, u64)> = replayed
        .iter()
        .map(|l| ordered(&replay.offset_of(l).unwrap()))
        .collect();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "replayed offsets grow"
    );
    assert!(offsets[0] > ordered(&since));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_shard_count_on_the_same_redis_is_refused() {
    let redis = RedisServer::start();
    let a = instance(&redis.url(), "a");
    ready(&a).await;
    let data = scratch_dir("shards-refused");
    let out = Command::new(env!("CARGO_BIN_EXE_logstream"))
        .args(["serve", "--host", "127.0.0.1", "--port", "0"])
        .args(["--set", "redis_stream_shards=2"])
        .env("LOGSTREAM_REDIS_URL", redis.url())
        .env("LOGSTREAM_DATA_DIR", data.display().to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("redis_stream_shards is 2 here")
            && said.contains("spread over 8")
            && said.contains("Changing the shard count"),
        "{said}"
    );
    // The running instance is not disturbed.
    let mut c: TestClient = a.client("u").await;
    c.subscribe(json!({"deviceIds": ["x"]})).await;
    post(&a, vec![log("x", "INFO", "still here")]).await;
    assert_eq!(messages(&c.logs(1, T).await), ["still here"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_tail_resume_across_shards_on_an_instance_that_did_not_read_them() {
    let redis = RedisServer::start();
    let a = instance(&redis.url(), "a");
    let b = instance(&redis.url(), "b");
    ready(&a).await;
    ready(&b).await;
    let devs = devices_in_distinct_shards(2);
    let token = Server::token("u");
    let mut c = TestClient::connect(&a.url, Some(&token)).await.unwrap();
    let ack = c
        .subscribe(json!({"deviceIds": [devs[0], devs[1]], "resume": true}))
        .await;
    let session = ack["session"].as_str().unwrap().to_owned();
    let numbered = |from: usize, n: usize| -> Vec<Value> {
        (from..from + n)
            .map(|i| log(&devs[i % 2], "INFO", &format!("{i:03}")))
            .collect()
    };
    post(&a, numbered(0, 20)).await;
    let got = c.logs(20, T).await;
    let offset = c.offset_of(&got[9]).unwrap();
    c.disconnect().await;
    // B reads nothing yet: no client of it needs these shards.
    assert_eq!(health(&b).await["shardsRead"], json!([]));
    post(&a, numbered(20, 10)).await;

    // The session resumes on B: B reads both shards first, then replays from the offset.
    let auth = json!({"token": token, "session": session, "offset": offset});
    let mut resumed = TestClient::connect_auth(&b.url, Some(auth)).await.unwrap();
    let event = resumed.next("log:subscribed").await;
    assert_eq!(event["recovered"], true, "{event}");
    let rest = messages(&resumed.logs(20, T).await);
    // Order across devices is the shards' merge (by offset), the same wherever it is read:
    // first what the client had after its offset, then the ten new ones.
    assert_eq!(rest[..10], messages(&got[10..]), "replayed in offset order");
    let mut new: Vec<String> = rest[10..].to_vec();
    new.sort();
    assert_eq!(new, (20..30).map(|i| format!("{i:03}")).collect::<Vec<_>>());
    for d in 0..2 {
        let of_device: Vec<&String> = rest
            .iter()
            .filter(|m| m.parse::<usize>().unwrap() % 2 == d)
            .collect();
        assert!(
            of_device.windows(2).all(|w| w[0] < w[1]),
            "per device in order"
        );
    }
    assert!(
        resumed
            .try_next_of(&["log:new"], Duration::from_millis(400))
            .await
            .is_none(),
        "no duplicate"
    );
    let mut shards = vec![shard_of(&devs[0], SHARDS), shard_of(&devs[1], SHARDS)];
    shards.sort();
    reads(&b, &shards).await;

    // `tail` on a third instance, which reads neither shard until asked: the last 5 logs
    // of both devices, in order.
    let c3 = instance(&redis.url(), "c");
    ready(&c3).await;
    let mut tail = c3.client("t").await;
    let ack = tail
        .emit_ack(
            "log:subscribe",
            json!({"deviceIds": [devs[0], devs[1]], "tail": 5}),
        )
        .await;
    assert_eq!(ack["replayed"], 5, "{ack}");
    assert_eq!(messages(&tail.logs(5, T).await), rest[15..]);
}

/// XREAD calls Redis has served so far.
async fn xreads(redis: &RedisServer) -> u64 {
    let info: String = redis.query(redis::cmd("INFO").arg("commandstats")).await;
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_xread:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_shard_beside_a_busy_one_keeps_one_blocked_read() {
    let redis = RedisServer::start();
    let a = instance(&redis.url(), "a");
    ready(&a).await;
    let devs = devices_in_distinct_shards(2);
    let (busy, idle) = (&devs[0], &devs[1]);
    let mut c = a.client("u").await;
    c.subscribe(json!({"deviceIds": [busy, idle]})).await;
    let mut shards = vec![shard_of(busy, SHARDS), shard_of(idle, SHARDS)];
    shards.sort();
    reads(&a, &shards).await;
    // The busy shard's reads make the merge ask the idle one for a newer watermark over and
    // over; each time the idle reader's blocked XREAD must stay the one it waits on (were
    // it dropped and sent again, Redis would queue one more on its connection each time).
    for i in 0..150 {
        post(&a, vec![log(busy, "INFO", &format!("b{i}"))]).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(c.logs(150, T).await.len(), 150);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = xreads(&redis).await;
    post(&a, vec![log(idle, "INFO", "wake")]).await;
    assert_eq!(messages(&c.logs(1, T).await), ["wake"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let served = xreads(&redis).await - before;
    assert!(
        served <= 6,
        "{served} XREADs served when the idle shard got one entry: blocked reads had piled up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refresh_behind_a_waiting_subscribe_is_applied_all_the_same() {
    let redis = RedisServer::start();
    let a = instance(&redis.url(), "a");
    ready(&a).await;
    let devs = devices_in_distinct_shards(2);
    let (d1, d2) = (&devs[0], &devs[1]);
    let mut c = a.client("u").await;
    c.subscribe(json!({"deviceIds": [d1]})).await;
    reads(&a, &[shard_of(d1, SHARDS)]).await;
    // Redis stops answering: a subscribe that needs d2's shard waits (and, after 10 s, is
    // refused); the narrower token sent behind it must be applied all the same.
    redis.freeze();
    c.emit("log:subscribe", json!({"deviceIds": [d1, d2]}))
        .await;
    let narrower = common::token_with("u", &[("devices", json!([d2]))]);
    c.emit("auth:refresh", json!({ "token": narrower })).await;
    // Two answers, in either order: the waiting subscribe refused, and the subscription in
    // force ended by the narrower scope (its deviceIds are outside it).
    let mut codes = Vec::new();
    for _ in 0..2 {
        let (_, error) = c.next_of(&["error"], Duration::from_secs(20)).await;
        codes.push(error["code"].as_str().unwrap_or_default().to_owned());
    }
    codes.sort();
    assert_eq!(codes, ["bus_unavailable", "forbidden"]);
    redis.thaw();
    ready(&a).await;
    // The old subscription (d1) is outside the new scope: it ended. Nothing of d1 arrives.
    post(&a, vec![log(d1, "INFO", "outside the new scope")]).await;
    assert!(
        c.try_next_of(&["log:new"], Duration::from_millis(1500))
            .await
            .is_none(),
        "the refreshed scope is in force"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_read_again_after_it_was_trimmed_does_not_claim_an_exact_replay() {
    let redis = RedisServer::start();
    let a = instance(&redis.url(), "a");
    ready(&a).await;
    let d = "trimmed-device";
    let mut first = a.client("u1").await;
    first
        .subscribe(json!({"deviceIds": [d], "resume": true}))
        .await;
    post(
        &a,
        (0..10).map(|i| log(d, "INFO", &format!("m{i}"))).collect(),
    )
    .await;
    let got = first.logs(10, T).await;
    let offset = first.offset_of(&got[4]).unwrap();
    first.disconnect().await;
    // Nobody needs the shard: after its grace the instance lets it go.
    eventually(Duration::from_secs(20), "the shard is let go", || async {
        let h = health(&a).await;
        if h["shardsRead"] == json!([]) {
            Ok(())
        } else {
            Err(h.to_string())
        }
    })
    .await;
    // Meanwhile its stream goes on and is trimmed past where the instance stopped.
    post(
        &a,
        (10..30).map(|i| log(d, "INFO", &format!("m{i}"))).collect(),
    )
    .await;
    let key = format!("logstream:logs:{}", shard_of(d, SHARDS));
    let _: i64 = redis
        .query(redis::cmd("XTRIM").arg(&key).arg("MAXLEN").arg(5))
        .await;
    // Read again for a replay from before the trim: m5..m24 are gone, so not exact.
    let again = a.client("u2").await;
    let ack = again
        .emit_ack("log:subscribe", json!({"deviceIds": [d], "since": offset}))
        .await;
    assert_eq!(ack["recovered"], false, "{ack}");
}
