//! Upstreams: choosing a server (balancing, health, per-server caps), connecting
//! under a timeout with fail-over, and a pool of idle keep-alive connections per
//! server.
//!
//! The pool is sluice's own rather than hyper-util's legacy client because the server
//! must be chosen before the connection, with fail-over on connect errors while the
//! request is still unsent, and WebSocket handshakes need a fresh connection they
//! can own outright.

mod connect;
mod h2;
mod maintenance;
mod server;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::Either;
use http::header::{HOST, HeaderMap};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

pub use crate::net::Stream;
pub use connect::ProxiedFor;
use server::Http1Conn;
pub use server::{HealthView, LoadGuard, Server};

use crate::balance::{Balancer, HashKey, Policy};
use crate::body::RequestBody;
use crate::config::{
    Balance, HealthCheck, Tcp, Timeouts, UpstreamProtocol, UpstreamSettings, UpstreamTls,
};
use crate::error::ProxyError;
use crate::metrics::UpstreamMetrics;

/// A named group of servers.
pub struct Upstream {
    pub name: Arc<str>,
    servers: Box<[Arc<Server>]>,
    balancer: Balancer,
    hash_key: Option<HashKey>,
    timeouts: Timeouts,
    connector: connect::Connector,
    protocol: UpstreamProtocol,
    /// HTTP/2 client settings, for `protocol = "h2"`.
    h2: hyper::client::conn::http2::Builder<hyper_util::rt::TokioExecutor>,
    metrics: UpstreamMetrics,
    max_per_server: Option<usize>,
    max_fails: u32,
    fail_timeout: Duration,
    health_check: Option<HealthCheck>,
    resolve_interval: Duration,
    tls: Option<UpstreamTls>,
    /// Stops this upstream's health checks and re-resolution once it is replaced.
    maintenance: CancellationToken,
}

/// An upstream's answer to an ordinary request.
pub struct Answer {
    pub response: Response<Incoming>,
    /// Returns the connection to the pool once the body has been read; holds the
    /// server's load until then.
    pub checkin: Checkin,
}

/// A pooled connection on loan to one response, returned by [`Checkin::give_back`].
pub struct Checkin {
    pooled: Pooled,
    load: LoadGuard,
}

/// What a response holds of its connection.
enum Pooled {
    /// An HTTP/1.1 connection, all its own until the body is through.
    Http1(Http1Conn),
    /// An HTTP/1.1 connection that began with its client's PROXY header: closed
    /// after the response, never pooled for another client.
    Private(Http1Conn),
    /// A stream's place on a shared HTTP/2 connection.
    H2(h2::Slot),
}

impl crate::body::GiveBack for Checkin {
    fn give_back(self) {
        Checkin::give_back(self);
    }
}

impl Checkin {
    /// The server the response comes from.
    pub fn server(&self) -> &Arc<Server> {
        self.load.server()
    }

    /// Puts the connection back in the pool, if it is still open.
    pub fn give_back(self) {
        match self.pooled {
            Pooled::Http1(conn) => self.load.server().put_idle(conn),
            Pooled::Private(conn) => drop(conn),
            // The connection stays in its server's pool; the stream frees its slot.
            Pooled::H2(slot) => drop(slot),
        }
    }
}

impl Upstream {
    /// `servers` are this upstream's servers in configuration order, new or carried
    /// over from the previous configuration. Fails only when the upstream's TLS files
    /// cannot be loaded.
    pub fn new(
        settings: &UpstreamSettings,
        servers: Vec<Arc<Server>>,
        timeouts: Timeouts,
        tcp: Tcp,
        metrics: UpstreamMetrics,
    ) -> Result<Upstream, crate::tls::TlsError> {
        let identities: Vec<(&[u8], u32)> = servers
            .iter()
            .map(|s| (s.name.as_bytes(), s.weight()))
            .collect();
        let (policy, hash_key) = match &settings.balance {
            Balance::RoundRobin => (Policy::RoundRobin, None),
            Balance::LeastConnections => (Policy::LeastConnections, None),
            Balance::RandomTwo => (Policy::RandomTwo, None),
            Balance::Hash(key) => (Policy::Hash, Some(key.clone())),
        };
        Ok(Upstream {
            name: settings.name.as_str().into(),
            balancer: Balancer::new(policy, &identities),
            servers: servers.into_boxed_slice(),
            hash_key,
            connector: connect::Connector::new(
                timeouts.connect,
                tcp,
                settings.tls.as_ref(),
                settings.protocol == UpstreamProtocol::H2,
                settings.send_proxy_protocol,
            )?,
            protocol: settings.protocol,
            h2: h2::builder(),
            timeouts,
            metrics,
            max_per_server: settings.max_connections_per_server,
            max_fails: settings.max_fails,
            fail_timeout: settings.fail_timeout,
            health_check: settings.health_check.clone(),
            resolve_interval: settings.resolve_interval,
            tls: settings.tls.clone(),
            maintenance: CancellationToken::new(),
        })
    }

    /// Whether the servers are spoken to in HTTP/2.
    pub fn protocol(&self) -> UpstreamProtocol {
        self.protocol
    }

    pub fn speaks_h2(&self) -> bool {
        self.protocol == UpstreamProtocol::H2
    }

    /// How this upstream's connections use TLS, if they do.
    pub fn tls_settings(&self) -> Option<&UpstreamTls> {
        self.tls.as_ref()
    }

    /// This upstream's servers.
    pub fn servers(&self) -> &[Arc<Server>] {
        &self.servers
    }

    /// The order in which one request tries the servers: the balancer's choice
    /// first, servers that are down last.
    pub fn plan(&self, headers: &HeaderMap, query: Option<&str>, client: IpAddr) -> Vec<usize> {
        let mut scratch = [0u8; 16];
        let key = self
            .hash_key
            .as_ref()
            .and_then(|k| k.extract(headers, query, client, &mut scratch));
        let mut order = Vec::with_capacity(self.servers.len());
        self.balancer.order(
            key,
            |i| self.servers[i].load(),
            |i| self.servers[i].is_up(),
            &mut order,
        );
        order
    }

    async fn open(
        &self,
        server: &Server,
        proxied_for: Option<ProxiedFor>,
    ) -> std::io::Result<Stream> {
        let started = Instant::now();
        let mut last = None;
        for addr in server.addrs() {
            match self
                .connector
                .connect(addr, connect::host_of(&server.name), proxied_for)
                .await
            {
                Ok(stream) => {
                    self.metrics
                        .connect_duration
                        .observe(started.elapsed().as_secs_f64());
                    server.connect_ok();
                    return Ok(stream);
                }
                Err(e) => last = Some(e),
            }
        }
        // Out of descriptors or memory here is no fault of the server's.
        if !last
            .as_ref()
            .is_some_and(crate::net::is_resource_exhaustion)
        {
            server.connect_failed(self.max_fails, self.fail_timeout);
        }
        Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address")))
    }

    /// Connects to the first server of `plan` that answers and has room.
    pub async fn connect(
        &self,
        plan: &[usize],
        proxied_for: Option<ProxiedFor>,
    ) -> Result<(LoadGuard, Stream), ProxyError> {
        let mut last = None;
        let mut full = 0;
        for &i in plan {
            let server = &self.servers[i];
            let Some(load) = server.try_load(self.max_per_server) else {
                full += 1;
                continue;
            };
            match self.open(server, proxied_for).await {
                Ok(stream) => return Ok((load, stream)),
                Err(e) => {
                    tracing::warn!(upstream = %self.name, server = %server.name, error = %e, "upstream connect failed");
                    last = Some(e);
                }
            }
        }
        Err(self.no_server(last, full, plan.len()))
    }

    fn no_server(&self, last: Option<std::io::Error>, full: usize, tried: usize) -> ProxyError {
        if full > 0 && full == tried {
            return ProxyError::UpstreamFull;
        }
        ProxyError::Connect(last.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "the upstream has no servers")
        }))
    }

    /// Sends an ordinary request on a pooled or new connection and waits for the
    /// response head.
    ///
    /// A server that cannot be connected is skipped for the next; a request is sent
    /// again only when it provably never left (the pooled connection closed first).
    ///
    /// `timeout` bounds the wait for the response head (`upstream_response`, or a
    /// gRPC deadline that comes sooner).
    ///
    /// Not an `async fn`: one would hold the request twice and the larger of the two
    /// protocols' states besides, in every request's future (2.2 KB where either
    /// protocol's alone is under 1.4).
    pub fn send<'a>(
        &'a self,
        req: Request<RequestBody>,
        plan: &'a [usize],
        timeout: Duration,
        proxied_for: ProxiedFor,
    ) -> impl Future<Output = Result<Answer, ProxyError>> + Send + 'a {
        if self.protocol == UpstreamProtocol::H2 {
            Either::Left(self.send_h2(req, plan, timeout))
        } else {
            Either::Right(self.send_h1(req, plan, timeout, proxied_for))
        }
    }

    /// [`send`](Self::send) over HTTP/1.1.
    async fn send_h1(
        &self,
        mut req: Request<RequestBody>,
        plan: &[usize],
        timeout: Duration,
        proxied_for: ProxiedFor,
    ) -> Result<Answer, ProxyError> {
        let mut last = None;
        let mut full = 0;
        for &i in plan {
            let server = &self.servers[i];
            let Some(load) = server.try_load(self.max_per_server) else {
                full += 1;
                continue;
            };
            default_host(server, &mut req);
            loop {
                // A connection that began with a PROXY header is its client's alone.
                let private = self.connector.sends_proxy_header();
                let idle = if private { None } else { server.take_idle() };
                let (mut conn, reused) = match idle {
                    Some(s) => (s, true),
                    // Boxed: opening is the rare path under keep-alive, and its state
                    // (1.8 KB, the TLS connect's) made every request's future that
                    // much larger to create and move.
                    None => match Box::pin(self.open_pooled(server, Some(proxied_for))).await {
                        Ok(s) => (s, false),
                        Err(e) => {
                            tracing::warn!(upstream = %self.name, server = %server.name, error = %e, "upstream connect failed");
                            last = Some(e);
                            break;
                        }
                    },
                };
                if conn.sender.ready().await.is_err() {
                    if reused {
                        continue;
                    }
                    last = Some(std::io::Error::other("connection closed at once"));
                    break;
                }
                // A timeout drops `conn`, which closes it: it still holds the request.
                let sent = tokio::time::timeout(timeout, conn.sender.try_send_request(req))
                    .await
                    .map_err(|_| ProxyError::ResponseTimeout(timeout))?;
                match sent {
                    Ok(response) => {
                        return Ok(Answer {
                            response,
                            checkin: Checkin {
                                pooled: if private {
                                    Pooled::Private(conn)
                                } else {
                                    Pooled::Http1(conn)
                                },
                                load,
                            },
                        });
                    }
                    Err(mut e) => match e.take_message() {
                        Some(unsent) if reused => {
                            tracing::debug!(server = %server.name, "pooled connection closed before the request was written; retrying");
                            req = unsent;
                        }
                        _ => return Err(ProxyError::Upstream(e.into_error())),
                    },
                }
            }
        }
        Err(self.no_server(last, full, plan.len()))
    }

    async fn open_pooled(
        &self,
        server: &Server,
        proxied_for: Option<ProxiedFor>,
    ) -> std::io::Result<Http1Conn> {
        let stream = self.open(server, proxied_for).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        let name = server.name.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(server = %name, error = %e, "upstream connection ended");
            }
        });
        Ok(Http1Conn {
            sender,
            task: task.abort_handle(),
        })
    }

    /// Sends a WebSocket handshake on a new connection of its own (over HTTP/2, as an
    /// extended CONNECT on a shared one), and waits for the response head. The caller checks the response and takes the upgrade; the guard
    /// counts the connection against the server until the tunnel ends.
    pub async fn send_upgrade(
        &self,
        mut req: Request<RequestBody>,
        plan: &[usize],
        proxied_for: ProxiedFor,
    ) -> Result<(Response<Incoming>, LoadGuard), ProxyError> {
        if self.protocol == UpstreamProtocol::H2 {
            return self.send_connect_h2(req, plan).await;
        }
        let (load, stream) = self.connect(plan, Some(proxied_for)).await?;
        let server = load.server().clone();
        default_host(&server, &mut req);
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ProxyError::Upstream)?;
        let name = server.name.clone();
        // The task ends when the connection is handed over to the tunnel, or closes.
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(server = %name, error = %e, "upstream handshake connection ended");
            }
        });
        let response =
            tokio::time::timeout(self.timeouts.upstream_response, sender.send_request(req))
                .await
                .map_err(|_| ProxyError::ResponseTimeout(self.timeouts.upstream_response))?
                .map_err(ProxyError::Upstream)?;
        Ok((response, load))
    }

    /// Starts the background work this upstream needs: active health checks,
    /// re-resolving host names, and keeping the up gauges current.
    pub fn start_maintenance(self: &Arc<Self>) {
        maintenance::spawn(self.clone());
    }

    /// Stops the background work (the upstream was replaced by a reload).
    pub fn stop_maintenance(&self) {
        self.maintenance.cancel();
    }
}

/// HTTP/1.1 requires a Host header; a client's HTTP/1.0 request may have none.
fn default_host<B>(server: &Server, req: &mut Request<B>) {
    if !req.headers().contains_key(HOST) {
        req.headers_mut().insert(HOST, server.host.clone());
    }
}
