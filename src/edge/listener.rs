//! The TCP listener whose connections are counted before a byte is read, the stream that
//! meters what it writes into the meter of the socket it carries, and (with TLS) the
//! handshake over it (see `tls`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use std::net::SocketAddr;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::{Conn, Edge, Peer};

/// TLS handshakes that may run at once; past it a new connection is closed (each costs a
/// task and rustls' buffers until it completes or times out).
const MAX_HANDSHAKES: usize = 1024;

/// How long a TLS handshake may take.
const HANDSHAKE_WITHIN: Duration = Duration::from_secs(10);

/// A TCP listener whose connections are counted and metered, and with TLS, decrypted.
pub struct EdgeListener {
    tcp: TcpListener,
    edge: Arc<Edge>,
    tls: Option<TlsAcceptor>,
    /// Connections whose TLS handshake finished (handshakes run in their own tasks: one
    /// slow client must not hold up the accept loop).
    ready: mpsc::Receiver<(EdgeIo, Peer)>,
    ready_tx: mpsc::Sender<(EdgeIo, Peer)>,
    handshakes: Arc<Semaphore>,
}

impl EdgeListener {
    pub fn new(tcp: TcpListener, edge: Arc<Edge>, tls: Option<TlsAcceptor>) -> EdgeListener {
        let (ready_tx, ready) = mpsc::channel(64);
        EdgeListener {
            tcp,
            edge,
            tls,
            ready,
            ready_tx,
            handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
        }
    }

    /// Count and meter a new connection.
    fn wrap(&self, stream: TcpStream, addr: SocketAddr) -> (MeteredStream, Peer) {
        let conn = Arc::new(Conn {
            ip: addr.ip(),
            // A trusted proxy's connection was not counted (see `Edge::admit`): nothing to
            // release, no deadline; its clients are counted per request.
            authenticated: AtomicBool::new(self.edge.trusted.contains(addr.ip())),
            read: AtomicU64::new(0),
            read_budget: AtomicU64::new(u64::MAX),
            meter: OnceLock::new(),
            edge: self.edge.clone(),
        });
        (
            MeteredStream {
                inner: stream,
                conn: conn.clone(),
                deadline: Box::pin(tokio::time::sleep(self.edge.unauthenticated_timeout)),
            },
            Peer { addr, conn },
        )
    }

    /// Run `stream`'s TLS handshake in a task of its own; the result comes back through
    /// `ready`.
    fn handshake(&self, acceptor: &TlsAcceptor, stream: MeteredStream, peer: Peer) {
        let Ok(permit) = self.handshakes.clone().try_acquire_owned() else {
            tracing::debug!(ip = %peer.addr.ip(), "TLS handshakes at their bound; connection closed");
            return;
        };
        let (acceptor, ready) = (acceptor.clone(), self.ready_tx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_WITHIN, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = ready.send((EdgeIo::Tls(Box::new(tls)), peer)).await;
                }
                Ok(Err(e)) => {
                    tracing::debug!(ip = %peer.addr.ip(), error = %e, "TLS handshake failed")
                }
                Err(_) => tracing::debug!(ip = %peer.addr.ip(), "TLS handshake timed out"),
            }
        });
    }
}

impl Listener for EdgeListener {
    type Io = EdgeIo;
    type Addr = Peer;

    async fn accept(&mut self) -> (EdgeIo, Peer) {
        loop {
            let accepted = tokio::select! {
                Some(done) = self.ready.recv() => return done,
                accepted = self.tcp.accept() => accepted,
            };
            let (stream, addr) = match accepted {
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
            let (metered, peer) = self.wrap(stream, addr);
            match &self.tls {
                None => return (EdgeIo::Plain(metered), peer),
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    self.handshake(&acceptor, metered, peer);
                }
            }
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

/// A connection as the HTTP server reads it: plain, or TLS over the metered stream.
pub enum EdgeIo {
    Plain(MeteredStream),
    Tls(Box<TlsStream<MeteredStream>>),
}

impl AsyncRead for EdgeIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            EdgeIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            EdgeIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for EdgeIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            EdgeIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            EdgeIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            EdgeIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            EdgeIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            EdgeIo::Plain(s) => s.is_write_vectored(),
            EdgeIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            EdgeIo::Plain(s) => Pin::new(s).poll_flush(cx),
            EdgeIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            EdgeIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            EdgeIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
