//! HTTP/2 to upstream servers: a few multiplexed connections per server, opened as
//! streams need them, and requests sent on them.
//!
//! A connection that received GOAWAY or died is dropped from the pool at once; a
//! request it had not started goes to a fresh connection, one it had started fails
//! (it may have had effects, so it is never sent twice). PINGs on every connection,
//! idle or not, find a server that stopped answering; that counts as a failure of the
//! server like a failed connect.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::{Answer, Checkin, LoadGuard, Pooled, Server, Upstream};
use crate::body::RequestBody;
use crate::error::ProxyError;

/// Streams sluice opens at once on one connection before it opens another. RFC 9113
/// §6.5.2 recommends servers allow at least 100; a server that allows fewer makes the
/// extra streams wait in h2 for a free one, which is still within its limit.
const STREAMS_PER_CONNECTION: usize = 100;

/// How often an upstream connection is PINGed, and how long an answer may take.
const PING_INTERVAL: Duration = Duration::from_secs(20);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Attempts on fresh connections for one request that no connection started (each
/// one having gone away first); a server that keeps doing that is failing.
const MAX_UNSTARTED_RETRIES: usize = 3;

/// A server's open HTTP/2 connections.
#[derive(Default)]
pub(super) struct Pool {
    conns: Mutex<Vec<Conn>>,
    /// Held while a new connection is opened: requests that find no room meanwhile
    /// wait for it and share it, rather than each opening its own (a burst of 500
    /// calls opened 42 to 322 connections to one server before this; HAProxy 6).
    opening: tokio::sync::Mutex<()>,
}

/// One multiplexed connection and the streams sluice has open on it.
#[derive(Clone)]
struct Conn {
    sender: SendRequest<RequestBody>,
    streams: Arc<AtomicUsize>,
    shared: Arc<Shared>,
}

type Connection = http2::Connection<TokioIo<crate::net::Stream>, RequestBody, TokioExecutor>;

/// The connection itself, driven by its own task and asked about the server's
/// SETTINGS by requests. hyper shows the SETTINGS only on the connection, and h2
/// reads them in a task of its own that does not wake this one, so they are read
/// under the lock when needed rather than copied out when it runs.
struct Shared {
    /// `None` once the connection has ended: dropping it is what tells its senders
    /// (and so the pool) that it is closed.
    conn: Mutex<Option<Pin<Box<Connection>>>>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS as last seen by the driving task.
    max_streams: AtomicUsize,
}

impl Conn {
    /// Streams this connection may carry at once.
    fn room(&self) -> usize {
        self.shared
            .max_streams
            .load(Ordering::Relaxed)
            .min(STREAMS_PER_CONNECTION)
    }

    /// Whether the server's SETTINGS enabled extended CONNECT (RFC 8441).
    fn extended_connect(&self) -> bool {
        let conn = self.shared.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.as_ref()
            .is_some_and(|c| c.as_ref().get_ref().is_extended_connect_protocol_enabled())
    }
}

/// One stream's place on its connection, given back when its response is done (or
/// its tunnel ends).
pub(super) struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// Takes the connection out of use for new streams: it is going away. The
    /// count is pushed past any limit; the streams still open finish.
    fn retire(&self) {
        self.0.fetch_add(GONE, Ordering::AcqRel);
    }
}

/// Added to a connection's stream count to retire it.
const GONE: usize = usize::MAX / 2;

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

/// Drives a connection until it ends.
struct Driven(Arc<Shared>);

impl Future for Driven {
    type Output = Result<(), hyper::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = self.0.conn.lock().unwrap_or_else(|p| p.into_inner());
        let Some(conn) = slot.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let out = conn.as_mut().poll(cx);
        if out.is_ready() {
            *slot = None;
        } else {
            let max = conn.as_ref().get_ref().current_max_send_streams();
            self.0.max_streams.store(max, Ordering::Relaxed);
        }
        out
    }
}

impl Pool {
    /// An open connection with room for another stream within the server's limit
    /// (and, for a WebSocket, one whose server takes extended CONNECT), and that
    /// stream's slot.
    fn take(&self, websocket: bool) -> Option<(Conn, Slot)> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        // A closed connection (GOAWAY, an error, a failed PING) leaves at once.
        conns.retain(|c| !c.sender.is_closed());
        let c = conns.iter().find(|c| {
            c.streams.load(Ordering::Acquire) < c.room() && (!websocket || c.extended_connect())
        })?;
        c.streams.fetch_add(1, Ordering::AcqRel);
        Some((c.clone(), Slot(c.streams.clone())))
    }

    /// Adds a new connection; returns a slot for the stream that opened it.
    fn add(&self, conn: &Conn) -> Slot {
        conn.streams.fetch_add(1, Ordering::AcqRel);
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn.clone());
        Slot(conn.streams.clone())
    }

    /// Drops every connection (a reload changed how they are made).
    pub(super) fn clear(&self) {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// The HTTP/2 client settings every upstream connection gets.
pub(super) fn builder() -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT)
        .keep_alive_while_idle(true)
        // One stream that is read slowly must not stall the others on the connection:
        // each stream gets its own window, and the connection's holds several.
        .initial_stream_window_size(256 * 1024)
        .initial_connection_window_size(4 * 1024 * 1024);
    b
}

/// A bodyless request's head, to send it again.
fn head_of(req: &Request<RequestBody>) -> http::request::Parts {
    let mut head = Request::new(());
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req.uri().clone();
    *head.version_mut() = req.version();
    *head.headers_mut() = req.headers().clone();
    head.into_parts().0
}

/// Whether an upstream's error says the stream was never processed: refused, or
/// beyond the last stream a GOAWAY let through. Such a request may be sent again.
fn unprocessed(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return (h2.is_go_away() && h2.is_remote())
                || h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = s.source();
    }
    false
}

impl Upstream {
    /// Sends an ordinary request to the first server of `plan` that can take it, over
    /// HTTP/2, and waits up to `timeout` for the response head.
    pub(super) async fn send_h2(
        &self,
        mut req: Request<RequestBody>,
        plan: &[usize],
        timeout: Duration,
    ) -> Result<Answer, ProxyError> {
        let mut last = None;
        let mut full = 0;
        for &i in plan {
            let server = &self.servers[i];
            let Some(load) = server.try_load(self.max_per_server) else {
                full += 1;
                continue;
            };
            self.to_h2(server, &mut req);
            let mut fresh_tries = 0;
            // Pooled connections found closed when used are skipped, a bounded number
            // of times (each leaves the pool as it is found).
            let mut stale = 0;
            loop {
                let (mut sender, slot, fresh) = if let Some((c, slot)) = server.h2.take(false) {
                    (c.sender, slot, false)
                } else {
                    let _opening = server.h2.opening.lock().await;
                    if let Some((c, slot)) = server.h2.take(false) {
                        (c.sender, slot, false)
                    } else {
                        // Boxed, as in `send`: opening is rare, its state large.
                        match Box::pin(self.open_h2(server)).await {
                            Ok(c) => {
                                fresh_tries += 1;
                                let slot = server.h2.add(&c);
                                (c.sender, slot, true)
                            }
                            Err(e) => {
                                tracing::warn!(upstream = %self.name, server = %server.name, error = %e, "upstream connect failed");
                                last = Some(e);
                                break;
                            }
                        }
                    }
                };
                if sender.ready().await.is_err() {
                    if !fresh && stale < STREAMS_PER_CONNECTION {
                        stale += 1;
                        continue;
                    }
                    last = Some(std::io::Error::other("HTTP/2 connection closed at once"));
                    break;
                }
                // A request without a body can be sent again if the server refuses its
                // stream unprocessed; one with a body has given it away.
                let again = http_body::Body::is_end_stream(req.body()).then(|| head_of(&req));
                let sent = tokio::time::timeout(timeout, sender.try_send_request(req))
                    .await
                    .map_err(|_| ProxyError::ResponseTimeout(timeout))?;
                match sent {
                    Ok(response) => {
                        return Ok(Answer {
                            response,
                            checkin: Checkin {
                                pooled: Pooled::H2(slot),
                                load,
                            },
                        });
                    }
                    Err(mut e) => {
                        let unsent = e.take_message();
                        let error = e.into_error();
                        let refused = unprocessed(&error);
                        if refused {
                            // GOAWAY, or a refused stream: no new stream goes there.
                            slot.retire();
                        }
                        match (unsent, again) {
                            // Not started: the connection went away first, or the
                            // server refused the stream unprocessed (RFC 9113 §8.7).
                            (Some(r), _) if fresh_tries < MAX_UNSTARTED_RETRIES => req = r,
                            (None, Some(head))
                                if refused && fresh_tries < MAX_UNSTARTED_RETRIES =>
                            {
                                req = Request::from_parts(head, RequestBody::empty());
                            }
                            _ => return Err(ProxyError::Upstream(error)),
                        }
                        tracing::debug!(server = %server.name, "HTTP/2 stream refused unprocessed; sending it on another connection");
                    }
                }
            }
        }
        Err(self.no_server(last, full, plan.len()))
    }

    /// Makes an HTTP/1.1-shaped request one for HTTP/2: the target in absolute form
    /// (`:scheme`, `:authority`), the host taken from `Host`, which HTTP/2 replaces.
    /// Done again for each server tried, which keeps the authority made the first time.
    fn to_h2(&self, server: &Server, req: &mut Request<RequestBody>) {
        let scheme = if self.tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let host = req.headers_mut().remove(http::header::HOST);
        let authority = match (req.uri().authority(), host) {
            (Some(a), _) => Some(a.clone()),
            (None, Some(h)) => Authority::try_from(h.as_bytes()).ok(),
            (None, None) => None,
        }
        .or_else(|| Authority::try_from(server.name.as_bytes()).ok());
        let mut parts = req.uri().clone().into_parts();
        parts.scheme = Some(scheme);
        parts.authority = authority;
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        } else {
            // Not an authority: keep the Host header for the server to judge.
            req.headers_mut()
                .insert(http::header::HOST, server.host.clone());
        }
        *req.version_mut() = Version::HTTP_2;
    }

    /// Opens an HTTP/2 connection to `server` and starts driving it.
    async fn open_h2(&self, server: &Arc<Server>) -> std::io::Result<Conn> {
        // HTTP/2 upstreams never send PROXY headers (configuration refuses it).
        let stream = self.open(server, None).await?;
        let (sender, conn) = self
            .h2
            .handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        let shared = Arc::new(Shared {
            conn: Mutex::new(Some(Box::pin(conn))),
            // Until the server's SETTINGS say otherwise: h2 holds back streams past
            // the server's limit until others end.
            max_streams: AtomicUsize::new(STREAMS_PER_CONNECTION),
        });
        let conn = Driven(shared.clone());
        let server = server.clone();
        let (max_fails, fail_timeout) = (self.max_fails, self.fail_timeout);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                if e.is_timeout() {
                    // A PING went unanswered: the server is alive enough to have
                    // accepted, not to serve.
                    tracing::warn!(server = %server.name, "upstream HTTP/2 connection stopped answering PINGs");
                    server.connect_failed(max_fails, fail_timeout);
                } else {
                    tracing::debug!(server = %server.name, error = %e, "upstream HTTP/2 connection ended");
                }
            }
        });
        Ok(Conn {
            sender,
            streams: Arc::new(AtomicUsize::new(0)),
            shared,
        })
    }

    /// Opens a WebSocket to the first server of `plan` that can take one, as an
    /// extended CONNECT (RFC 8441), and waits for the response head. Only a server
    /// whose SETTINGS enabled extended CONNECT is sent one: sending `:protocol` to
    /// one that did not is a protocol error.
    pub(super) async fn send_connect_h2(
        &self,
        mut req: Request<RequestBody>,
        plan: &[usize],
    ) -> Result<(Response<Incoming>, LoadGuard), ProxyError> {
        let mut last = None;
        let mut full = 0;
        for &i in plan {
            let server = &self.servers[i];
            let Some(load) = server.try_load(self.max_per_server) else {
                full += 1;
                continue;
            };
            self.to_h2(server, &mut req);
            // The HTTP/1.1 handshake the request service made becomes RFC 8441's:
            // CONNECT with `:protocol`, without HTTP/1.1's upgrade headers (which
            // HTTP/2 forbids) and key (which it does not use).
            *req.method_mut() = Method::CONNECT;
            for name in [
                http::header::CONNECTION,
                http::header::UPGRADE,
                http::header::SEC_WEBSOCKET_KEY,
            ] {
                req.headers_mut().remove(name);
            }
            req.extensions_mut()
                .insert(hyper::ext::Protocol::from_static("websocket"));
            let (conn, slot) = match server.h2.take(true) {
                Some(pair) => pair,
                None => {
                    let conn = match self.open_h2(server).await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(upstream = %self.name, server = %server.name, error = %e, "upstream connect failed");
                            last = Some(e);
                            continue;
                        }
                    };
                    // The server's SETTINGS come first on a new connection, within a
                    // round trip; one that has not enabled extended CONNECT by the
                    // connect timeout will not. Nothing wakes a waiter when they are
                    // read, so it looks again at growing intervals.
                    let enabled = async {
                        let mut pause = Duration::from_millis(1);
                        while !conn.extended_connect() {
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_millis(100));
                        }
                    };
                    if tokio::time::timeout(self.timeouts.connect, enabled)
                        .await
                        .is_err()
                    {
                        return Err(ProxyError::NoExtendedConnect);
                    }
                    let slot = server.h2.add(&conn);
                    (conn, slot)
                }
            };
            let mut sender = conn.sender;
            sender.ready().await.map_err(ProxyError::Upstream)?;
            let response =
                tokio::time::timeout(self.timeouts.upstream_response, sender.send_request(req))
                    .await
                    .map_err(|_| ProxyError::ResponseTimeout(self.timeouts.upstream_response))?
                    .map_err(ProxyError::Upstream)?;
            // The tunnel holds its stream's place on the connection for its life.
            return Ok((response, load.with_slot(slot)));
        }
        Err(self.no_server(last, full, plan.len()))
    }
}
