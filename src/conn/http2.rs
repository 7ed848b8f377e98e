//! HTTP/2 toward clients: the server's settings, telling a prior-knowledge HTTP/2
//! client from an HTTP/1.1 one on plain listeners, and serving a connection with the
//! timeouts hyper's HTTP/2 server lacks.
//!
//! The abuse HTTP/2 invites is bounded so that it costs only the abuser's connection:
//! Rapid Reset (CVE-2023-44487) by h2's cap on streams reset before they were served,
//! MadeYouReset (CVE-2025-8671) by the cap on streams sluice itself had to reset,
//! CONTINUATION floods and HPACK bombs by the header list limit (the same bytes as
//! an HTTP/1.1 head may have), SETTINGS and PING floods by h2 answering at most one
//! of each at a time and reading nothing more until it is written, tiny windows and
//! slow readers by the per-stream send buffer, and a connection that opens and then
//! says nothing by the idle timer here.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::client::{ConnInfo, Protocol, StreamGuard};
use crate::config::{Http2, Limits};
use crate::proxy::{ClientBody, Proxy};
use crate::shutdown::Shutdown;

/// hyper's HTTP/2 server, configured once per listener.
pub type Builder = hyper::server::conn::http2::Builder<TokioExecutor>;

/// What every HTTP/2 connection starts with (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Response bytes h2 may hold per stream beyond what the client's window lets it
/// send: a client that stops reading (or keeps a tiny window) holds at most this per
/// stream, `max_concurrent_streams` times per connection, before the upstream's body
/// is no longer read. One TLS record's worth keeps a stream that reads at full speed.
const SEND_BUFFER: usize = 64 * 1024;

/// Streams the client reset before sluice answered them, queued at once, before the
/// connection is ended with GOAWAY (Rapid Reset). h2's own default.
const MAX_PENDING_RESETS: usize = 20;

/// Streams sluice had to reset for the client's errors before the connection is ended
/// with GOAWAY (MadeYouReset: a client provoking resets to dodge the concurrency cap).
const MAX_LOCAL_RESETS: usize = 256;

/// The server's settings for one listener.
pub fn builder(http2: &Http2, limits: &Limits) -> Builder {
    let mut b = Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        // RFC 8441: WebSockets over HTTP/2 arrive as extended CONNECT.
        .enable_connect_protocol()
        .max_concurrent_streams(http2.max_concurrent_streams)
        // The decoded header list (HPACK's output, CONTINUATION frames included) may
        // be as large as an HTTP/1.1 request head, no larger.
        .max_header_list_size(limits.max_request_header_bytes as u32)
        .keep_alive_interval(http2.keepalive_interval)
        .keep_alive_timeout(http2.keepalive_timeout)
        .initial_stream_window_size(http2.stream_window)
        .initial_connection_window_size(http2.connection_window)
        .max_send_buf_size(SEND_BUFFER)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_RESETS);
    b
}

/// On a plain listener that also takes HTTP/2, reads (without consuming) enough of
/// what the client sent to tell the HTTP/2 preface from an HTTP/1.1 request. `None`
/// when the client closed, failed, or sent nothing conclusive within `limit`. A client
/// that sends part of the preface and stalls costs nothing while it waits
/// ([`crate::net::peek_until`]).
pub async fn sniff_preface(stream: &TcpStream, limit: Duration) -> Option<Protocol> {
    let sniff = crate::net::peek_until(stream, PREFACE.len(), |bytes| {
        if !PREFACE.starts_with(bytes) {
            Some(Protocol::Http1)
        } else if bytes.len() == PREFACE.len() {
            Some(Protocol::H2)
        } else {
            None
        }
    });
    tokio::time::timeout(limit, sniff).await.ok()?.ok()
}

/// How long an HTTP/2 connection may go without a stream open.
pub struct Idle {
    /// Before its first stream: what is left of `request_header` since accept.
    pub first: Duration,
    /// After each stream that ends.
    pub limit: Duration,
}

/// Serves an HTTP/2 connection until it closes. A connection with no stream open for
/// its idle limit (from its start, or since its last stream ended) gets GOAWAY: that
/// covers a client that sent the preface and nothing else, and one that stopped
/// using it.
pub async fn serve<I>(
    io: I,
    info: Arc<ConnInfo>,
    h2: &Builder,
    idle: Idle,
    proxy: Arc<Proxy>,
    shutdown: Shutdown,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let info = info.clone();
        service_fn(move |req| {
            let proxy = proxy.clone();
            let info = info.clone();
            let stream = ConnInfo::open_stream(&info);
            // Boxed: hyper spawns each stream's future as a task of its own, and
            // moving a request's whole journey into it (memmove, 3.4 % of the h2
            // row's profile) cost more than the allocation. h2load, 50 conns × 10
            // streams over TLS, three paired runs: 39.0 against 44.2 us of CPU per
            // request (2026-12-08).
            Box::pin(async move {
                let resp = proxy.handle(req, &info).await;
                Ok::<_, Infallible>(resp.map(|body| StreamBody {
                    body,
                    _stream: stream,
                }))
            })
        })
    };
    let conn = h2.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let check = tokio::time::sleep(idle.first);
    let (first, idle) = (idle.first, idle.limit);
    tokio::pin!(check);
    let mut draining = false;
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            () = check.as_mut() => {
                // Before any stream, the connection's age counts against what was
                // left of the head timeout; after, the quiet since the last one.
                let limit = if info.streams.ever_opened() { idle } else { first };
                match info.streams.idle_for() {
                    Some(quiet) if quiet >= limit => {
                        tracing::debug!(client = %info.client, listener = %info.listener, "HTTP/2 connection idle: closing");
                        conn.as_mut().graceful_shutdown();
                        // GOAWAY, then the close; a client that does not read its
                        // GOAWAY does not hold the connection longer than `idle`.
                        break tokio::select! {
                            r = conn.as_mut() => r,
                            () = tokio::time::sleep(idle) => Ok(()),
                            () = shutdown.stopped() => Ok(()),
                        };
                    }
                    Some(quiet) => check.as_mut().reset(tokio::time::Instant::now() + (limit - quiet)),
                    None => check.as_mut().reset(tokio::time::Instant::now() + idle),
                }
            }
            () = shutdown.draining(), if !draining => {
                // GOAWAY: no new streams; those open (tunnels too) run on until they
                // end or the drain period does.
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = shutdown.stopped() => break Ok(()),
        }
    };
    if let Err(e) = result {
        tracing::debug!(client = %info.client, listener = %info.listener, error = %e, "HTTP/2 connection ended with an error");
    }
}

/// A response body on an HTTP/2 stream, which holds the stream's place in the
/// connection's count until the body is done.
struct StreamBody {
    body: ClientBody,
    _stream: StreamGuard,
}

impl Body for StreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
