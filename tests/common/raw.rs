//! A raw engine.io v4 WebSocket client (tokio-tungstenite) for tests that need to control
//! reading byte by byte: a client that stops reading, or frames timed as they arrive.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::Server;

pub fn ws_url(server: &Server) -> String {
    format!(
        "{}/socket.io/?EIO=4&transport=websocket",
        server.url.replacen("http", "ws", 1)
    )
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw engine.io WebSocket client, connected to the namespace with `user`'s token.
pub async fn raw_client(server: &Server, user: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(server))
        .await
        .expect("ws connect");
    assert!(next_text(&mut ws).await.starts_with('0'), "engine.io open");
    let connect = format!("40{}", json!({ "token": Server::token(user) }));
    ws.send(Message::Text(connect.into())).await.unwrap();
    let reply = next_text(&mut ws).await;
    assert!(reply.starts_with("40"), "namespace connect: {reply}");
    ws
}

/// Subscribe `ws` to `device` and wait for `log:subscribed` (bounded: a lost answer fails the
/// test, never hangs it). Under a heavily loaded parallel run one subscribe in a few runs has
/// gone unanswered (cause not found yet, see the session notes): it is sent once more after
/// 5 s, and that is printed.
pub async fn subscribe_raw(ws: &mut Ws, device: &str) {
    let frame = format!(r#"42["log:subscribe",{{"deviceIds":["{device}"]}}]"#);
    let mut seen = Vec::new();
    for (attempt, wait) in [(1, 5), (2, 15)] {
        ws.send(Message::Text(frame.clone().into())).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_secs(wait), async {
            loop {
                let t = next_text(ws).await;
                if t.contains("log:subscribed") {
                    return;
                }
                seen.push(t);
            }
        })
        .await;
        if waited.is_ok() {
            return;
        }
        println!("subscribe attempt {attempt} unanswered within {wait} s; seen {seen:?}");
    }
    panic!("no log:subscribed after two attempts; got {seen:?}");
}

pub async fn next_text(ws: &mut Ws) -> String {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t == "2" => {
                ws.send(Message::Text("3".into())).await.unwrap()
            }
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(_)) => continue,
            other => panic!("websocket ended: {other:?}"),
        }
    }
}
