//! A small Socket.IO v4 client over one WebSocket, for the command-line tools.
//!
//! Why not a client crate: the tools speak a handful of packets to our own server (`40`
//! connect with auth, `42` events, `45` events with binary attachments, `44` refusal,
//! engine.io ping/pong), and a WebSocket library we already build (the server's transport
//! uses the same one) does the rest.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Largest message the tools accept from the server.
const MAX_MESSAGE: usize = 64 << 20;

/// Binary attachments of one event, at most (ours carry one).
const MAX_ATTACHMENTS: usize = 8;

/// The attachment `value` stands for, if it is a placeholder.
pub fn attachment<'a>(value: &Value, attachments: &'a [Vec<u8>]) -> Option<&'a [u8]> {
    if value.get("_placeholder") != Some(&Value::Bool(true)) {
        return None;
    }
    let num = value.get("num")?.as_u64()?;
    attachments
        .get(usize::try_from(num).ok()?)
        .map(Vec::as_slice)
}

/// Why a connection did not come up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server refused the handshake (`connect_error`): retrying will not help.
    #[error("the server refused the connection: {0}")]
    Refused(String),
    /// Network or protocol trouble: worth retrying.
    #[error("{0}")]
    Transport(String),
    /// The TLS handshake failed (an unknown CA, another name, an expired certificate):
    /// retrying will not help.
    #[error("{0}")]
    Tls(String),
}

/// What arrived.
#[derive(Debug)]
pub enum Incoming {
    /// An event, its arguments, and its binary attachments (an argument that is one is the
    /// placeholder `{"_placeholder":true,"num":i}`, see [`attachment`]).
    Event(String, Vec<Value>, Vec<Vec<u8>>),
    /// The server ended the namespace (`disconnect`), or the connection closed.
    Closed(String),
}

pub struct SioClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// `http://host:port` (or `ws://`, `https://`, `wss://`) → the Socket.IO WebSocket endpoint.
pub fn endpoint(server: &str) -> String {
    let base = server.trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if base.starts_with("ws://") || base.starts_with("wss://") {
        base.to_owned()
    } else {
        format!("ws://{base}")
    };
    format!("{ws}/socket.io/?EIO=4&transport=websocket")
}

impl SioClient {
    /// Open the WebSocket (over `tls` for a `wss://` server) and join the main namespace
    /// with `auth`.
    pub async fn connect(
        server: &str,
        auth: &Value,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<SioClient, ConnectError> {
        let url = endpoint(server);
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let connector = tokio_tungstenite::Connector::Rustls(tls.clone());
        let connecting = tokio_tungstenite::connect_async_tls_with_config(
            url,
            Some(config),
            false,
            Some(connector),
        );
        let (ws, _) = tokio::time::timeout(Duration::from_secs(10), connecting)
            .await
            .map_err(|_| ConnectError::Transport("connecting timed out".into()))?
            .map_err(|e| match super::tls::explain(&e) {
                Some(why) => ConnectError::Tls(why),
                None => ConnectError::Transport(e.to_string()),
            })?;
        let mut client = SioClient { ws };
        // engine.io open, then our CONNECT.
        match client.text().await? {
            t if t.starts_with('0') => {}
            other => return Err(ConnectError::Transport(format!("unexpected {other:?}"))),
        }
        client
            .send(format!("40{auth}"))
            .await
            .map_err(ConnectError::Transport)?;
        let answer = async {
            loop {
                let t = client.text().await?;
                if t.starts_with("40") {
                    return Ok(());
                }
                if let Some(rest) = t.strip_prefix("44") {
                    let message = serde_json::from_str::<Value>(rest)
                        .ok()
                        .and_then(|v| v["message"].as_str().map(str::to_owned))
                        .unwrap_or_else(|| rest.to_owned());
                    return Err(ConnectError::Refused(message));
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .map_err(|_| ConnectError::Transport("no answer to the handshake".into()))??;
        Ok(client)
    }

    async fn send(&mut self, text: String) -> Result<(), String> {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .map_err(|e| e.to_string())
    }

    /// The next engine.io text packet (`0…` open, `4…` a Socket.IO packet), answering pings.
    async fn text(&mut self) -> Result<String, ConnectError> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    if t.as_str() == "2" {
                        self.send("3".into())
                            .await
                            .map_err(ConnectError::Transport)?;
                        continue;
                    }
                    if t.as_str() == "1" {
                        return Err(ConnectError::Transport("the server closed".into()));
                    }
                    return Ok(t.to_string());
                }
                Some(Ok(Message::Close(_))) | None => {
                    return Err(ConnectError::Transport("the connection closed".into()));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(ConnectError::Transport(e.to_string())),
            }
        }
    }

    /// Emit `event` with one argument.
    pub async fn emit(&mut self, event: &str, data: &Value) -> Result<(), String> {
        let packet = serde_json::to_string(&(event, data)).map_err(|e| e.to_string())?;
        self.send(format!("42{packet}")).await
    }

    /// The next binary frame (an attachment), answering pings on the way.
    async fn binary(&mut self) -> Result<Vec<u8>, ConnectError> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Binary(b))) => return Ok(b.to_vec()),
                Some(Ok(Message::Text(t))) if t.as_str() == "2" => {
                    self.send("3".into())
                        .await
                        .map_err(ConnectError::Transport)?;
                }
                Some(Ok(Message::Close(_))) | None => {
                    return Err(ConnectError::Transport("the connection closed".into()));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(ConnectError::Transport(e.to_string())),
            }
        }
    }

    /// The next event (pings are answered on the way).
    pub async fn next(&mut self) -> Incoming {
        loop {
            let packet = match self.text().await {
                Ok(p) => p,
                Err(e) => return Incoming::Closed(e.to_string()),
            };
            if packet.starts_with("41") {
                return Incoming::Closed("the server ended the session".into());
            }
            // `42[…]`, or `45<n>-[…]` followed by n binary frames; an event may carry an ack
            // id before its array.
            let (body, attachments) = if let Some(body) = packet.strip_prefix("42") {
                (body.to_owned(), 0)
            } else if let Some(rest) = packet.strip_prefix("45")
                && let Some((count, body)) = rest.split_once('-')
                && let Ok(count) = count.parse::<usize>()
            {
                (body.to_owned(), count.min(MAX_ATTACHMENTS))
            } else {
                continue;
            };
            let mut binaries = Vec::with_capacity(attachments);
            for _ in 0..attachments {
                match self.binary().await {
                    Ok(b) => binaries.push(b),
                    Err(e) => return Incoming::Closed(e.to_string()),
                }
            }
            let body = body.trim_start_matches(|c: char| c.is_ascii_digit());
            if let Ok(Value::Array(mut items)) = serde_json::from_str::<Value>(body)
                && let Some(Value::String(name)) = items.first().cloned()
            {
                items.remove(0);
                return Incoming::Event(name, items, binaries);
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.send("41".into()).await;
        let _ = self.ws.close(None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::endpoint;

    #[test]
    fn endpoints_are_websocket_urls() {
        assert_eq!(
            endpoint("http://localhost:3000/"),
            "ws://localhost:3000/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(
            endpoint("127.0.0.1:9"),
            "ws://127.0.0.1:9/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(
            endpoint("https://logs.example.com"),
            "wss://logs.example.com/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(
            endpoint("wss://logs.example.com:8443"),
            "wss://logs.example.com:8443/socket.io/?EIO=4&transport=websocket"
        );
    }
}
