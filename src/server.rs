//! Listeners: bind, admit each connection under the limits, accept with back-off, and
//! hand each connection to its own task.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::client::ConnGuard;
use crate::config::Tcp;
use crate::conn::{self, Accepted, ListenerCtx, proxy_header};
use crate::limits::{ClientLimits, Refusal};
use crate::net::{is_resource_exhaustion, set_tcp_options};
use crate::proxy::Proxy;
use crate::shutdown::Shutdown;

/// Pending connections the kernel queues before `accept`: enough for a reconnect
/// storm after an upstream restart, where a few thousand clients come back at once.
const BACKLOG: u32 = 4096;

/// Binds a listening socket. With `reuse_port`, another process (a new sluice during
/// a binary upgrade) can bind the same address and share the incoming connections.
pub fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // A restarted sluice must be able to bind while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// What one accept loop needs; `ctx` is swapped by reloads.
pub struct Listener {
    pub ctx: Arc<ArcSwap<ListenerCtx>>,
    pub proxy: Arc<Proxy>,
    pub limits: Arc<ClientLimits>,
    pub shutdown: Shutdown,
    /// Ends this listener alone (a reload removed or moved it).
    pub stop: CancellationToken,
}

/// Binds a listener with the TCP options its connections inherit.
pub fn bind_with(addr: SocketAddr, reuse_port: bool, tcp: &Tcp) -> io::Result<Arc<TcpListener>> {
    let listener = bind(addr, reuse_port)?;
    set_tcp_options(&listener, tcp)?;
    Ok(Arc::new(listener))
}

impl Listener {
    /// Accepts connections until draining begins or the listener is stopped.
    pub async fn accept_loop(self, listener: Arc<TcpListener>) {
        let mut backoff = Duration::ZERO;
        // A listener bound to one address is the address every connection it accepts
        // was made to: asking each connection's socket (getsockname) was one system
        // call of a WebSocket handshake's 33 (strace -c, 2026-12-07).
        let local = listener
            .local_addr()
            .ok()
            .filter(|a| !a.ip().is_unspecified());
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                () = self.shutdown.draining() => break,
                () = self.stop.cancelled() => break,
            };
            let (stream, client) = match accepted {
                Ok(pair) => {
                    backoff = Duration::ZERO;
                    pair
                }
                Err(e) if is_resource_exhaustion(&e) => {
                    // Out of file descriptors or memory: accepting again at once would
                    // spin. Back off (up to a second) so closing connections free some.
                    backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                    let ctx = self.ctx.load();
                    ctx.metrics.accept_exhausted.inc();
                    let name = ctx.name.clone();
                    warn_limited(
                        &ACCEPT_WARNED,
                        || tracing::warn!(listener = %name, error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off"),
                    );
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => continue,
                        () = self.shutdown.draining() => break,
                        () = self.stop.cancelled() => break,
                    }
                }
                Err(e) => {
                    // A connection reset before it was accepted, and the like.
                    tracing::debug!(error = %e, "accept failed");
                    continue;
                }
            };
            self.admit(stream, client, local);
        }
        tracing::debug!(listener = %self.ctx.load().name, "listener closed");
    }

    fn admit(&self, stream: TcpStream, client: SocketAddr, local: Option<SocketAddr>) {
        let ctx = self.ctx.load_full();
        let accepted = Accepted {
            client,
            local,
            at: tokio::time::Instant::now(),
        };
        if ctx.proxy_protocol {
            return self.admit_proxied(stream, accepted, ctx);
        }
        let admission = match self.limits.admit(client.ip(), ctx.limit.as_ref()) {
            Ok(a) => a,
            Err(refusal) => return refuse(&ctx, stream, client, refusal),
        };
        let guard = ConnGuard::new(admission, &ctx.metrics);
        self.shutdown.spawn(conn::handle(
            stream,
            accepted,
            ctx,
            self.proxy.clone(),
            self.shutdown.clone(),
            guard,
        ));
    }

    /// Admits a connection that must begin with a PROXY header: the shared limits
    /// count it at once, the per-client limit once the header has named the client.
    /// The header is due within `request_header` of accept, like a request head.
    fn admit_proxied(&self, mut stream: TcpStream, mut accepted: Accepted, ctx: Arc<ListenerCtx>) {
        let peer = accepted.client;
        let mut admission = match self.limits.admit_shared(ctx.limit.as_ref()) {
            Ok(a) => a,
            Err(refusal) => return refuse(&ctx, stream, peer, refusal),
        };
        let limits = self.limits.clone();
        let proxy = self.proxy.clone();
        let shutdown = self.shutdown.clone();
        self.shutdown.spawn(async move {
            let deadline = accepted.at + ctx.request_header();
            let read = tokio::time::timeout_at(deadline, proxy_header::read(&mut stream));
            let header = tokio::select! {
                r = read => r,
                () = shutdown.stopped() => return,
            };
            let client = match header {
                Ok(Ok(parsed)) => parsed.source.unwrap_or(peer),
                Ok(Err(e)) => {
                    ctx.metrics.proxy_header_errors.inc();
                    tracing::debug!(%peer, listener = %ctx.name, error = %e, "connection closed");
                    return;
                }
                Err(_) => {
                    ctx.metrics.proxy_header_errors.inc();
                    tracing::debug!(%peer, listener = %ctx.name, "no PROXY header in time: closed");
                    return;
                }
            };
            if let Err(refusal) = limits.admit_client(&mut admission, client.ip()) {
                return refuse(&ctx, stream, client, refusal);
            }
            let guard = ConnGuard::new(admission, &ctx.metrics);
            accepted.client = client;
            conn::handle(stream, accepted, ctx, proxy, shutdown, guard).await;
        });
    }
}

/// Closes a connection a limit refused, telling a plain-HTTP client why.
fn refuse(ctx: &ListenerCtx, stream: TcpStream, client: SocketAddr, refusal: Refusal) {
    ctx.metrics.refused(refusal).inc();
    warn_limited(
        &LIMIT_WARNED[refusal as usize],
        || tracing::warn!(listener = %ctx.name, %client, limit = refusal.as_str(), "limit reached: refusing connections"),
    );
    if ctx.tls.is_some() {
        // A TLS client could not read a plain answer.
        return;
    }
    let answer: &[u8] = match refusal {
        Refusal::MaxConnectionsPerIp => {
            b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain\r\ncontent-length: 36\r\nretry-after: 1\r\nconnection: close\r\n\r\ntoo many connections from this client\n"
        }
        Refusal::MaxConnections | Refusal::ListenerMaxConnections => {
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 21\r\nretry-after: 1\r\nconnection: close\r\n\r\ntoo many connections\n"
        }
    };
    // Best effort and never blocking: the socket's send buffer is empty.
    let _ = stream.try_write(answer);
}

static ACCEPT_WARNED: AtomicU64 = AtomicU64::new(0);
static LIMIT_WARNED: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

/// Runs `log` at most once a second per `last`, so a flood of refused connections
/// cannot itself flood the log.
pub fn warn_limited(last: &AtomicU64, log: impl FnOnce()) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let prev = last.load(Ordering::Relaxed);
    if now > prev
        && last
            .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        log();
    }
}
