//! One client connection: HTTP/1.1 with upgrades, under the header timeout and size
//! limit, closed gracefully when the gateway drains.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::config::{Limits, Timeouts};
use crate::headers::Forwarded;
use crate::metrics::ListenerMetrics;
use crate::proxy::Proxy;
use crate::shutdown::Shutdown;

/// What every connection of one listener shares.
pub struct ListenerCtx {
    pub name: String,
    pub metrics: ListenerMetrics,
    http: http1::Builder,
}

impl ListenerCtx {
    pub fn new(
        name: String,
        metrics: ListenerMetrics,
        timeouts: &Timeouts,
        limits: &Limits,
    ) -> Self {
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(timeouts.request_header)
            // hyper answers 431 itself when a head passes this.
            .max_header_size(limits.max_request_header_bytes)
            // hyper's floor is 8 KiB; the read buffer must hold a whole head.
            .max_buf_size(limits.max_request_header_bytes.max(8192) + 1024)
            // A client may end its side after the request and still read the answer.
            .half_close(true);
        ListenerCtx {
            name,
            metrics,
            http,
        }
    }
}

/// One client connection's identity. Tunnels keep it alive after hyper has let the
/// connection go, so the connection limit and gauge count tunnels too.
pub struct ConnInfo {
    pub client: SocketAddr,
    pub listener: Arc<ListenerCtx>,
    pub forwarded: Forwarded,
    _permit: OwnedSemaphorePermit,
}

impl fmt::Display for ListenerCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Drop for ConnInfo {
    fn drop(&mut self) {
        self.listener.metrics.active.dec();
    }
}

/// Serves one accepted connection until it closes, upgrades, or shutdown ends it.
pub async fn serve(
    stream: TcpStream,
    client: SocketAddr,
    ctx: Arc<ListenerCtx>,
    proxy: Arc<Proxy>,
    shutdown: Shutdown,
    permit: OwnedSemaphorePermit,
) {
    ctx.metrics.total.inc();
    ctx.metrics.active.inc();
    let info = Arc::new(ConnInfo {
        client,
        listener: ctx.clone(),
        forwarded: Forwarded::new(client.ip(), false),
        _permit: permit,
    });
    let service = {
        let info = info.clone();
        service_fn(move |req| {
            let proxy = proxy.clone();
            let info = info.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req, &info).await) }
        })
    };
    let conn = ctx
        .http
        .serve_connection(TokioIo::new(stream), service)
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
