//! Memory an outsider can make the server hold is bounded: before authentication (frame
//! size, connections per address) and after (bytes queued for a client that does not read,
//! bytes held for a paused one). Each test prints the server's memory figures.

mod common;

use std::time::Duration;

use common::raw::{Polling, next_text, raw_client, subscribe_raw, ws_url};
use common::{Server, eventually, log};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(20);
const MB: f64 = (1 << 20) as f64;

/// The server's resident and peak resident memory, in bytes.
fn memory(server: &Server) -> (u64, u64) {
    server.memory()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giant_frames_before_authentication_are_refused_without_buffering_them() {
    let server = Server::builder()
        .set("max_message_bytes", 1_000_000)
        .start();
    // Warm up: one ordinary client, so that the figures below are about the frames.
    let c = server.client("warm").await;
    drop(c);
    let (rss_before, peak_before) = memory(&server);
    // Five unauthenticated connections at once, each sending a 60 MB CONNECT frame.
    let huge = format!("40{{\"token\":\"{}\"}}", "x".repeat(60 << 20));
    let mut sends = Vec::new();
    for _ in 0..5 {
        let url = ws_url(&server);
        let frame = huge.clone();
        sends.push(tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            let _ = ws.send(Message::Text(frame.into())).await;
            // The server closes the connection: the stream ends or errors.
            let ended = tokio::time::timeout(Duration::from_secs(20), async {
                loop {
                    match ws.next().await {
                        Some(Ok(_)) => continue,
                        _ => return true,
                    }
                }
            })
            .await;
            ended.unwrap_or(false)
        }));
    }
    for s in sends {
        assert!(
            s.await.unwrap(),
            "the server closed the oversized connection"
        );
    }
    let (rss_after, peak_after) = memory(&server);
    let growth = peak_after.saturating_sub(peak_before);
    println!(
        "5 × 60 MB unauthenticated frames: RSS {:.1} → {:.1} MB, peak {:.1} → {:.1} MB (peak growth {:.1} MB)",
        rss_before as f64 / MB,
        rss_after as f64 / MB,
        peak_before as f64 / MB,
        peak_after as f64 / MB,
        growth as f64 / MB
    );
    assert!(
        growth < 32 << 20,
        "peak memory grew by {:.1} MB",
        growth as f64 / MB
    );
    // Still serving.
    let mut c = server.client("after").await;
    c.subscribe(json!({})).await;
    server.ingest(log("d", "INFO", "still here")).await;
    assert_eq!(c.logs(1, T).await[0]["message"], "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_per_address_are_capped() {
    let server = Server::builder()
        .set("max_unauthenticated_per_ip", 4)
        .start();
    let addr = server.url.trim_start_matches("http://").to_owned();
    // Four silent connections are held open...
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // ... so a fifth from the same address is closed at once, before it says anything.
    let mut fifth = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), fifth.read(&mut buf))
        .await
        .expect("the fifth connection is closed, not left waiting");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "closed without an answer: {read:?}"
    );
    // One of the four goes away: there is room again, for a client that authenticates.
    drop(idle.pop());
    let mut c = eventually(
        Duration::from_secs(5),
        "room for a new connection",
        || async {
            match tokio::time::timeout(
                Duration::from_secs(2),
                common::TestClient::connect(&server.url, Some(&Server::token("ok"))),
            )
            .await
            {
                Ok(Ok(c)) => Ok(c),
                _ => Err("refused".to_owned()),
            }
        },
    )
    .await;
    c.subscribe(json!({})).await;
    // Authenticated connections do not count: with the three idle ones still open, more
    // authenticated clients connect.
    let mut others = Vec::new();
    for i in 0..3 {
        others.push(server.client(&format!("more-{i}")).await);
    }
    server.ingest(log("d", "INFO", "served")).await;
    assert_eq!(c.logs(1, T).await[0]["message"], "served");
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_bounded_in_bytes_then_disconnected() {
    let server = Server::builder()
        .set("rate_limit", 1_000_000)
        .set("socket_queue_bytes", 4 << 20)
        .set("slow_consumer_timeout_ms", 2000)
        // Keep history out of the figures: only the queue's memory is measured.
        .set("history_max_bytes", 1 << 20)
        .start();
    let mut stuck = raw_client(&server, "stuck").await;
    subscribe_raw(&mut stuck, "big").await;
    // From here on the raw client reads nothing.
    let mut good = server.client("good").await;
    good.subscribe(json!({ "deviceIds": ["small"] })).await;
    let (rss_before, peak_before) = memory(&server);

    // 200 logs of 500 KB for the stuck client (100 MB), one small log each for the other.
    let payload = "x".repeat(500_000);
    for i in 0..200 {
        server
            .ingest(json!([
                log("big", "INFO", &payload),
                log("small", "INFO", &i.to_string())
            ]))
            .await;
    }
    let got = good.logs(200, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 200, "the reading client got everything");
    let (rss_after, peak_after) = memory(&server);
    let growth = peak_after.saturating_sub(peak_before);
    println!(
        "one client not reading 200 × 500 KB logs: RSS {:.1} → {:.1} MB, peak growth {:.1} MB (socket_queue_bytes 4 MiB)",
        rss_before as f64 / MB,
        rss_after as f64 / MB,
        growth as f64 / MB
    );
    assert!(
        growth < 48 << 20,
        "peak memory grew by {:.1} MB for 100 MB sent to a client that does not read",
        growth as f64 / MB
    );

    // Over its bound for longer than slow_consumer_timeout_ms: disconnected, counted.
    eventually(
        Duration::from_secs(15),
        "the stuck client is disconnected",
        || async {
            let stats = server.admin_stats().await;
            let connections = stats["total"].as_u64();
            let slow = stats["drops"]["slowConsumer"].as_u64();
            if connections == Some(1) && slow > Some(0) {
                Ok(())
            } else {
                Err(format!(
                    "connections {connections:?}, slow_consumer {slow:?}"
                ))
            }
        },
    )
    .await;
    // What the stuck client finally reads ends with the connection closing.
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stuck.next().await {
                Some(Ok(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stuck client's connection was closed");
}

/// The other bound: many small packets fill the socket's queue of packets (`socket_queue`)
/// long before its bytes do. The socket refuses them after the router has handed them on;
/// a client that never reads must still be cut while logs keep coming for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_small_logs_is_disconnected_while_they_keep_coming() {
    let server = Server::builder()
        .set("rate_limit", 1_000_000)
        .set("socket_queue", 8)
        .set("slow_consumer_timeout_ms", 1000)
        .set("history_max_bytes", 1 << 20)
        .start();
    let mut stuck = raw_client(&server, "stuck").await;
    subscribe_raw(&mut stuck, "d").await;
    // From here on the raw client reads nothing. 4 KB logs fill the kernel's buffers (a
    // few MB), then the socket's 8 packets, far below its 4 MiB byte bound.
    let payload = "x".repeat(4000);
    let started = std::time::Instant::now();
    let mut disconnected = false;
    while started.elapsed() < Duration::from_secs(20) {
        let logs: Vec<Value> = (0..100).map(|_| log("d", "INFO", &payload)).collect();
        server.ingest(Value::Array(logs)).await;
        let stats = server.admin_stats().await;
        if stats["total"].as_u64() == Some(0) {
            disconnected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        disconnected,
        "a client that never reads was still connected after 20 s of logs"
    );
    let stats = server.admin_stats().await;
    assert!(stats["drops"]["slowConsumer"].as_u64() > Some(0), "{stats}");
}

/// The answers to a client's own requests go out even when its queue of packets is full.
/// They were dropped with the logs the full queue refused: a `log:subscribed` and the
/// acknowledgement sent as a replay ended with the queue full never came, and the official
/// JS client's `emitWithAck` waited for ever (a test run hung on it). Logs may be dropped and
/// reported when a client reads too slowly; the answer to its request waits for room.
///
/// A long-polling client holds its queue full for as long as it does not poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_wait_for_room_in_a_full_queue_where_logs_are_dropped() {
    let server = Server::builder()
        .set("rate_limit", 1_000_000)
        .set("socket_queue", 4)
        .start();
    let client = Polling::connect(&server, "poller").await;
    client
        .post(r#"420["log:subscribe",{"deviceIds":["d"]}]"#)
        .await;
    let mut seen = Vec::new();
    while !seen.iter().any(|p: &String| p.starts_with("430[")) {
        let got = client.poll(T).await;
        assert!(!got.is_empty(), "subscribed: {seen:?}");
        seen.extend(got);
    }
    // It does not poll now: 10 logs for 4 places; 6 are refused.
    let logs: Vec<Value> = (0..10).map(|i| log("d", "INFO", &i.to_string())).collect();
    server.ingest(Value::Array(logs)).await;
    eventually(T, "logs refused by the full queue", || async {
        let stats = server.admin_stats().await;
        match stats["drops"]["slowConsumer"].as_u64() {
            Some(6) => Ok(()),
            _ => Err(stats.to_string()),
        }
    })
    .await;
    // Two requests while it is full: a pause, and a new subscription.
    client.post(r#"421["log:pause"]"#).await;
    client
        .post(r#"422["log:subscribe",{"deviceIds":["d","e"]}]"#)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got = Vec::new();
    let answered = |got: &[String]| {
        ["431[", "432[", r#"42["log:subscribed""#]
            .iter()
            .all(|a| got.iter().any(|p| p.starts_with(a)))
    };
    for _ in 0..10 {
        got.extend(client.poll(Duration::from_secs(2)).await);
        if answered(&got) {
            break;
        }
    }
    assert!(answered(&got), "answers while the queue was full: {got:?}");
    let logs = got.iter().filter(|p| p.starts_with(r#"42["log:new""#));
    assert_eq!(logs.count(), 4, "the 4 logs the queue held: {got:?}");
    let answer = |prefix: &str| got.iter().find(|p| p.starts_with(prefix)).unwrap();
    assert!(answer("431[").contains(r#""paused":true"#));
    for prefix in ["432[", r#"42["log:subscribed""#] {
        assert!(
            answer(prefix).contains(r#""deviceIds":["d","e"]"#),
            "{got:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_client_is_held_to_pause_buffer_bytes() {
    let server = Server::builder()
        .set("rate_limit", 1_000_000)
        .set("pause_buffer_bytes", 4 << 20)
        .set("history_max_bytes", 1 << 20)
        .start();
    let mut c = server.client("paused").await;
    c.subscribe(json!({ "deviceIds": ["big"] })).await;
    assert_eq!(c.emit_ack("log:pause", json!({})).await["paused"], true);
    let (_, peak_before) = memory(&server);
    let payload = "y".repeat(500_000);
    for _ in 0..40 {
        server.ingest(json!([log("big", "INFO", &payload)])).await;
    }
    let (_, peak_after) = memory(&server);
    c.emit_ack("log:resume", json!({})).await;
    let (name, dropped) = c.next_of(&["log:dropped"], T).await;
    assert_eq!(name, "log:dropped");
    assert_eq!(dropped["reason"], "pause_overflow", "{dropped}");
    let lost = dropped["count"].as_u64().unwrap() as usize;
    let kept = c.logs(40 - lost, T).await;
    let kept_bytes: usize = kept.iter().map(|l| l.to_string().len()).sum();
    println!(
        "paused client, 40 × 500 KB: {} held ({:.1} MB), {lost} dropped; peak growth {:.1} MB (pause_buffer_bytes 4 MiB)",
        kept.len(),
        kept_bytes as f64 / MB,
        peak_after.saturating_sub(peak_before) as f64 / MB
    );
    assert!(
        !kept.is_empty() && lost > 0,
        "kept {}, lost {lost}",
        kept.len()
    );
    assert!(
        kept_bytes <= 4 << 20,
        "held {kept_bytes} bytes, over pause_buffer_bytes"
    );
    let extra = c.drain("log:new", Duration::from_millis(300)).await;
    assert!(
        extra.is_empty(),
        "nothing beyond what was held: {}",
        extra.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_all_clients_hold_together_is_bounded_per_instance() {
    let server = Server::builder()
        .set("rate_limit", 1_000_000)
        .set("socket_queue_bytes", 16 << 20)
        .set("max_queued_bytes", 8 << 20)
        .set("slow_consumer_timeout_ms", 60_000)
        .set("history_max_bytes", 1 << 20)
        .start();
    // Three clients that never read, each allowed 16 MiB on its own.
    let mut stuck = Vec::new();
    for i in 0..3 {
        let mut ws = raw_client(&server, &format!("stuck-{i}")).await;
        subscribe_raw(&mut ws, "big").await;
        stuck.push(ws);
    }
    let (rss_before, peak_before) = memory(&server);
    let payload = "z".repeat(500_000);
    for _ in 0..100 {
        server.ingest(json!([log("big", "INFO", &payload)])).await;
    }
    // A reading client is still served (its packets are small and the queues drain).
    let mut good = server.client("good").await;
    good.subscribe(json!({ "deviceIds": ["small"] })).await;
    server.ingest(json!([log("small", "INFO", "ok")])).await;
    let (rss_after, peak_after) = memory(&server);
    let growth = peak_after.saturating_sub(peak_before);
    println!(
        "three clients not reading 100 × 500 KB each (150 MB): RSS {:.1} → {:.1} MB, peak growth {:.1} MB (max_queued_bytes 8 MiB)",
        rss_before as f64 / MB,
        rss_after as f64 / MB,
        growth as f64 / MB
    );
    assert!(
        growth < 48 << 20,
        "peak memory grew by {:.1} MB",
        growth as f64 / MB
    );
    let stats = server.admin_stats().await;
    assert!(
        stats["drops"]["slowConsumer"].as_u64() > Some(200),
        "{stats}"
    );
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_too_much_before_authenticating_is_closed() {
    let server = Server::builder()
        .set("max_unauthenticated_bytes", 65536)
        .start();
    // 200 KB is under max_message_bytes (1 MB) but far over what a handshake needs.
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&server))
        .await
        .unwrap();
    assert!(next_text(&mut ws).await.starts_with('0'), "engine.io open");
    let connect = format!("40{{\"token\":\"{}\"}}", "x".repeat(200_000));
    let _ = ws.send(Message::Text(connect.into())).await;
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t == "2" => continue,
                Some(Ok(Message::Text(t))) => return Some(t.to_string()),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("the connection ends");
    assert_eq!(
        answer, None,
        "closed, not answered (a `44` means the oversized CONNECT was read and judged)"
    );
    // An ordinary handshake still works.
    let mut c = server.client("fine").await;
    c.subscribe(json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_authenticates_is_closed_in_time() {
    let server = Server::builder()
        .set("unauthenticated_timeout_ms", 500)
        .set("max_unauthenticated_per_ip", 2)
        .start();
    let addr = server.url.trim_start_matches("http://").to_owned();
    // Two connections that say nothing take the address's whole allowance...
    let mut silent: Vec<tokio::net::TcpStream> = Vec::new();
    for _ in 0..2 {
        silent.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // ...until the deadline closes them.
    for s in &mut silent {
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed by the deadline, not left open");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    // Room again; an authenticated client stays past the deadline.
    let mut c = server.client("patient").await;
    c.subscribe(json!({})).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    server.ingest(log("d", "INFO", "still connected")).await;
    assert_eq!(c.logs(1, T).await[0]["message"], "still connected");
}
