//! sluice: a reverse proxy and WebSocket tunneling gateway.
//!
//! Ordinary HTTP requests are proxied to upstream servers over pooled keep-alive
//! connections. A WebSocket handshake is checked, forwarded, and turned into a tunnel
//! only when the upstream answers with a valid `101 Switching Protocols`; the two
//! connections are then spliced both ways until they are done.
//!
//! # Layout
//! - [`config`]: the TOML file structs, loading, and validation into typed settings.
//! - [`gateway`]: starts everything one configuration runs; the library's entry point.
//! - [`server`]: listeners: bind, connection limit, accept with back-off.
//! - [`conn`]: one client connection: a PROXY protocol header where the listener
//!   wants one, TLS, the HTTP version (ALPN or the HTTP/2 preface), then HTTP/1.1
//!   with upgrades or HTTP/2 with its own timeouts.
//! - [`proxy`]: the request service: check, route, rewrite, forward, respond, log.
//! - [`request`]: request checks and rewriting: host, dot segments, HTTPS redirect, head.
//! - [`route`]: the immutable routing table (host, then longest path prefix).
//! - [`upstream`]: servers (addresses, load, health), connect with fail-over, pools of
//!   HTTP/1.1 connections and multiplexed HTTP/2 ones.
//! - [`balance`]: the balancing policies: weighted round robin, least connections,
//!   power of two choices, consistent hashing.
//! - [`limits`]: connection limits (process, listener, client) and the handshake rate.
//! - [`ratelimit`]: per-client connection counts and token buckets.
//! - [`origin`]: Origin allow-lists for WebSocket handshakes.
//! - [`headers`]: hop-by-hop removal and `X-Forwarded-*`.
//! - [`trust`]: trusted proxies, and the client their forwarding headers name.
//! - [`request_id`]: the `X-Request-Id` every request and tunnel carries.
//! - [`grpc`]: gRPC calls as a proxy sees them: deadlines, and the statuses sluice answers.
//! - [`handshake`]: the WebSocket handshake over HTTP/1.1 and HTTP/2 (RFC 8441):
//!   recognise, check, and check the 101.
//! - [`tunnel`]: the two-way splice with bounded buffers, half-close and idle timeout;
//!   [`tunnel::frames`] tracks where WebSocket frames begin.
//! - [`tls`]: rustls configurations: certificate loading, SNI choice, live swap, upstream TLS.
//! - [`client`]: a client connection's identity and its place under the limits.
//! - [`access`]: the access log, one line per request and per tunnel.
//! - [`body`]: the request and response bodies on their way through.
//! - [`error`]: the one proxy error type and its status mapping.
//! - [`metrics`]: the Prometheus registry and typed handles.
//! - [`net`]: TCP options both legs get, and the upstream stream (plain or TLS).
//! - [`admin`]: the status page, `/status`, `/metrics`, `/healthz`, `/readyz`.
//! - [`status`]: what the status page shows: the running shape and live counters.
//! - [`shutdown`]: drain with a grace period, counting tunnels as well as connections.
//! - [`echo`]: the built-in WebSocket echo upstream.

pub mod access;
pub mod admin;
pub mod balance;
pub mod body;
pub mod client;
pub mod config;
pub mod conn;
pub mod echo;
pub mod error;
pub mod gateway;
pub mod grpc;
pub mod handshake;
pub mod headers;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod origin;
pub mod proxy;
pub mod ratelimit;
pub mod request;
pub mod request_id;
pub mod route;
pub mod server;
pub mod shutdown;
pub mod status;
pub mod tls;
pub mod trust;
pub mod tunnel;
pub mod upstream;

pub use config::{ConfigError, Settings};
pub use gateway::{Gateway, StartError};
