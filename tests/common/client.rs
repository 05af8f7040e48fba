//! A Socket.IO v4 test client over `rust_socketio` that records every event in order.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::FutureExt;
use rust_socketio::asynchronous::{Client, ClientBuilder};
use rust_socketio::{Event, Payload, TransportType};
use serde_json::Value;
use tokio::sync::mpsc;

pub struct TestClient {
    client: Client,
    rx: mpsc::UnboundedReceiver<(String, Value)>,
    /// Events received but not yet asked for.
    backlog: VecDeque<(String, Value)>,
    /// The offset (last argument) of each `log:new` / `log:batch` that carried one, by the
    /// first argument's JSON text.
    offsets: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
}

fn first_value(payload: Payload) -> Value {
    match payload {
        Payload::Text(mut values) if !values.is_empty() => values.remove(0),
        Payload::Text(_) => Value::Null,
        Payload::Binary(b) => Value::String(format!("<{} bytes>", b.len())),
        #[allow(deprecated)]
        Payload::String(s) => Value::String(s),
    }
}

/// The second argument of an event that has two (the offset convention).
fn second_value(payload: &Payload) -> Option<String> {
    match payload {
        Payload::Text(values) if values.len() == 2 => values[1].as_str().map(str::to_owned),
        _ => None,
    }
}

/// Why a connection was refused.
#[derive(Debug)]
pub struct ConnectRefused(pub String);

impl TestClient {
    /// Connect over WebSocket with `auth: { token }`. Waits for the namespace connect or the
    /// refusal.
    pub async fn connect(url: &str, token: Option<&str>) -> Result<TestClient, ConnectRefused> {
        TestClient::connect_auth(url, token.map(|t| serde_json::json!({ "token": t }))).await
    }

    /// Connect with this `auth` payload (e.g. `{ token, session, offset }` to resume).
    pub async fn connect_auth(
        url: &str,
        auth: Option<Value>,
    ) -> Result<TestClient, ConnectRefused> {
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, Value)>();
        let on = |name: &'static str, tx: mpsc::UnboundedSender<(String, Value)>| {
            move |payload: Payload, _c: Client| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((name.to_owned(), first_value(payload)));
                }
                .boxed()
            }
        };
        let any_tx = tx.clone();
        let offsets: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, String>>> =
            Default::default();
        let any_offsets = offsets.clone();
        let mut builder = ClientBuilder::new(url)
            .transport_type(TransportType::Websocket)
            .reconnect(false)
            .on(Event::Connect, on("connect", tx.clone()))
            .on(Event::Error, on("error", tx.clone()))
            .on(Event::Close, on("close", tx.clone()))
            .on_any(move |event, payload, _c| {
                let tx = any_tx.clone();
                let offsets = any_offsets.clone();
                async move {
                    let offset = second_value(&payload);
                    let value = first_value(payload);
                    if let Some(o) = offset {
                        offsets.lock().unwrap().insert(value.to_string(), o);
                    }
                    let _ = tx.send((event.as_str().to_owned(), value));
                }
                .boxed()
            });
        if let Some(auth) = auth {
            builder = builder.auth(auth);
        }
        let client = builder
            .connect()
            .await
            .map_err(|e| ConnectRefused(format!("transport: {e}")))?;
        let mut backlog = VecDeque::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some((name, _))) if name == "connect" => break,
                Ok(Some((name, value))) if name == "error" => {
                    let text = value
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or(value.to_string());
                    let _ = client.disconnect().await;
                    return Err(ConnectRefused(text));
                }
                Ok(Some(other)) => backlog.push_back(other),
                Ok(None) | Err(_) => return Err(ConnectRefused("no answer to connect".into())),
            }
        }
        Ok(TestClient {
            client,
            rx,
            backlog,
            offsets,
        })
    }

    pub async fn emit(&self, event: &str, data: Value) {
        self.client.emit(event, data).await.expect("emit");
    }

    /// Emit; false once the connection is gone (e.g. the server dropped this client).
    pub async fn try_emit(&self, event: &str, data: Value) -> bool {
        self.client.emit(event, data).await.is_ok()
    }

    /// Emit with an acknowledgement callback and return the acknowledgement.
    pub async fn emit_ack(&self, event: &str, data: Value) -> Value {
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.client
            .emit_with_ack(event, data, Duration::from_secs(10), move |payload, _c| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(first_value(payload));
                }
                .boxed()
            })
            .await
            .expect("emit");
        let ack = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("ack within 10 s")
            .expect("ack");
        // rust_socketio hands an acknowledgement over as the array of its arguments.
        match ack {
            Value::Array(mut args) if !args.is_empty() => args.remove(0),
            other => other,
        }
    }

    /// Subscribe and wait for `log:subscribed`; panics if the server answers with an error.
    pub async fn subscribe(&mut self, sub: Value) -> Value {
        self.emit("log:subscribe", sub).await;
        let (name, v) = self
            .next_of(&["log:subscribed", "error"], Duration::from_secs(10))
            .await;
        assert_eq!(name, "log:subscribed", "subscribe failed: {v}");
        v
    }

    async fn recv(&mut self, until: tokio::time::Instant) -> Option<(String, Value)> {
        if let Some(e) = self.backlog.pop_front() {
            return Some(e);
        }
        tokio::time::timeout_at(until, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next event named one of `names`; others are kept for later calls.
    pub async fn next_of(&mut self, names: &[&str], timeout: Duration) -> (String, Value) {
        self.try_next_of(names, timeout)
            .await
            .unwrap_or_else(|| panic!("no {names:?} within {timeout:?}"))
    }

    pub async fn try_next_of(
        &mut self,
        names: &[&str],
        timeout: Duration,
    ) -> Option<(String, Value)> {
        let until = tokio::time::Instant::now() + timeout;
        let mut skipped = VecDeque::new();
        let found = loop {
            match self.recv(until).await {
                Some((n, v)) if names.contains(&n.as_str()) => break Some((n, v)),
                Some(other) => skipped.push_back(other),
                None => break None,
            }
        };
        // Put back what was skipped, ahead of anything not yet read.
        while let Some(e) = skipped.pop_back() {
            self.backlog.push_front(e);
        }
        found
    }

    pub async fn next(&mut self, name: &str) -> Value {
        self.next_of(&[name], Duration::from_secs(10)).await.1
    }

    /// Collect `n` logs from `log:new` (and `log:batch` arrays), in arrival order.
    pub async fn logs(&mut self, n: usize, timeout: Duration) -> Vec<Value> {
        let until = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            match self.try_next_of(&["log:new", "log:batch"], left).await {
                Some((name, v)) if name == "log:batch" => {
                    out.extend(v.as_array().cloned().expect("log:batch is an array"))
                }
                Some((_, v)) => out.push(v),
                None => panic!("only {} of {n} logs within {timeout:?}: {out:?}", out.len()),
            }
        }
        out
    }

    /// Everything named `name` that arrives within `window`.
    pub async fn drain(&mut self, name: &str, window: Duration) -> Vec<Value> {
        let until = tokio::time::Instant::now() + window;
        let mut out = Vec::new();
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            match self.try_next_of(&[name], left).await {
                Some((_, v)) => out.push(v),
                None => return out,
            }
        }
    }

    /// The offset that came with `log` (a `log:new` entry), if any.
    pub fn offset_of(&self, log: &Value) -> Option<String> {
        self.offsets.lock().unwrap().get(&log.to_string()).cloned()
    }

    pub async fn disconnect(self) {
        let _ = self.client.disconnect().await;
    }
}
