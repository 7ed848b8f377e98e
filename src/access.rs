//! The access log: one structured line per HTTP request, written when its response
//! has been sent, and one per tunnel, written when it ends.
//!
//! Lines are tracing events with target `access` at INFO, so they take the log format
//! of the rest (`[log] format`) and can be filtered with `RUST_LOG` (`access=off`).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::{HeaderValue, Method, Uri};

/// The client as an access line names it.
#[derive(Debug, Clone, Copy)]
pub enum Client {
    /// The connection's peer (or the address its PROXY header gave), with its port.
    Conn(SocketAddr),
    /// The address a trusted proxy named in its forwarding headers; no port.
    Named(IpAddr),
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Client::Conn(a) => a.fmt(f),
            Client::Named(ip) => ip.fmt(f),
        }
    }
}

/// What an access line says of a request, gathered as the request is served.
pub struct Entry {
    pub started: Instant,
    pub listener: Arc<str>,
    pub client: Client,
    /// The request's `X-Request-Id`.
    pub request_id: HeaderValue,
    /// The client connection's HTTP version: `http1` or `h2`.
    pub protocol: &'static str,
    pub method: Method,
    pub host: Option<HeaderValue>,
    pub uri: Uri,
    pub with_query: bool,
    pub route: Option<Arc<str>>,
    pub server: Option<Arc<str>>,
    pub status: u16,
    /// A gRPC call's status, from the response head or its trailers.
    pub grpc_status: Option<u16>,
    /// Request body bytes, counted as the upstream reads them.
    pub bytes_in: Arc<AtomicU64>,
}

impl Entry {
    fn path(&self) -> &str {
        match (self.with_query, self.uri.path_and_query()) {
            (true, Some(pq)) => pq.as_str(),
            _ => self.uri.path(),
        }
    }

    /// Writes the line for a finished HTTP request.
    pub fn finish(self, bytes_out: u64) {
        let bytes_in = self.bytes_in.load(Ordering::Relaxed);
        self.write("http", bytes_in, bytes_out, None);
    }

    /// Writes the line for a finished tunnel: its bytes each way and why it ended.
    pub fn finish_tunnel(self, t: TunnelEnd<'_>) {
        self.write(
            "tunnel",
            t.client_to_upstream,
            t.upstream_to_client,
            Some(&t),
        );
    }

    fn write(&self, kind: &str, bytes_in: u64, bytes_out: u64, t: Option<&TunnelEnd<'_>>) {
        tracing::info!(
            target: "access",
            kind,
            listener = &*self.listener,
            client = %self.client,
            request_id = self.request_id.to_str().unwrap_or("-"),
            protocol = self.protocol,
            method = %self.method,
            host = self.host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("-"),
            path = self.path(),
            route = self.route.as_deref().unwrap_or("-"),
            server = self.server.as_deref().unwrap_or("-"),
            status = self.status,
            grpc_status = self.grpc_status,
            bytes_in,
            bytes_out,
            end = t.map(|t| t.end),
            close_code = t.and_then(|t| t.close.map(|c| c.0)),
            close_from = t.and_then(|t| t.close.map(|c| c.1)),
            messages_in = t.and_then(|t| t.messages.map(|m| m[0])),
            messages_out = t.and_then(|t| t.messages.map(|m| m[1])),
            // Whole microseconds, so that the figure prints short (5.538, not
            // 5.538012999999999).
            duration_ms = self.started.elapsed().as_micros() as f64 / 1000.0,
        );
    }
}

/// How a tunnel ended, for its access line.
pub struct TunnelEnd<'a> {
    pub client_to_upstream: u64,
    pub upstream_to_client: u64,
    /// Why it ended.
    pub end: &'a str,
    /// With frame tracking: the first Close's code and sender (client, upstream,
    /// sluice), when there was one.
    pub close: Option<(u16, &'static str)>,
    /// With frame tracking: messages client to upstream (`messages_in`) and back.
    pub messages: Option<[u64; 2]>,
}
