//! Upstreams: choosing a server, connecting under a timeout with fail-over, and a pool
//! of idle keep-alive connections per server.
//!
//! The pool is sluice's own rather than hyper-util's legacy client because the server
//! must be chosen before the connection, with fail-over on connect errors while the
//! request is still unsent, and WebSocket handshakes need a fresh connection they
//! can own outright.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod connect;

pub use connect::Stream;

use crate::body::RequestBody;
use crate::config::{ServerAddr, Timeouts, UpstreamTls};
use crate::error::ProxyError;
use crate::metrics::UpstreamMetrics;
use http::header::{HOST, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

/// How long an idle pooled connection is kept. Shorter than the keep-alive timeout of
/// common backends (Node.js closes at 5 s, nginx at 75 s, Go never) would be safest
/// against the close-while-sending race, but the race is also handled: a request that
/// was not yet written when the connection closed is sent again on a new one.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A named group of servers, tried in round-robin order.
pub struct Upstream {
    pub name: String,
    servers: Box<[Arc<Server>]>,
    next: AtomicUsize,
    timeouts: Timeouts,
    connector: connect::Connector,
    metrics: UpstreamMetrics,
}

/// One upstream server and its idle connections.
pub struct Server {
    /// As written in the configuration.
    pub name: Arc<str>,
    pub addr: SocketAddr,
    /// The Host header for requests that came without one (HTTP/1.0).
    host: HeaderValue,
    idle: Mutex<VecDeque<Idle>>,
    keepalive: usize,
}

struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

/// A pooled connection on loan to one response, returned by [`Checkin::give_back`].
pub struct Checkin {
    sender: SendRequest<RequestBody>,
    server: Arc<Server>,
}

impl Checkin {
    /// Puts the connection back in the pool, if it is still open.
    pub fn give_back(self) {
        self.server.put_idle(self.sender);
    }
}

/// An upstream's answer to an ordinary request.
pub struct Answer {
    pub response: Response<Incoming>,
    pub server: Arc<Server>,
    /// Returns the connection to the pool once the body has been read.
    pub checkin: Checkin,
}

impl Upstream {
    /// Fails only when the upstream's TLS files cannot be loaded.
    pub fn new(
        name: String,
        servers: &[ServerAddr],
        keepalive: usize,
        timeouts: Timeouts,
        tls: Option<&UpstreamTls>,
        metrics: UpstreamMetrics,
    ) -> Result<Upstream, crate::tls::TlsError> {
        Ok(Upstream {
            connector: connect::Connector::new(timeouts.connect, tls)?,
            name,
            servers: servers
                .iter()
                .map(|s| {
                    Arc::new(Server {
                        name: s.name.as_str().into(),
                        addr: s.addr,
                        host: HeaderValue::from_str(&s.name)
                            .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
                        idle: Mutex::new(VecDeque::new()),
                        keepalive,
                    })
                })
                .collect(),
            next: AtomicUsize::new(0),
            timeouts,
            metrics,
        })
    }

    /// The servers in the order one request tries them: the next in the round, then
    /// the rest after it.
    fn order(&self) -> impl Iterator<Item = &Arc<Server>> {
        let n = self.servers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(move |i| &self.servers[(start + i) % n])
    }

    async fn open(&self, server: &Server) -> std::io::Result<Stream> {
        let started = Instant::now();
        let stream = self
            .connector
            .connect(server.addr, connect::host_of(&server.name))
            .await?;
        self.metrics
            .connect_duration
            .observe(started.elapsed().as_secs_f64());
        Ok(stream)
    }

    /// Connects to the first server that answers, in round-robin order.
    pub async fn connect(&self) -> Result<(Arc<Server>, Stream), ProxyError> {
        let mut last = None;
        for server in self.order() {
            match self.open(server).await {
                Ok(stream) => return Ok((server.clone(), stream)),
                Err(e) => {
                    tracing::warn!(upstream = %self.name, server = %server.name, error = %e, "upstream connect failed");
                    last = Some(e);
                }
            }
        }
        Err(ProxyError::Connect(last.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "the upstream has no servers")
        })))
    }

    /// Sends an ordinary request on a pooled or new connection and waits for the
    /// response head.
    ///
    /// A server that cannot be connected is skipped for the next; a request is sent
    /// again only when it provably never left (the pooled connection closed first).
    pub async fn send(&self, mut req: Request<RequestBody>) -> Result<Answer, ProxyError> {
        let mut last = None;
        for server in self.order() {
            server.default_host(&mut req);
            loop {
                let (mut sender, reused) = match server.take_idle() {
                    Some(s) => (s, true),
                    None => match self.open_pooled(server).await {
                        Ok(s) => (s, false),
                        Err(e) => {
                            tracing::warn!(upstream = %self.name, server = %server.name, error = %e, "upstream connect failed");
                            last = Some(e);
                            break;
                        }
                    },
                };
                if sender.ready().await.is_err() {
                    if reused {
                        continue;
                    }
                    last = Some(std::io::Error::other("connection closed at once"));
                    break;
                }
                let sent = tokio::time::timeout(
                    self.timeouts.upstream_response,
                    sender.try_send_request(req),
                )
                .await
                .map_err(|_| ProxyError::ResponseTimeout(self.timeouts.upstream_response))?;
                match sent {
                    Ok(response) => {
                        let checkin = Checkin {
                            sender,
                            server: server.clone(),
                        };
                        return Ok(Answer {
                            response,
                            server: server.clone(),
                            checkin,
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
        Err(ProxyError::Connect(last.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "the upstream has no servers")
        })))
    }

    async fn open_pooled(&self, server: &Server) -> std::io::Result<SendRequest<RequestBody>> {
        let stream = self.open(server).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        let name = server.name.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(server = %name, error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Sends a WebSocket handshake on a new connection of its own, and waits for the
    /// response head. The caller checks the response and takes the upgrade.
    pub async fn send_upgrade(
        &self,
        req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Arc<Server>), ProxyError> {
        let mut req = req;
        let (server, stream) = self.connect().await?;
        server.default_host(&mut req);
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
        Ok((response, server))
    }
}

impl Server {
    /// HTTP/1.1 requires a Host header; a client's HTTP/1.0 request may have none.
    fn default_host<B>(&self, req: &mut Request<B>) {
        if !req.headers().contains_key(HOST) {
            req.headers_mut().insert(HOST, self.host.clone());
        }
    }

    fn take_idle(&self) -> Option<SendRequest<RequestBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Newest first: the most recently used connection is the least likely to have
        // been closed by the server.
        while let Some(c) = idle.pop_back() {
            if !c.sender.is_closed() && c.since.elapsed() < POOL_IDLE_TIMEOUT {
                return Some(c.sender);
            }
        }
        None
    }

    fn put_idle(&self, sender: SendRequest<RequestBody>) {
        if sender.is_closed() || self.keepalive == 0 {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while idle
            .front()
            .is_some_and(|c| c.sender.is_closed() || now - c.since >= POOL_IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        if idle.len() >= self.keepalive {
            idle.pop_front();
        }
        idle.push_back(Idle { sender, since: now });
    }
}
