//! Per request, at the edge: the client's address for the handlers, and for Socket.IO
//! requests the socket they speak for (an established socket's own address only), the
//! Engine.IO sessions opened without a token ([`super::sessions`]), and the bytes of
//! long-polling response bodies.

use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{ConnectInfo, OriginalUri, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use socketioxide::SocketIo;
use socketioxide::socket::Sid;

use super::sessions::SessionRefusal;
use super::{Edge, Meter, Peer};

/// Per request: provide `ConnectInfo<SocketAddr>` (the client: the TCP peer, or behind a
/// trusted proxy the address it forwards), and for Socket.IO requests of an established
/// socket (`?sid=`), mark the connection authenticated, make a WebSocket upgrade carry the
/// socket's meter, and count long-polling response bodies into it.
pub async fn track(
    State((edge, io)): State<(Arc<Edge>, SocketIo)>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    mut req: Request,
    next: Next,
) -> Response {
    let client = edge.trusted.client(peer.addr, req.headers());
    req.extensions_mut().insert(ConnectInfo(client));
    let mut polled = None;
    let socket_io = req.uri().path().starts_with("/socket.io");
    if socket_io {
        peer.conn
            .limit_unauthenticated_reads(edge.socket_read_budget);
        own_head(&mut req);
        if opens_session(&req)
            && let Err(refusal) = edge
                .sessions
                .open_session(super::address_block(client.ip()), Instant::now())
        {
            return session_refused(&edge, client, refusal);
        }
    }
    if socket_io && let Some(query) = req.uri().query() {
        let param = |name: &str| {
            query.split('&').find_map(|kv| {
                kv.split_once('=')
                    .filter(|(k, _)| *k == name)
                    .map(|(_, v)| v)
            })
        };
        let sid = param("sid").and_then(|s| Sid::from_str(s).ok());
        // Only the socket's own address may speak for it (a socket id is no credential).
        let own = |s: &socketioxide::extract::SocketRef| {
            s.req_parts()
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .is_some_and(|ConnectInfo(a)| a.ip() == client.ip())
        };
        if let Some(sid) = sid
            && io.get_socket(sid).is_some_and(|s| own(&s))
            && let Some(meter) = edge.existing_meter(sid)
        {
            if meter.is_closed() {
                // Cut for staying over its queue bound: a long-polling client gets no more
                // polls, and the heartbeat ends the socket.
                return axum::http::StatusCode::GONE.into_response();
            }
            peer.conn.authenticate();
            match param("transport") {
                Some("websocket") => peer.conn.carry(meter),
                Some("polling") if req.method() == axum::http::Method::GET => polled = Some(meter),
                _ => {}
            }
        }
    }
    let response = next.run(req).await;
    match polled {
        Some(meter) => response.map(|body| axum::body::Body::new(CountedBody { body, meter })),
        None => response,
    }
}

/// Whether `req` makes the transport open an Engine.IO session: a GET (long-polling, or a
/// WebSocket upgrade) that names no `sid`.
fn opens_session(req: &Request) -> bool {
    req.method() == axum::http::Method::GET
        && !req
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .any(|kv| kv.starts_with("sid="))
}

/// A new session refused: 429, in the REST error shape (an Engine.IO client retries with
/// its back-off). Logged at most every 10 s.
fn session_refused(edge: &Edge, peer: SocketAddr, refusal: SessionRefusal) -> Response {
    edge.warn_at_most_every_10s(|| {
        tracing::warn!(ip = %peer.ip(), limit = refusal.reason(), "Engine.IO sessions refused before authentication");
    });
    let body = axum::Json(serde_json::json!({
        "success": false,
        "error": {
            "code": "rate_limited",
            "message": format!("too many sessions opened without authenticating ({})", refusal.reason()),
        }
    }));
    (axum::http::StatusCode::TOO_MANY_REQUESTS, body).into_response()
}

/// The headers a Socket.IO request keeps: what engineioxide reads (the WebSocket upgrade,
/// a polling body's framing) and what the handshake checks (`Origin`).
const KEPT_HEADERS: [&str; 11] = [
    "host",
    "origin",
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "content-type",
    "content-length",
    "transfer-encoding",
];

/// Give the request its own copies of its target and of the header values it needs.
///
/// Why: hyper parses a request head into its 8–16 KB connection read buffer and hands out the
/// target and header values as slices of it. engineioxide keeps the handshake request's parts
/// for the socket's whole life, and with them that buffer: 16 KB per connection, the largest
/// item of a connection's memory (a heap profile with heaptrack, BENCHMARKS.md §8). Copies of
/// a few hundred bytes let the buffer go once the connection is upgraded.
fn own_head(req: &mut Request) {
    let target = bytes::Bytes::copy_from_slice(req.uri().to_string().as_bytes());
    if let Ok(uri) = axum::http::Uri::from_maybe_shared(target) {
        // axum keeps the target once more, as it came, for `OriginalUri`.
        if req.extensions().get::<OriginalUri>().is_some() {
            req.extensions_mut().insert(OriginalUri(uri.clone()));
        }
        *req.uri_mut() = uri;
    }
    let shared = std::mem::take(req.headers_mut());
    let kept = |name: &axum::http::HeaderName| KEPT_HEADERS.contains(&name.as_str());
    let mut owned = axum::http::HeaderMap::with_capacity(shared.keys().filter(|n| kept(n)).count());
    for (name, value) in &shared {
        // What the transport and the handshake read; the rest (cookies, user agents,
        // `Accept-*`) would be kept for the socket's whole life for nobody.
        if !kept(name) {
            continue;
        }
        let mut copy =
            axum::http::HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        owned.append(name.clone(), copy);
    }
    *req.headers_mut() = owned;
}

/// A long-polling response body whose bytes are counted as written for its socket.
struct CountedBody {
    body: axum::body::Body,
    meter: Arc<Meter>,
}

impl http_body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &frame
            && let Some(data) = f.data_ref()
        {
            this.meter.add(data.len());
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_io_request_keeps_nothing_of_the_buffer_its_head_was_parsed_from() {
        // Like hyper: the target and header values are slices of one read buffer.
        let buffer = bytes::Bytes::from(
            "/socket.io/?EIO=4&transport=websocket\0websocket\0dGhlIHNhbXBsZSBub25jZQ==\0x"
                .repeat(4),
        );
        let range = buffer.as_ptr() as usize..buffer.as_ptr() as usize + buffer.len();
        let mut req = Request::new(axum::body::Body::empty());
        *req.uri_mut() = axum::http::Uri::from_maybe_shared(buffer.slice(0..37)).unwrap();
        let original = OriginalUri(req.uri().clone());
        req.extensions_mut().insert(original);
        let value = |r: std::ops::Range<usize>| {
            axum::http::HeaderValue::from_maybe_shared(buffer.slice(r)).unwrap()
        };
        let headers = req.headers_mut();
        headers.insert("upgrade", value(38..47));
        headers.insert("sec-websocket-key", value(48..72));
        headers.append("origin", value(73..74));
        headers.append("origin", value(38..47));
        headers.insert("cookie", value(38..47));
        assert!(range.contains(&(req.uri().path().as_ptr() as usize)));

        own_head(&mut req);
        assert_eq!(
            req.uri().to_string(),
            "/socket.io/?EIO=4&transport=websocket"
        );
        assert!(!range.contains(&(req.uri().path().as_ptr() as usize)));
        assert!(!range.contains(&(req.uri().query().unwrap().as_ptr() as usize)));
        let OriginalUri(original) = req.extensions().get::<OriginalUri>().unwrap();
        assert!(!range.contains(&(original.path().as_ptr() as usize)));
        assert_eq!(req.headers().len(), 4, "all but the cookie");
        assert_eq!(
            req.headers()["sec-websocket-key"],
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
        let many: Vec<_> = req.headers().get_all("origin").iter().collect();
        assert_eq!(many, ["x", "websocket"]);
        for value in req.headers().values() {
            assert!(!range.contains(&(value.as_bytes().as_ptr() as usize)));
        }
    }
}
