//! A client connection's identity, as every layer that serves it sees it: who it is,
//! which listener took it, how it speaks, and its place under the connection limits.
//! Made by [`crate::conn`], read by the request service and kept by tunnels.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::headers::Forwarded;
use crate::limits::Admission;
use crate::metrics::ListenerMetrics;

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
    /// The listener's name, for logs and metrics.
    pub listener: Arc<str>,
    /// Set when every request is answered with a redirect to HTTPS on this port.
    pub redirect_https: Option<u16>,
    pub forwarded: Forwarded,
    /// Whether the client connected with TLS.
    pub tls: bool,
    pub protocol: Protocol,
    pub(crate) guard: ConnGuard,
}

/// What a tunnel keeps of its client connection: its place under the limits and in
/// the gauges.
pub enum Held {
    /// The connection's state was the tunnel's alone: only the guard is kept.
    Guard(ConnGuard),
    /// Still shared (hyper had not let go yet, or other streams of an HTTP/2
    /// connection use it): all of it is kept.
    Shared(Arc<ConnInfo>),
}

impl ConnInfo {
    /// Trades a connection's state for the part a tunnel needs, freeing the rest
    /// when the tunnel holds the only reference. Returns the client's address too.
    pub fn into_held(conn: Arc<ConnInfo>) -> (SocketAddr, Held) {
        let client = conn.client;
        match Arc::try_unwrap(conn) {
            Ok(info) => (client, Held::Guard(info.guard)),
            Err(shared) => (client, Held::Shared(shared)),
        }
    }
}
