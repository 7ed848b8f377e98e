//! Validated, typed settings: what the rest of sluice runs on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

// The TLS settings live beside the code that builds rustls configurations from them,
// so that `tls` needs nothing of `config`.
pub use crate::tls::{CertPaths, ListenerTls, TlsVersion, UpstreamTls};

/// A whole, valid configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`); `None` when not configured.
    pub admin: Option<SocketAddr>,
    /// When set, the admin listener wants `Authorization: Bearer TOKEN` on everything
    /// but `/healthz` and `/readyz`.
    pub admin_token: Option<String>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub http2: Http2,
    /// The `[websocket]` table: what every route's tunnels do where the route sets
    /// nothing of its own (each route has the overlaid result in
    /// [`RouteSettings::websocket`]).
    pub websocket: WebSocket,
    pub log: LogSettings,
    /// Worker threads for the runtime; `None` means one per core.
    pub workers: Option<usize>,
    pub tcp: Tcp,
    pub listeners: Vec<ListenerSettings>,
    pub routes: Vec<RouteSettings>,
    pub upstreams: Vec<UpstreamSettings>,
    /// The file these settings came from.
    pub source: PathBuf,
    /// A hash of the file's bytes, to tell configurations apart in metrics.
    pub hash: String,
}

/// Time limits; every one has a default (see [`Timeouts::default`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Upstream TCP connect, per server tried.
    pub connect: Duration,
    /// From sending a request upstream to its response head (a handshake's 101 too).
    pub upstream_response: Duration,
    /// For a client to send a complete request head. The clock starts when the
    /// connection is ready for a request, so this also closes idle keep-alive
    /// connections.
    pub request_header: Duration,
    /// A tunnel with no bytes either way for this long is closed.
    pub idle: Duration,
    /// Once one side of a tunnel has ended its stream, the tunnel is closed after this
    /// long with no bytes (or `idle`, if shorter).
    pub half_closed: Duration,
    /// On shutdown, how long open requests and tunnels may keep running.
    pub drain: Duration,
    /// For a client to complete its TLS handshake.
    pub tls_handshake: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        // The same order of magnitude as nginx's and HAProxy's defaults, with a shorter
        // header timeout: a slow request head is the cheapest attack on a proxy.
        Timeouts {
            connect: Duration::from_secs(5),
            upstream_response: Duration::from_secs(60),
            request_header: Duration::from_secs(10),
            idle: Duration::from_secs(300),
            half_closed: Duration::from_secs(30),
            drain: Duration::from_secs(30),
            tls_handshake: Duration::from_secs(10),
        }
    }
}

/// Resource limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Client connections open at once, tunnels included, for the whole process.
    pub max_connections: usize,
    /// The largest request head (request line and headers) accepted; larger gets 431.
    pub max_request_header_bytes: usize,
    /// Connections at once from one client (IPv4 address or IPv6 /64); beyond, 429.
    pub max_connections_per_ip: Option<usize>,
    /// WebSocket handshakes per second from one client, as a token bucket; beyond, 429.
    pub handshakes_per_second_per_ip: Option<f64>,
    /// The bucket's size: how many handshakes a client may make at once.
    pub handshake_burst_per_ip: f64,
    /// Tunnels are closed after this long, however busy.
    pub max_tunnel_lifetime: Option<Duration>,
}

/// HTTP/2 toward clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2 {
    /// Streams a client may have open at once on one connection.
    pub max_concurrent_streams: u32,
    /// A PING is sent after this long without a frame from the client; `None` off.
    pub keepalive_interval: Option<Duration>,
    /// The connection is closed when a PING goes unanswered this long.
    pub keepalive_timeout: Duration,
    /// Bytes a client may send on one stream before sluice has passed them on (the
    /// stream's flow-control window).
    pub stream_window: u32,
    /// Bytes a client may send on all its streams together before they are passed on.
    pub connection_window: u32,
}

impl Default for Http2 {
    fn default() -> Self {
        Http2 {
            max_concurrent_streams: 128,
            keepalive_interval: Some(Duration::from_secs(20)),
            keepalive_timeout: Duration::from_secs(10),
            // Enough for a stream to run at full speed across a fast link, while one
            // connection's buffered request bodies stay within a MiB.
            stream_window: 256 * 1024,
            connection_window: 1024 * 1024,
        }
    }
}

/// How a route's tunnels treat WebSocket frames (`[websocket]`, overridden per route by
/// `websocket = { ... }`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WebSocket {
    /// The Close code sluice sends both peers when it ends a tunnel itself (drain, a
    /// removed server, `max_tunnel_lifetime`, a liveness timeout). Default 1001 (Going
    /// Away), which tells a client the server side is leaving and a reconnect may work.
    pub close_code: u16,
    /// How long sluice waits for the peers' Close replies before closing TCP. Default
    /// 5s: a peer answers a Close at once unless it is gone, and a gone peer should not
    /// hold a drain open.
    pub close_timeout: Duration,
    /// sluice Pings a side that has sent nothing for this long; `None` = off (default),
    /// since most applications ping for themselves and `[tcp]` keepalive already finds
    /// dead hosts.
    pub ping_interval: Option<Duration>,
    /// A side that does not answer sluice's Ping within this ends the tunnel. Default
    /// 10s, as for HTTP/2 PINGs (`[http2] keepalive_timeout`).
    pub ping_timeout: Duration,
    /// A message larger than this is refused with Close 1009; `None` = no limit
    /// (default): sluice relays frames as they come and never holds a whole message.
    pub max_message_bytes: Option<u64>,
    /// A frame larger than this is refused with Close 1009; `None` = no limit (default).
    pub max_frame_bytes: Option<u64>,
    /// Messages per second per tunnel per direction, as a token bucket with a burst of
    /// max(rate, 1), so a second's worth may arrive at once; beyond, Close 1008;
    /// `None` = off (default).
    pub max_messages_per_second: Option<f64>,
}

impl Default for WebSocket {
    fn default() -> Self {
        WebSocket {
            close_code: 1001,
            close_timeout: Duration::from_secs(5),
            ping_interval: None,
            ping_timeout: Duration::from_secs(10),
            max_message_bytes: None,
            max_frame_bytes: None,
            max_messages_per_second: None,
        }
    }
}

/// TCP settings for both legs of every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tcp {
    /// Idle time before keepalive probes start; `None` turns keepalive off.
    pub keepalive: Option<Duration>,
    /// Between probes, and how many; `None` leaves the system's defaults, which the
    /// user timeout overrides anyway (tcp(7)), and saves a system call each.
    pub keepalive_interval: Option<Duration>,
    pub keepalive_probes: Option<u32>,
    /// Linux TCP_USER_TIMEOUT: a connection whose sent data stays unacknowledged this
    /// long is closed.
    pub user_timeout: Option<Duration>,
}

impl Default for Tcp {
    fn default() -> Self {
        // A peer that vanished without a FIN or RST is noticed within about 60 + 30 =
        // 90 s when idle (the first probe, then the user timeout, which overrides the
        // probe count on Linux), and within 30 s when data is waiting for it.
        Tcp {
            keepalive: Some(Duration::from_secs(60)),
            keepalive_interval: None,
            keepalive_probes: None,
            user_timeout: Some(Duration::from_secs(30)),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 100_000,
            max_request_header_bytes: 16 * 1024,
            max_connections_per_ip: None,
            handshakes_per_second_per_ip: None,
            handshake_burst_per_ip: 0.0,
            max_tunnel_lifetime: None,
        }
    }
}

/// Logging settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// One line per request and per finished tunnel.
    pub access: bool,
    /// Access lines show paths with their query strings (which may hold secrets).
    pub access_query: bool,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// One proxy listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSettings {
    pub name: String,
    pub listen: SocketAddr,
    /// Terminate TLS on this listener.
    pub tls: Option<ListenerTls>,
    /// Answer every request with a 308 to `https://` on this port instead of proxying.
    pub redirect_https: Option<u16>,
    /// Connections at once on this listener, within the global limit.
    pub max_connections: Option<usize>,
    /// Bind with SO_REUSEPORT, so a new sluice can bind beside a running one.
    pub reuse_port: bool,
    /// Serve HTTP/2: offered in ALPN on TLS listeners (the default there), taken with
    /// prior knowledge beside HTTP/1.1 on plain ones (off by default there).
    pub http2: bool,
    /// Every connection starts with a PROXY protocol header (v1 or v2) whose source
    /// address is the client's.
    pub proxy_protocol: bool,
    /// Peers whose `X-Forwarded-For`, `Forwarded` and `X-Request-Id` are believed.
    pub trusted_proxies: crate::trust::TrustedProxies,
}

/// One route: which requests go to which upstream.
// Not `Eq`: `websocket` holds a rate (f64).
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSettings {
    /// The metrics and log label.
    pub name: String,
    /// Lowercase host name without port; `None` matches any host.
    pub host: Option<String>,
    /// Path prefix, always starting with `/`.
    pub path: String,
    /// Index into [`Settings::upstreams`].
    pub upstream: usize,
    /// Matches only WebSocket handshakes offering this subprotocol.
    pub subprotocol: Option<String>,
    /// Origins allowed to open WebSockets on this route; empty means any.
    pub allowed_origins: Vec<String>,
    /// How this route's tunnels treat frames: the `[websocket]` table's values with the
    /// route's own `websocket = { ... }` keys laid over them, key by key.
    pub websocket: WebSocket,
}

/// One upstream: a named group of servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSettings {
    pub name: String,
    pub servers: Servers,
    /// Idle keep-alive connections kept per server for ordinary HTTP requests.
    pub keepalive: usize,
    /// The HTTP version spoken to the servers.
    pub protocol: UpstreamProtocol,
    /// A PROXY protocol header, in this version, starts every connection to the
    /// servers; their connections then serve one client each (never pooled).
    pub send_proxy_protocol: Option<ProxyVersion>,
    pub tls: Option<UpstreamTls>,
    pub balance: Balance,
    /// Connections at once to one server, tunnels included.
    pub max_connections_per_server: Option<usize>,
    /// Consecutive connect failures before a server is ejected; 0 turns it off.
    pub max_fails: u32,
    /// How long the first ejection lasts; each repeat doubles it, up to 5 minutes.
    pub fail_timeout: Duration,
    pub health_check: Option<HealthCheck>,
    /// How often servers given by host name are resolved again.
    pub resolve_interval: Duration,
}

/// A PROXY protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
}

/// The HTTP version an upstream's servers are spoken to in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1: a pool of keep-alive connections per server.
    #[default]
    Http1,
    /// HTTP/2: a few multiplexed connections per server; ALPN `h2` with TLS, prior
    /// knowledge without.
    H2,
}

/// How an upstream chooses a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    /// The server with the fewest open connections (tunnels and requests) per weight.
    LeastConnections,
    /// The less loaded of two servers picked at random.
    RandomTwo,
    /// Consistent hashing of a request key: the same key, the same server.
    Hash(crate::balance::HashKey),
}

/// An active health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// `Some(path)`: GET it and expect 2xx or 3xx; `None`: a TCP (and TLS) connect.
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures that mark a server down.
    pub fails: u32,
    /// Consecutive passes that mark it up again.
    pub passes: u32,
}

/// Where an upstream's servers are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Servers {
    /// Servers at fixed addresses, as written (`host:port`) and resolved.
    Addresses(Vec<ServerAddr>),
    /// A server built into sluice, started on a loopback port when the gateway starts.
    Builtin(Builtin),
}

/// One upstream server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddr {
    /// As written in the configuration (`host:port`); the label in logs and metrics.
    pub name: String,
    /// What the name resolved to at load; re-resolved later when it is a host name.
    pub addrs: Vec<SocketAddr>,
    /// Whether `name` is a host name (resolved) rather than an IP address.
    pub resolve: bool,
    pub weight: u32,
}

/// The servers sluice can run itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// A WebSocket echo server that also serves a small test page over plain HTTP.
    Echo,
}
