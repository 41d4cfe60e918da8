//! A TCP proxy on 127.0.0.1 between docledger and one store, for fault tests. It passes
//! bytes through, delays them, drops them (a cut cable: nothing passes and nothing is closed,
//! new connections hang), or resets every connection with RST and refuses new ones the same
//! way, until it is told otherwise. Nothing is faked above TCP: the store and its client see
//! exactly what they would see on a bad network.
//!
//! It can also terminate TLS in front of a store that only speaks plain TCP ([`ClientSide`]):
//! clients must complete a real TLS handshake with the certificate it presents (and, for
//! PostgreSQL, ask for TLS the way the protocol does); a client that does not is refused.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// What the proxy does to the bytes and connections passing through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Forward every chunk after this delay (each direction).
    Delay(Duration),
    /// Forward nothing: open connections stall, new ones are accepted and then stall.
    /// Held bytes flow again when the fault ends (a network partition that heals).
    Drop,
    /// Reset every open connection (RST) and reset each new one at once (a store that is
    /// down, or a middlebox killing connections).
    Reset,
}

/// What clients must speak to the proxy; the store behind it always gets plain TCP.
#[derive(Clone)]
pub enum ClientSide {
    /// Plain TCP, passed through.
    Plain,
    /// TLS from the first byte (HTTPS, gRPC over TLS), terminated by the proxy.
    Tls(TlsAcceptor),
    /// PostgreSQL's in-protocol upgrade: the client's SSLRequest is answered `S`, then TLS is
    /// terminated by the proxy and the rest (startup message included) goes to the server in
    /// plain. A client that starts without asking for TLS is refused.
    PostgresTls(TlsAcceptor),
}

/// PostgreSQL's SSLRequest code (protocol 1234.5679).
const PG_SSL_REQUEST: u32 = 80_877_103;
/// PostgreSQL's GSSENCRequest code (1234.5680): answered `N` (no GSS encryption here).
const PG_GSSENC_REQUEST: u32 = 80_877_104;

/// Counters of what the proxy saw, for reports.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections reset by the proxy.
    pub resets: AtomicU64,
    /// Faults set other than `Pass`.
    pub faults: AtomicU64,
    /// TLS handshakes completed with a client.
    pub tls_handshakes: AtomicU64,
    /// Clients refused before any byte reached the store: failed TLS handshakes and
    /// PostgreSQL clients that did not ask for TLS.
    pub tls_refused: AtomicU64,
}

/// A running proxy; stops (and closes every connection) when dropped.
pub struct Proxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    stats: Arc<ProxyStats>,
    stop: CancellationToken,
}

impl Proxy {
    /// Starts a proxy on an ephemeral 127.0.0.1 port forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        Proxy::start_with(upstream, ClientSide::Plain).await
    }

    /// Starts a proxy forwarding to `upstream` whose clients speak `client_side`.
    pub async fn start_with(upstream: SocketAddr, client_side: ClientSide) -> Proxy {
        assert!(
            upstream.ip().is_loopback(),
            "fault tests only talk to 127.0.0.1, not {upstream}"
        );
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (fault, _) = watch::channel(Fault::Pass);
        let stats = Arc::new(ProxyStats::default());
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(
            listener,
            upstream,
            client_side,
            fault.clone(),
            stats.clone(),
            stop.clone(),
        ));
        Proxy {
            addr,
            fault,
            stats,
            stop,
        }
    }

    /// Starts a proxy to the `host:port` of a store URL (`scheme://user@host:port/db`).
    pub async fn to_url(url: &str) -> Proxy {
        Proxy::start(host_port(url)).await
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `url` with its `host:port` replaced by the proxy's.
    pub fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let userinfo = authority
            .rsplit_once('@')
            .map_or(String::new(), |(u, _)| format!("{u}@"));
        let prefix = if scheme.is_empty() {
            String::new()
        } else {
            format!("{scheme}://")
        };
        let proxied = format!("{prefix}{userinfo}{}{path}", self.addr);
        if scheme == "mysql" && !path.contains("prefer_socket") {
            // mysql_async moves a connection to 127.0.0.1 onto the server's Unix socket unless
            // told not to, which would route around the proxy and its faults.
            let sep = if path.contains('?') { '&' } else { '?' };
            format!("{proxied}{sep}prefer_socket=false")
        } else {
            proxied
        }
    }

    /// Sets the fault (applies to open and new connections at once).
    pub fn set(&self, fault: Fault) {
        if fault != Fault::Pass {
            self.stats.faults.fetch_add(1, Ordering::Relaxed);
        }
        self.fault.send_replace(fault);
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        *self.fault.borrow()
    }

    /// What the proxy saw.
    pub fn stats(&self) -> &ProxyStats {
        &self.stats
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// `host:port` of a URL, `localhost` resolved to 127.0.0.1.
pub fn host_port(url: &str) -> SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host_port
        .replace("localhost", "127.0.0.1")
        .parse()
        .unwrap_or_else(|e| panic!("{url}: no host:port ({e})"))
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    client_side: ClientSide,
    fault: watch::Sender<Fault>,
    stats: Arc<ProxyStats>,
    stop: CancellationToken,
) {
    loop {
        let client = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(_) => continue,
            },
        };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(
            client,
            upstream,
            client_side.clone(),
            fault.subscribe(),
            stats.clone(),
            stop.clone(),
        ));
    }
}

/// Closes a socket with RST instead of FIN.
fn reset(stream: TcpStream) {
    #[allow(deprecated)]
    // reason: SO_LINGER of zero never blocks on close; it is how a socket sends RST
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Waits until the fault lets bytes through; `None` when the connection must be reset.
async fn gate(fault: &mut watch::Receiver<Fault>) -> Option<()> {
    loop {
        let current = *fault.borrow_and_update();
        match current {
            Fault::Pass => return Some(()),
            Fault::Delay(d) => {
                tokio::time::sleep(d).await;
                return Some(());
            }
            Fault::Reset => return None,
            Fault::Drop => fault.changed().await.ok()?,
        }
    }
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    client_side: ClientSide,
    mut fault: watch::Receiver<Fault>,
    stats: Arc<ProxyStats>,
    stop: CancellationToken,
) {
    // A connection that arrives during a fault waits for it to end (drop) or is reset.
    let passed = tokio::select! {
        _ = stop.cancelled() => None,
        passed = gate(&mut fault) => passed,
    };
    if passed.is_none() {
        stats.resets.fetch_add(1, Ordering::Relaxed);
        reset(client);
        return;
    }
    let _ = client.set_nodelay(true);
    let accepted = tokio::select! {
        _ = stop.cancelled() => return,
        accepted = accept_client(client, &client_side) => accepted,
    };
    let mut client = match accepted {
        Ok(client) => client,
        Err(_) => {
            stats.tls_refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    if matches!(client, ClientStream::Tls(_)) {
        stats.tls_handshakes.fetch_add(1, Ordering::Relaxed);
    }
    let mut server = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(_) => {
            reset(client.into_tcp());
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let mut watch_reset = fault.clone();
    let must_reset = {
        let (cr, cw) = tokio::io::split(&mut client);
        let (sr, sw) = server.split();
        let up = pump(cr, sw, fault.clone());
        let down = pump(sr, cw, fault.clone());
        tokio::select! {
            _ = stop.cancelled() => true,
            _ = async { tokio::join!(up, down) } => false,
            _ = watch_reset.wait_for(|f| *f == Fault::Reset) => true,
        }
    };
    if must_reset {
        stats.resets.fetch_add(1, Ordering::Relaxed);
        reset(client.into_tcp());
        reset(server);
    }
}

/// The client's side of a proxied connection, after the TLS handshake if there is one.
enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl ClientStream {
    fn into_tcp(self) -> TcpStream {
        match self {
            ClientStream::Plain(tcp) => tcp,
            ClientStream::Tls(tls) => tls.into_inner().0,
        }
    }
}

/// Performs what `side` asks of a new client before any byte goes to the store.
async fn accept_client(mut client: TcpStream, side: &ClientSide) -> io::Result<ClientStream> {
    match side {
        ClientSide::Plain => Ok(ClientStream::Plain(client)),
        ClientSide::Tls(acceptor) => {
            Ok(ClientStream::Tls(Box::new(acceptor.accept(client).await?)))
        }
        ClientSide::PostgresTls(acceptor) => {
            loop {
                // Every pre-startup request is 8 bytes: length 8, then the request code.
                let mut request = [0u8; 8];
                client.read_exact(&mut request).await?;
                let length = u32::from_be_bytes([request[0], request[1], request[2], request[3]]);
                let code = u32::from_be_bytes([request[4], request[5], request[6], request[7]]);
                match (length, code) {
                    (8, PG_SSL_REQUEST) => break,
                    (8, PG_GSSENC_REQUEST) => client.write_all(b"N").await?,
                    _ => {
                        return Err(io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            "the client did not ask for TLS",
                        ))
                    }
                }
            }
            client.write_all(b"S").await?;
            Ok(ClientStream::Tls(Box::new(acceptor.accept(client).await?)))
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Copies `from` to `to` through the fault gate until EOF or an error.
async fn pump<R, W>(mut from: R, mut to: W, mut fault: watch::Receiver<Fault>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if gate(&mut fault).await.is_none() {
            // The connection-level select resets both sockets.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
