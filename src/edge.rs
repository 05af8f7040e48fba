//! The network edge: every accepted TCP connection, before any HTTP or Socket.IO parsing.
//!
//! Two things are only possible here:
//!
//! - **Limits before authentication.** Connections from one IP address that have not
//!   authenticated (a Socket.IO handshake that passed, or a request with a valid key) are
//!   counted; past `max_unauthenticated_per_ip` a new one is closed as soon as it is accepted,
//!   before a byte of it is read.
//! - **Knowing how much a socket has queued, in bytes.** socketioxide queues packets per
//!   socket but does not say how many bytes wait in its queue. What it *has written* is
//!   visible here: each connection counts the bytes written to the network into the
//!   [`Meter`] of the socket it carries (a WebSocket, from its upgrade on), and long-polling
//!   response bodies are counted by [`track`]. The delivery side counts the bytes it hands
//!   to the socket; the difference is what is queued (see `delivery::Client`). Counting the
//!   payload only (no framing) on the delivery side keeps that figure a lower bound that
//!   never drifts upwards.
//!
//! A [`Meter`] can also *close* its connection: a socket whose queue is full cannot even be
//! sent a disconnect packet, so a slow consumer is cut at the transport.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, OriginalUri, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use futures_util::task::AtomicWaker;
use socketioxide::SocketIo;
use socketioxide::socket::Sid;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Bytes written to the network for one socket, and a switch that cuts its connection.
#[derive(Debug, Default)]
pub struct Meter {
    written: AtomicU64,
    closed: AtomicBool,
    /// The tasks reading and writing the connection, woken to notice a close.
    reader: AtomicWaker,
    writer: AtomicWaker,
}

impl Meter {
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    fn add(&self, n: usize) {
        self.written.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Close the connection carrying this socket (its next read or write fails).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.reader.wake();
        self.writer.wake();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

/// The state shared by the listener and every connection.
pub struct Edge {
    state: Mutex<EdgeState>,
    max_unauthenticated_per_ip: usize,
    /// What a Socket.IO connection may read before it authenticates.
    socket_read_budget: u64,
    /// How long a connection may stay without authenticating (HTTP has no timer of its own
    /// here: without this, a connection that sends nothing would be kept forever).
    unauthenticated_timeout: Duration,
    refused: AtomicU64,
}

#[derive(Default)]
struct EdgeState {
    unauthenticated: HashMap<IpAddr, usize>,
    meters: HashMap<Sid, Arc<Meter>>,
    last_warning: Option<Instant>,
}

/// One accepted connection.
pub struct Conn {
    ip: IpAddr,
    authenticated: AtomicBool,
    /// Bytes read while unauthenticated, and how many are allowed (a Socket.IO connection
    /// needs a few KB to authenticate; HTTP requests are bounded by `max_body_bytes`).
    read: AtomicU64,
    read_budget: AtomicU64,
    /// The socket this connection carries once it is a WebSocket.
    meter: OnceLock<Arc<Meter>>,
    edge: Arc<Edge>,
}

impl Conn {
    /// The peer proved who it is: it no longer counts against its IP's unauthenticated
    /// connections.
    pub fn authenticate(&self) {
        if !self.authenticated.swap(true, Ordering::Relaxed) {
            self.edge.release_unauthenticated(self.ip);
        }
    }

    /// Until it authenticates, this connection may read `budget` bytes in all.
    fn limit_unauthenticated_reads(&self, budget: u64) {
        self.read_budget.fetch_min(budget, Ordering::Relaxed);
    }

    /// Count `n` bytes read; `false` once an unauthenticated connection is over its budget.
    fn read_allowed(&self, n: usize) -> bool {
        if self.authenticated.load(Ordering::Relaxed) {
            return true;
        }
        let total = self.read.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        total <= self.read_budget.load(Ordering::Relaxed)
    }

    /// This connection carries `meter`'s socket from now on (a WebSocket).
    pub fn carry(&self, meter: Arc<Meter>) {
        let _ = self.meter.set(meter);
    }
}

/// What axum hands each request about its connection (`ConnectInfo<Peer>`); [`track`] also
/// provides the plain `ConnectInfo<SocketAddr>`.
#[derive(Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub conn: Arc<Conn>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

impl Edge {
    pub fn new(
        max_unauthenticated_per_ip: usize,
        socket_read_budget: u64,
        unauthenticated_timeout: Duration,
    ) -> Arc<Edge> {
        Arc::new(Edge {
            state: Mutex::default(),
            max_unauthenticated_per_ip,
            socket_read_budget,
            unauthenticated_timeout,
            refused: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EdgeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connections closed at accept because their IP had too many unauthenticated ones.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The meter of socket `sid` (created on first use; [`Edge::forget`] at disconnect).
    pub fn meter(&self, sid: Sid) -> Arc<Meter> {
        self.lock().meters.entry(sid).or_default().clone()
    }

    fn existing_meter(&self, sid: Sid) -> Option<Arc<Meter>> {
        self.lock().meters.get(&sid).cloned()
    }

    pub fn forget(&self, sid: Sid) {
        self.lock().meters.remove(&sid);
    }

    /// Count a new connection from `ip`; `false` when it is one too many.
    fn admit(&self, ip: IpAddr) -> bool {
        let ip = address_block(ip);
        let mut state = self.lock();
        let count = state.unauthenticated.entry(ip).or_default();
        if *count >= self.max_unauthenticated_per_ip {
            self.refused.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            if state
                .last_warning
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
            {
                state.last_warning = Some(now);
                tracing::warn!(%ip, limit = self.max_unauthenticated_per_ip, "too many unauthenticated connections from one address; new ones are closed (max_unauthenticated_per_ip)");
            }
            return false;
        }
        *count += 1;
        true
    }

    fn release_unauthenticated(&self, ip: IpAddr) {
        let ip = address_block(ip);
        let mut state = self.lock();
        if let Some(count) = state.unauthenticated.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                state.unauthenticated.remove(&ip);
            }
        }
    }
}

/// What one client is counted as: its IPv4 address, or its IPv6 /64 (one host usually holds a
/// whole /64); an IPv4-mapped IPv6 address counts as the IPv4 one.
fn address_block(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// A TCP listener whose connections are counted and metered.
pub struct EdgeListener {
    tcp: TcpListener,
    edge: Arc<Edge>,
}

impl EdgeListener {
    pub fn new(tcp: TcpListener, edge: Arc<Edge>) -> EdgeListener {
        EdgeListener { tcp, edge }
    }
}

impl Listener for EdgeListener {
    type Io = MeteredStream;
    type Addr = Peer;

    async fn accept(&mut self) -> (MeteredStream, Peer) {
        loop {
            let (stream, addr) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if !self.edge.admit(addr.ip()) {
                drop(stream);
                continue;
            }
            let conn = Arc::new(Conn {
                ip: addr.ip(),
                authenticated: AtomicBool::new(false),
                read: AtomicU64::new(0),
                read_budget: AtomicU64::new(u64::MAX),
                meter: OnceLock::new(),
                edge: self.edge.clone(),
            });
            return (
                MeteredStream {
                    inner: stream,
                    conn: conn.clone(),
                    deadline: Box::pin(tokio::time::sleep(self.edge.unauthenticated_timeout)),
                },
                Peer { addr, conn },
            );
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        let addr = self.tcp.local_addr()?;
        Ok(Peer {
            addr,
            conn: Arc::new(Conn {
                ip: addr.ip(),
                // Not counted: nothing to release.
                authenticated: AtomicBool::new(true),
                read: AtomicU64::new(0),
                read_budget: AtomicU64::new(u64::MAX),
                meter: OnceLock::new(),
                edge: self.edge.clone(),
            }),
        })
    }
}

impl Connected<IncomingStream<'_, EdgeListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, EdgeListener>) -> Peer {
        stream.remote_addr().clone()
    }
}

/// A TCP stream that counts what it writes into the meter of the socket it carries.
pub struct MeteredStream {
    inner: TcpStream,
    conn: Arc<Conn>,
    /// Until it authenticates, the connection is closed at this deadline.
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl MeteredStream {
    /// Whether the meter of the socket carried was closed, or the connection is still
    /// unauthenticated at its deadline (registering the task to be woken by the deadline).
    fn closed(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.conn.authenticated.load(Ordering::Relaxed)
            && self.deadline.as_mut().poll(cx).is_ready()
        {
            return true;
        }
        self.conn.meter.get().is_some_and(|m| m.is_closed())
    }

    /// The stream is not ready: have a close of the meter wake this task, and say whether
    /// one happened meanwhile. Only a task that waits needs waking, so a task whose reads
    /// and writes go through pays nothing here (registering on every write showed in
    /// profiles of fan-out).
    fn wait_for_close(&self, cx: &mut Context<'_>, reading: bool) -> bool {
        let Some(meter) = self.conn.meter.get() else {
            return false;
        };
        let waker = if reading {
            &meter.reader
        } else {
            &meter.writer
        };
        waker.register(cx.waker());
        meter.is_closed()
    }
}

fn cut() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "closed by the server")
}

impl Drop for MeteredStream {
    fn drop(&mut self) {
        if !self.conn.authenticated.swap(true, Ordering::Relaxed) {
            self.conn.edge.release_unauthenticated(self.conn.ip);
        }
    }
}

impl AsyncRead for MeteredStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closed(cx) {
            return Poll::Ready(Err(cut()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if result.is_pending() && this.wait_for_close(cx, true) {
            return Poll::Ready(Err(cut()));
        }
        if let Poll::Ready(Ok(())) = result
            && !this.conn.read_allowed(buf.filled().len() - before)
        {
            tracing::info!(ip = %this.conn.ip, "connection closed: it sent more than max_unauthenticated_bytes before authenticating");
            return Poll::Ready(Err(cut()));
        }
        result
    }
}

impl AsyncWrite for MeteredStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closed(cx) {
            return Poll::Ready(Err(cut()));
        }
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if result.is_pending() && this.wait_for_close(cx, false) {
            return Poll::Ready(Err(cut()));
        }
        if let (Poll::Ready(Ok(n)), Some(meter)) = (&result, this.conn.meter.get()) {
            meter.add(*n);
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closed(cx) {
            return Poll::Ready(Err(cut()));
        }
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if result.is_pending() && this.wait_for_close(cx, false) {
            return Poll::Ready(Err(cut()));
        }
        if let (Poll::Ready(Ok(n)), Some(meter)) = (&result, this.conn.meter.get()) {
            meter.add(*n);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Per request: provide `ConnectInfo<SocketAddr>`, and for Socket.IO requests of an
/// established socket (`?sid=`), mark the connection authenticated, make a WebSocket
/// upgrade carry the socket's meter, and count long-polling response bodies into it.
pub async fn track(
    State((edge, io)): State<(Arc<Edge>, SocketIo)>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    mut req: Request,
    next: Next,
) -> Response {
    req.extensions_mut().insert(ConnectInfo(peer.addr));
    let mut polled = None;
    let socket_io = req.uri().path().starts_with("/socket.io");
    if socket_io {
        peer.conn
            .limit_unauthenticated_reads(edge.socket_read_budget);
        own_head(&mut req);
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
                .get::<ConnectInfo<Peer>>()
                .is_some_and(|ConnectInfo(p)| p.addr.ip() == peer.addr.ip())
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

    #[test]
    fn unauthenticated_connections_are_counted_per_ip_and_released() {
        let edge = Edge::new(2, 1 << 16, Duration::from_secs(30));
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(address_block(v6a), address_block(v6b), "one /64");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_block(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(edge.admit(ip));
        assert!(edge.admit(ip));
        assert!(!edge.admit(ip), "a third is refused");
        assert!(edge.admit(other), "another address is not affected");
        edge.release_unauthenticated(ip);
        assert!(
            edge.admit(ip),
            "room again once one authenticated or closed"
        );
        assert_eq!(edge.refused(), 1);
    }
}
