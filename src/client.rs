//! A client connection's identity, as every layer that serves it sees it: who it is,
//! which listener took it, how it speaks, and its place under the connection limits.
//! Made by [`crate::conn`], read by the request service and kept by tunnels.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::headers::Forwarded;
use crate::limits::Admission;
use crate::metrics::ListenerMetrics;
use crate::trust::TrustedProxies;

/// The HTTP version a client connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (or 1.0).
    Http1,
    /// HTTP/2, chosen by ALPN on TLS listeners or by the prior-knowledge preface.
    H2,
}

impl Protocol {
    /// The label in metrics and access lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2 => "h2",
        }
    }
}

/// A client connection's place under the limits, and in the gauges; held from
/// accept until the connection, or the tunnel it became, is gone.
pub struct ConnGuard {
    _admission: Admission,
    active: prometheus::IntGauge,
}

impl ConnGuard {
    pub fn new(admission: Admission, metrics: &ListenerMetrics) -> ConnGuard {
        metrics.total.inc();
        metrics.active.inc();
        ConnGuard {
            _admission: admission,
            active: metrics.active.clone(),
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.active.dec();
    }
}

/// One client connection's identity. Tunnels keep it alive after hyper has let the
/// connection go, so the connection limit and gauge count tunnels too.
pub struct ConnInfo {
    pub client: SocketAddr,
    /// The address the client connected to (the listener's).
    pub local: SocketAddr,
    /// The listener's name, for logs and metrics.
    pub listener: Arc<str>,
    /// Set when every request is answered with a redirect to HTTPS on this port.
    pub redirect_https: Option<u16>,
    pub forwarded: Forwarded,
    /// Set when the peer is one of the listener's trusted proxies: its requests name
    /// their client, and their chain of forwarding headers is kept.
    pub trusted: Option<Arc<TrustedProxies>>,
    /// Whether the client connected with TLS.
    pub tls: bool,
    pub protocol: Protocol,
    /// The HTTP/2 streams open on the connection (unused on HTTP/1.1).
    pub streams: Streams,
    pub(crate) guard: ConnGuard,
}

/// The streams open on an HTTP/2 connection, and since when there have been none:
/// what tells an idle connection from a busy one (hyper's HTTP/2 server has no idle
/// or header timeout of its own). A stream counts from its request until its response
/// body is done, or, once it became a tunnel, until the tunnel ends.
pub struct Streams {
    open: AtomicUsize,
    started: Instant,
    /// When the count last fell to zero, in milliseconds after `started`.
    idle_since_ms: AtomicU64,
}

impl Default for Streams {
    fn default() -> Self {
        Streams {
            open: AtomicUsize::new(0),
            started: Instant::now(),
            idle_since_ms: AtomicU64::new(0),
        }
    }
}

impl Streams {
    /// Whether any stream was ever opened.
    pub fn ever_opened(&self) -> bool {
        self.open.load(Ordering::Acquire) > 0 || self.idle_since_ms.load(Ordering::Relaxed) > 0
    }

    /// How long the connection has had no stream open; `None` while one is.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed));
        Some(self.started.elapsed().saturating_sub(since))
    }
}

/// One open stream of an HTTP/2 connection; the count falls when it is dropped.
pub struct StreamGuard(Arc<ConnInfo>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let streams = &self.0.streams;
        // Never 0, which means "no stream yet".
        let ms = (streams.started.elapsed().as_millis() as u64).max(1);
        streams.idle_since_ms.store(ms, Ordering::Relaxed);
        streams.open.fetch_sub(1, Ordering::Release);
    }
}

/// What a tunnel keeps of its client connection: its place under the limits and in
/// the gauges.
pub enum Held {
    /// The connection's state was the tunnel's alone: only the guard is kept.
    Guard(ConnGuard),
    /// Still shared (hyper had not let go yet): all of it is kept.
    Shared(Arc<ConnInfo>),
    /// A stream of an HTTP/2 connection, which lives on beside it: the tunnel keeps
    /// the connection busy (and its state) until it ends.
    Stream(StreamGuard),
}

impl ConnInfo {
    /// Counts a stream open until the guard is dropped.
    pub fn open_stream(conn: &Arc<ConnInfo>) -> StreamGuard {
        conn.streams.open.fetch_add(1, Ordering::AcqRel);
        StreamGuard(conn.clone())
    }

    /// Trades a connection's state for the part a tunnel needs, freeing the rest
    /// when the tunnel holds the only reference. Returns the client's address too.
    pub fn into_held(conn: Arc<ConnInfo>) -> (SocketAddr, Held) {
        let client = conn.client;
        if conn.protocol == Protocol::H2 {
            return (client, Held::Stream(ConnInfo::open_stream(&conn)));
        }
        match Arc::try_unwrap(conn) {
            Ok(info) => (client, Held::Guard(info.guard)),
            Err(shared) => (client, Held::Shared(shared)),
        }
    }
}
