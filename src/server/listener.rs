//! The listener: accepts TCP connections, at most `server.connections_max` open at once,
//! performs the TLS handshake itself, and hands finished connections to tonic together
//! with their [`PeerInfo`] (peer address and client certificates).
//!
//! The handshake is done here rather than by tonic so that a failure can be logged with
//! the peer's address and counted ([`ServerStats`]); tonic drops such failures at debug
//! level without the address. Each handshake runs in its own task, bounded by
//! `server.handshake_timeout_ms`, so a slow or silent peer delays nobody else and holds its
//! place under `connections_max` for that long at most. A failure is logged
//! at warn with `peer` and rustls' error, which names what went wrong (no certificate,
//! unknown issuer, ...) and never carries key material.
//!
//! Invariants: every connection, from before its `accept` until it is closed (handshake
//! failed, or tonic dropped it), holds one permit of a semaphore of `connections_max`;
//! while none is free the listener does not accept and the kernel's backlog holds the
//! newcomers. The accept loop ends, closing the listening socket, when `stop` resolves or
//! tonic drops the stream of connections.
//! Must never: decide what a client may do (that is `acl`), or read request bytes.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;
use tonic::transport::server::Connected;

use super::stats::ServerStats;

/// Finished connections waiting for tonic to pick them up; tonic takes each at once, so
/// this only smooths bursts.
const READY_QUEUE: usize = 16;
/// How long the accept loop pauses after an error that is not about one connection (out
/// of file descriptors, say), so that it does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Who is at the other end of a connection; every request carries it in its extensions
/// (see [`PeerInfo::of`]).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub local_addr: Option<SocketAddr>,
    pub remote_addr: Option<SocketAddr>,
    /// The client's certificate chain, end-entity first, as verified during the handshake;
    /// `None` without TLS.
    pub certs: Option<Arc<[CertificateDer<'static>]>>,
    /// The certificate's common name, parsed once per connection on its first request (every
    /// request carries a clone of this `PeerInfo`; parsing the X.509 per request cost a fifth
    /// of an append's CPU). `None` inside when the certificate names no one.
    identity: Arc<std::sync::OnceLock<Option<String>>>,
}

impl PeerInfo {
    /// The peer of the connection a request came on; `None` when the request did not come
    /// through this listener (a test calling the service directly).
    pub fn of<T>(request: &Request<T>) -> Option<&PeerInfo> {
        request.extensions().get::<PeerInfo>()
    }

    /// The client's certificate chain, when it presented one.
    pub fn certs(&self) -> Option<&[CertificateDer<'static>]> {
        self.certs.as_deref()
    }

    /// The client's identity (its certificate's common name), cached for the connection.
    pub fn client_name(&self) -> Result<String, super::identity::Error> {
        let cached = self
            .identity
            .get_or_init(|| super::identity::from_peer_certs(self.certs()).ok());
        match cached {
            Some(name) => Ok(name.clone()),
            // Parse again for the typed reason; only refused calls take this path.
            None => super::identity::from_peer_certs(self.certs()),
        }
    }
}

/// The stream of connections for `Server::serve_with_incoming_shutdown`. Accepting starts
/// at once, in a task of its own; it stops when `stop` resolves or the stream is dropped.
/// With `tls`, each connection is handed over only after a successful handshake, which
/// must finish within `limits.handshake_timeout`.
pub(crate) fn incoming(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ConnectionLimits,
    stats: Arc<ServerStats>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> ReceiverStream<Result<Connection, Infallible>> {
    assert!(
        limits.connections_max > 0,
        "connections_max is validated to be > 0"
    );
    let (tx, rx) = mpsc::channel(READY_QUEUE);
    let accepting = Acceptor {
        listener,
        tls: tls.map(TlsAcceptor::from),
        permits: Arc::new(Semaphore::new(limits.connections_max)),
        handshake_timeout: limits.handshake_timeout,
        stats,
        ready: tx.clone(),
    };
    tokio::spawn(async move {
        tokio::select! {
            () = accepting.run() => {}
            () = stop => {}
            () = tx.closed() => {}
        }
        // The listening socket closes here: new connections are refused from now on.
    });
    ReceiverStream::new(rx)
}

/// The listener's bounds (`server.connections_max`, `server.handshake_timeout_ms`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    /// Connections open at once, handshaking or served.
    pub connections_max: usize,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
}

impl ConnectionLimits {
    /// The limits of `[server]`.
    pub(crate) fn of(server: &crate::config::ServerConfig) -> ConnectionLimits {
        ConnectionLimits {
            connections_max: server.connections_max as usize,
            handshake_timeout: Duration::from_millis(server.handshake_timeout_ms),
        }
    }
}

struct Acceptor {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    permits: Arc<Semaphore>,
    handshake_timeout: Duration,
    stats: Arc<ServerStats>,
    ready: mpsc::Sender<Result<Connection, Infallible>>,
}

impl Acceptor {
    async fn run(self) {
        loop {
            let permit = self
                .permits
                .clone()
                .acquire_owned()
                .await
                .expect("the connection semaphore is never closed");
            let (tcp, remote_addr) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            };
            let slot = Slot::new(permit, self.stats.clone());
            // Small acks must not wait for Nagle.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(peer = %remote_addr, error = %e, "cannot set TCP_NODELAY");
            }
            let peer = PeerInfo {
                local_addr: tcp.local_addr().ok(),
                remote_addr: Some(remote_addr),
                certs: None,
                identity: Arc::default(),
            };
            match &self.tls {
                None => {
                    let connection = Connection {
                        io: Io::Plain(tcp),
                        peer,
                        _slot: slot,
                    };
                    if self.ready.send(Ok(connection)).await.is_err() {
                        return; // tonic stopped taking connections
                    }
                }
                Some(acceptor) => {
                    let handshake = handshake(
                        acceptor.clone(),
                        self.handshake_timeout,
                        tcp,
                        peer,
                        slot,
                        self.stats.clone(),
                        self.ready.clone(),
                    );
                    tokio::spawn(handshake);
                }
            }
        }
    }
}

/// Handles an `accept` error: errors about one connection (it was reset while queued) are
/// skipped; others (out of file descriptors) are logged and waited out briefly.
async fn accept_failed(e: &std::io::Error) {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionAborted
        | ErrorKind::ConnectionReset
        | ErrorKind::ConnectionRefused
        | ErrorKind::Interrupted => {
            tracing::debug!(error = %e, "a connection failed before it was accepted");
        }
        _ => {
            tracing::warn!(error = %e, backoff = ?ACCEPT_BACKOFF, "accepting connections failed; retrying");
            tokio::time::sleep(ACCEPT_BACKOFF).await;
        }
    }
}

/// Performs one TLS handshake, then hands the connection over; a failure or timeout is
/// logged with the peer's address, counted, and closes the connection (freeing its slot).
async fn handshake(
    acceptor: TlsAcceptor,
    timeout: Duration,
    tcp: TcpStream,
    mut peer: PeerInfo,
    slot: Slot,
    stats: Arc<ServerStats>,
    ready: mpsc::Sender<Result<Connection, Infallible>>,
) {
    let remote = peer
        .remote_addr
        .expect("set from accept() for every connection");
    let tls = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            stats.tls_handshake_failed();
            tracing::warn!(peer = %remote, error = %e, "TLS handshake failed; connection closed");
            return;
        }
        Err(_elapsed) => {
            stats.tls_handshake_failed();
            tracing::warn!(peer = %remote, ?timeout, "TLS handshake timed out; connection closed");
            return;
        }
    };
    peer.certs = tls.get_ref().1.peer_certificates().map(Arc::from);
    let connection = Connection {
        io: Io::Tls(Box::new(tls)),
        peer,
        _slot: slot,
    };
    if ready.send(Ok(connection)).await.is_err() {
        tracing::debug!(peer = %remote, "server stopping; handshaken connection dropped");
    }
}

/// One of the `connections_max` places, held by a connection for as long as it is open.
struct Slot {
    _permit: OwnedSemaphorePermit,
    stats: Arc<ServerStats>,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, stats: Arc<ServerStats>) -> Slot {
        stats.connection_opened();
        Slot {
            _permit: permit,
            stats,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stats.connection_closed();
    }
}

enum Io {
    Plain(TcpStream),
    // Boxed: a rustls session is large, and plain connections should not pay for it.
    Tls(Box<TlsStream<TcpStream>>),
}

/// An accepted (and, with TLS, handshaken) connection, as tonic serves it.
pub(crate) struct Connection {
    io: Io,
    peer: PeerInfo,
    _slot: Slot,
}

impl Connected for Connection {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}
