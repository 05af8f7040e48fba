//! The real nginx (Debian's package, started here on a free port) in front of two instances
//! on one Redis, configured as the README's recipe: WebSocket and long-polling clients through
//! it, each from an address of its own (127.0.0.x), and the per-address limits, the
//! connection list and the audit trail counting each real client rather than the proxy.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::redis::{RedisServer, free_port};
use common::{ADMIN_KEY, Server, eventually};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(15);

struct Nginx {
    child: Child,
    port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx on a free port in front of `upstreams`, as the README configures it (without TLS).
fn nginx(upstreams: &[&Server]) -> Nginx {
    let dir = common::scratch_dir("nginx");
    let port = free_port();
    let servers: String = upstreams
        .iter()
        .map(|s| format!("        server {};\n", s.url.trim_start_matches("http://")))
        .collect();
    let d = dir.display();
    let conf = format!(
        r#"daemon off;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream logstream {{
        hash $remote_addr consistent;
{servers}    }}
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://logstream;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_read_timeout 120s;
            proxy_send_timeout 120s;
            proxy_buffering off;
        }}
    }}
}}
"#
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    // Killed when dropped, on the way out of a failed start too.
    let nginx = Nginx {
        child: Command::new("nginx")
            .args(["-p", &dir.display().to_string(), "-c"])
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx is needed for the proxy test (apt-get install nginx)"),
        port,
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return nginx;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "nginx did not listen on {port}; see {}",
        dir.join("error.log").display()
    );
}

/// An HTTP client whose connections come from `source`.
fn http_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// A Socket.IO client over WebSocket from `source` through the proxy, subscribed to `device`.
async fn websocket_from(
    source: &str,
    port: u16,
    user: &str,
    device: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    let stream = socket
        .connect(SocketAddr::new("127.0.0.1".parse().unwrap(), port))
        .await
        .unwrap();
    let url = format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    let open = loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => break t.to_string(),
            _ => continue,
        }
    };
    assert!(open.starts_with('0'), "{open}");
    ws.send(Message::Text(
        format!("40{}", json!({ "token": Server::token(user) })).into(),
    ))
    .await
    .unwrap();
    // As socket.io-client does: nothing is emitted before the namespace connect is answered
    // (socketioxide ends an Engine.IO session whose events come for a socket not connected).
    loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) if t.starts_with("40") => break,
            Message::Text(t) if t.as_str() == "2" => {
                ws.send(Message::Text("3".into())).await.unwrap();
            }
            _ => {}
        }
    }
    ws.send(Message::Text(
        format!("42{}", json!(["log:subscribe", { "deviceIds": [device] }])).into(),
    ))
    .await
    .unwrap();
    ws
}

/// The next `log:new` a raw WebSocket client receives.
async fn next_log(ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) -> Value {
    loop {
        let message = tokio::time::timeout(T, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Message::Text(t) = message else { continue };
        if t.as_str() == "2" {
            ws.send(Message::Text("3".into())).await.unwrap();
        } else if let Some(event) = t.strip_prefix("42") {
            let v: Value = serde_json::from_str(event).unwrap();
            if v[0] == "log:new" {
                return v[1].clone();
            }
        }
    }
}

/// Open `n` Engine.IO sessions without a token from `source`: (created, refused).
async fn bare_sessions(source: &str, port: u16, n: usize) -> (usize, usize) {
    let http = http_from(source);
    let url = format!("http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling");
    let (mut created, mut refused) = (0, 0);
    for _ in 0..n {
        match http.get(&url).send().await.unwrap().status().as_u16() {
            200 => created += 1,
            429 => refused += 1,
            other => panic!("{other}"),
        }
    }
    (created, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_behind_nginx_are_served_and_counted_by_their_own_address() {
    let redis = RedisServer::start();
    let instance = |id: &str| {
        Server::builder()
            .env("LOGSTREAM_REDIS_URL", redis.url())
            .set("instance_id", id)
            .set("trusted_proxies", "127.0.0.1")
            .set("max_unauthenticated_per_ip", 4)
            .set("unauthenticated_sessions_per_second", 1000)
            .env("RUST_LOG", "warn,audit=info")
            .capture_stderr()
            .start()
    };
    let (a, b) = (instance("a"), instance("b"));
    a.wait_for_redis().await;
    b.wait_for_redis().await;
    let proxy = nginx(&[&a, &b]);

    // WebSocket clients from two addresses, through the proxy.
    let mut ws5 = websocket_from("127.0.0.5", proxy.port, "ws-five", "d").await;
    let mut ws6 = websocket_from("127.0.0.6", proxy.port, "ws-six", "d").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.ingest(json!([common::log("d", "INFO", "through nginx")]))
        .await;

    assert_eq!(next_log(&mut ws5).await["message"], "through nginx");

    assert_eq!(next_log(&mut ws6).await["message"], "through nginx");

    // A long-polling client: its requests stay on one instance.
    let http = http_from("127.0.0.7");
    let base = format!(
        "http://127.0.0.1:{}/socket.io/?EIO=4&transport=polling",
        proxy.port
    );
    let open = http.get(&base).send().await.unwrap().text().await.unwrap();
    let sid = serde_json::from_str::<Value>(&open[1..]).unwrap()["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = format!("{base}&sid={sid}");
    let token = Server::token("poller");
    http.post(&url)
        .body(format!("40{}", json!({ "token": token })))
        .send()
        .await
        .unwrap();
    let mut connected = String::new();
    for _ in 0..5 {
        connected = http.get(&url).send().await.unwrap().text().await.unwrap();
        if connected.contains("40{") {
            break;
        }
    }
    assert!(connected.contains("40{"), "{connected}");

    // The connection list names each real client, not the proxy.
    let (_, list) = a
        .get("/api/ws/connections", &[("x-api-key", ADMIN_KEY)])
        .await;
    let ips: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["ip"].as_str().unwrap())
        .collect();
    for ip in ["127.0.0.5", "127.0.0.6", "127.0.0.7"] {
        assert!(ips.contains(&ip), "{ips:?}");
    }
    assert!(!ips.contains(&"127.0.0.1"), "{ips:?}");

    // Per-address limits: one client's flood is its own; another client still gets in.
    // (Before: every client was the proxy's 127.0.0.1, one bucket for all.)
    let (created, refused) = bare_sessions("127.0.0.8", proxy.port, 10).await;
    assert!(
        created <= 2 * 4 && refused >= 2,
        "created {created}, refused {refused}"
    );
    let (created, _) = bare_sessions("127.0.0.9", proxy.port, 2).await;
    assert_eq!(created, 2, "another address is not held back by the first");

    // A header a client writes itself is not believed: its address is the proxy's hop.
    let spoof = http_from("127.0.0.10")
        .get(format!(
            "http://127.0.0.1:{}/socket.io/?EIO=4&transport=polling",
            proxy.port
        ))
        .header("x-forwarded-for", "127.0.0.8")
        .send()
        .await
        .unwrap();
    assert_eq!(
        spoof.status(),
        200,
        "127.0.0.10 is counted as itself, not as 127.0.0.8"
    );
    eventually(
        T,
        "the refusals are logged with the real address",
        || async {
            let log = [a.stderr(), b.stderr()].concat().join("\n");
            if log.contains("127.0.0.8") {
                Ok(())
            } else {
                Err(log)
            }
        },
    )
    .await;
    drop(proxy);
}
