//! One client connection: the TLS handshake (under its own timeout) on TLS listeners,
//! the choice of HTTP version (ALPN on TLS, the HTTP/2 preface on plain listeners that
//! take it), then HTTP/1.1 with upgrades under the header timeout and size limit, or
//! HTTP/2 ([`http2`]); closed gracefully when the gateway drains.

mod http2;
pub mod proxy_header;

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::client::{ConnGuard, ConnInfo, Protocol, Streams};
use crate::config::{Http2, Limits, ListenerSettings, Tcp, Timeouts};
use crate::headers::Forwarded;
use crate::limits::ConnLimit;
use crate::metrics::ListenerMetrics;
use crate::proxy::Proxy;
use crate::shutdown::Shutdown;
use crate::tls::{ServerTls, TlsError};
use crate::trust::TrustedProxies;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// What every connection of one listener shares.
pub struct ListenerCtx {
    pub name: Arc<str>,
    pub metrics: ListenerMetrics,
    /// Set on TLS listeners; swapped in place when certificates are reloaded.
    pub tls: Option<ServerTls>,
    /// Set when every request is answered with a redirect to HTTPS on this port.
    pub redirect_https: Option<u16>,
    /// This listener's own connection limit, kept across reloads.
    pub limit: Option<Arc<ConnLimit>>,
    pub tcp: Tcp,
    /// Every connection starts with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// Peers whose forwarding headers are believed; `None` when there are none.
    trusted: Option<Arc<TrustedProxies>>,
    tls_handshake: Duration,
    /// How long a client may take to send a request head, or keep an HTTP/2
    /// connection open with no stream.
    request_header: Duration,
    http: http1::Builder,
    /// Set when the listener serves HTTP/2.
    h2: Option<http2::Builder>,
}

impl ListenerCtx {
    pub fn new(
        settings: &ListenerSettings,
        metrics: ListenerMetrics,
        timeouts: &Timeouts,
        limits: &Limits,
        http2: &Http2,
        tcp: Tcp,
        limit: Option<Arc<ConnLimit>>,
    ) -> Result<Self, TlsError> {
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(timeouts.request_header)
            // A head over the limit is answered by the request service, as every
            // other error (plain-text body, access line): hyper reads heads up to
            // twice the limit so that the service sees them. Past that hyper answers
            // a bare 431 itself: the bound on what one connection's head can cost.
            .max_header_size(hyper_head_limit(limits))
            // hyper's floor is 8 KiB; the read buffer must hold a whole head.
            .max_buf_size(hyper_head_limit(limits).max(8192) + 1024)
            // A client may end its side after the request and still read the answer.
            .half_close(true);
        Ok(ListenerCtx {
            name: settings.name.as_str().into(),
            metrics,
            tls: settings
                .tls
                .as_ref()
                .map(|t| ServerTls::new(t, settings.http2))
                .transpose()?,
            redirect_https: settings.redirect_https,
            limit,
            tcp,
            proxy_protocol: settings.proxy_protocol,
            trusted: (!settings.trusted_proxies.is_empty())
                .then(|| Arc::new(settings.trusted_proxies.clone())),
            tls_handshake: timeouts.tls_handshake,
            request_header: timeouts.request_header,
            http,
            h2: settings.http2.then(|| http2::builder(http2, limits)),
        })
    }
}

impl ListenerCtx {
    /// How long a client has from accept to send its first request head.
    pub fn request_header(&self) -> Duration {
        self.request_header
    }
}

/// The largest head hyper reads before answering 431 itself.
fn hyper_head_limit(limits: &Limits) -> usize {
    limits.max_request_header_bytes * 2
}

impl fmt::Display for ListenerCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// The answer to plain HTTP sent to a TLS port.
const PLAIN_HTTP_ON_TLS: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 47\r\nconnection: close\r\n\r\nthis port speaks TLS: use https:// or wss://\r\n\r\n";

/// Where and when a connection was accepted.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    /// The client (as its PROXY header named it, where it sent one).
    pub client: SocketAddr,
    /// The address it connected to, when the listener's own says it (a listener
    /// bound to one address); on a wildcard bind it is asked of the socket.
    pub local: Option<SocketAddr>,
    pub at: tokio::time::Instant,
}

/// Handles one accepted connection until it closes, upgrades, or shutdown ends it.
pub async fn handle(
    stream: TcpStream,
    accepted: Accepted,
    ctx: Arc<ListenerCtx>,
    proxy: Arc<Proxy>,
    shutdown: Shutdown,
    guard: ConnGuard,
) {
    // A client has `request_header` from accept to send its first request head,
    // whatever comes before it (a PROXY header, a TLS handshake, the wait for the
    // HTTP/2 preface).
    let Accepted { client, local, at } = accepted;
    let head_deadline = at + ctx.request_header;
    let Some(tls) = &ctx.tls else {
        let local = local_of(&stream, local);
        let protocol = match &ctx.h2 {
            None => Protocol::Http1,
            Some(_) => {
                let sniffed = tokio::select! {
                    p = http2::sniff_preface(&stream, head_deadline.saturating_duration_since(tokio::time::Instant::now())) => p,
                    () = shutdown.stopped() => return,
                };
                match sniffed {
                    Some(p) => p,
                    None => {
                        tracing::debug!(%client, listener = %ctx.name, "no request in time: closed");
                        return;
                    }
                }
            }
        };
        let info = conn_info(client, local, &ctx, false, protocol, guard);
        return serve(stream, info, &ctx, head_deadline, proxy, shutdown).await;
    };
    // Boxed: a TLS handshake's state and a TLS connection's (rustls' buffers and
    // keys inline) would otherwise size every plain connection's task as well: 9.6 KB
    // where a plain one needs 3.4, moved whole into its task at spawn.
    Box::pin(handle_tls(
        stream, accepted, tls, &ctx, proxy, shutdown, guard,
    ))
    .await;
}

/// `handle`'s TLS half: the handshake, then the connection in the protocol ALPN chose.
async fn handle_tls(
    stream: TcpStream,
    accepted: Accepted,
    tls: &ServerTls,
    ctx: &ListenerCtx,
    proxy: Arc<Proxy>,
    shutdown: Shutdown,
    guard: ConnGuard,
) {
    let Accepted { client, local, at } = accepted;
    let local = local_of(&stream, local);
    let head_deadline = at + ctx.request_header;
    let handshake_deadline = head_deadline.min(at + ctx.tls_handshake);
    let handshake = tokio::time::timeout_at(handshake_deadline, accept_tls(stream, tls));
    let stream = tokio::select! {
        r = handshake => match r {
            Ok(Ok(s)) => s,
            Ok(Err(reason)) => {
                ctx.metrics.tls_error.inc();
                tracing::debug!(%client, listener = %ctx.name, reason, "TLS handshake failed");
                return;
            }
            Err(_) => {
                ctx.metrics.tls_error.inc();
                tracing::debug!(%client, listener = %ctx.name, "TLS handshake timed out");
                return;
            }
        },
        () = shutdown.stopped() => return,
    };
    ctx.metrics.tls_ok.inc();
    // ALPN decides: only a client that chose h2 speaks it.
    let protocol = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") if ctx.h2.is_some() => Protocol::H2,
        _ => Protocol::Http1,
    };
    let info = conn_info(client, local, ctx, true, protocol, guard);
    serve(stream, info, ctx, head_deadline, proxy, shutdown).await;
}

/// The connection's local address: the listener's when it is bound to one, else the
/// socket's own.
fn local_of(stream: &TcpStream, local: Option<SocketAddr>) -> SocketAddr {
    local.unwrap_or_else(|| {
        stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    })
}

fn conn_info(
    client: SocketAddr,
    local: SocketAddr,
    ctx: &ListenerCtx,
    tls: bool,
    protocol: Protocol,
    guard: ConnGuard,
) -> ConnInfo {
    match protocol {
        Protocol::Http1 => ctx.metrics.http1.inc(),
        Protocol::H2 => ctx.metrics.h2.inc(),
    }
    ConnInfo {
        client,
        local,
        listener: ctx.name.clone(),
        redirect_https: ctx.redirect_https,
        forwarded: Forwarded::new(client.ip(), tls),
        trusted: ctx
            .trusted
            .as_ref()
            .filter(|t| t.contains(client.ip()))
            .cloned(),
        tls,
        protocol,
        streams: Streams::default(),
        guard,
    }
}

/// Completes a server TLS handshake. A client that speaks plain HTTP to the TLS port
/// is told so in plain HTTP, then closed.
async fn accept_tls(
    mut stream: TcpStream,
    tls: &ServerTls,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, String> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(0) => return Err("closed before the handshake".to_owned()),
        Ok(_) => {}
        Err(e) => return Err(e.to_string()),
    }
    // Every TLS connection starts with a handshake record (content type 22).
    if first[0] != 0x16 {
        if first[0].is_ascii_uppercase() {
            // Read what the client sent, so closing sends a FIN the client can read
            // the answer before, not a reset.
            let mut sink = [0u8; 4096];
            let _ = stream.try_read(&mut sink);
            let _ = stream.write_all(PLAIN_HTTP_ON_TLS).await;
            let _ = stream.shutdown().await;
            return Err("plain HTTP sent to the TLS port".to_owned());
        }
        return Err(format!(
            "not a TLS handshake (first byte {:#04x})",
            first[0]
        ));
    }
    tls.acceptor()
        .accept(stream)
        .await
        .map_err(|e| e.to_string())
}

/// Serves a connection in its protocol until it closes (or, on HTTP/1.1, upgrades).
/// The first request head must arrive by `head_deadline`.
async fn serve<I>(
    io: I,
    info: ConnInfo,
    ctx: &ListenerCtx,
    head_deadline: tokio::time::Instant,
    proxy: Arc<Proxy>,
    shutdown: Shutdown,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = Arc::new(info);
    let first_head = head_deadline.saturating_duration_since(tokio::time::Instant::now());
    if let (Protocol::H2, Some(h2)) = (info.protocol, &ctx.h2) {
        let idle = http2::Idle {
            first: first_head,
            limit: ctx.request_header,
        };
        return http2::serve(io, info, h2, idle, proxy, shutdown).await;
    }
    let service = {
        let info = info.clone();
        service_fn(move |req| {
            let proxy = proxy.clone();
            let info = info.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req, &info).await) }
        })
    };
    // hyper's header timer covers each head, the first one too; where the time since
    // accept already used part of it (a TLS handshake), the first gets what is left.
    // The builder is copied only then: a plain connection serves with the listener's.
    let shortened;
    let http = if first_head + Duration::from_millis(1) < ctx.request_header {
        let mut b = ctx.http.clone();
        b.header_read_timeout(first_head.max(Duration::from_millis(1)));
        shortened = b;
        &shortened
    } else {
        &ctx.http
    };
    let conn = http
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = shutdown.draining() => {
            // Finish the request in flight (its response says `Connection: close`),
            // then close; an idle connection closes at once.
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => r,
                () = shutdown.stopped() => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        log_connection_error(&e, &info);
    }
}

fn log_connection_error(e: &hyper::Error, info: &ConnInfo) {
    if e.is_parse_too_large() {
        tracing::info!(client = %info.client, listener = %info.listener, "request head too large: answered 431");
    } else if e.is_timeout() {
        // Also how idle keep-alive connections end, so not worth more than debug.
        tracing::debug!(client = %info.client, listener = %info.listener, "no request head in time: closed");
    } else if e.is_parse() {
        tracing::info!(client = %info.client, listener = %info.listener, error = %e, "malformed request: answered 400");
    } else {
        tracing::debug!(client = %info.client, listener = %info.listener, error = %e, "connection ended with an error");
    }
}
