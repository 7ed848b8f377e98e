//! The request service, as ordered steps: check -> route -> rewrite -> forward ->
//! respond -> log. WebSocket handshakes take the same road to the upstream and open a
//! tunnel only on a checked `101`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use crate::access;
use crate::body::{ProxyBody, RequestBody};
use crate::client::{ConnInfo, Held};
use crate::config::Timeouts;
use crate::error::{Origin, ProxyError};
use crate::grpc;
use crate::handshake::{self, Upgrade};
use crate::headers;
use crate::limits::ClientLimits;
use crate::metrics::HandshakeOutcome;
use crate::request::{
    has_dot_segments, head_size, redirect_to_https, request_host, rewrite_request,
};
use crate::route::{Route, RouteTable, offers_subprotocol};
use crate::shutdown::Shutdown;
use crate::tunnel;
use crate::upstream::{Checkin, LoadGuard, Server};

/// The body of every response sent to a client: sluice's own, or an upstream's
/// whose pooled connection goes back to the pool once the body is through.
pub type ClientBody = ProxyBody<Checkin>;

/// What requests are served with; replaced whole on reload, so a request sees either
/// the old or the new configuration, never half of each.
pub struct State {
    pub routes: RouteTable,
    pub timeouts: Timeouts,
    pub access: AccessLog,
    pub max_tunnel_lifetime: Option<Duration>,
    /// `max_request_header_bytes`.
    pub max_head: usize,
}

/// Access log settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessLog {
    pub enabled: bool,
    /// Write paths with their query strings.
    pub query: bool,
}

/// The request service shared by every connection.
pub struct Proxy {
    state: ArcSwap<State>,
    shutdown: Shutdown,
    limits: Arc<ClientLimits>,
}

/// One request in flight: what the error path and the access line need.
struct Exchange<'a> {
    conn: &'a Arc<ConnInfo>,
    started: Instant,
    route: Option<Arc<Route>>,
    server: Option<Arc<Server>>,
    access: Option<Box<access::Entry>>,
    /// The request is a gRPC call: sluice's own answers must be gRPC's.
    grpc: bool,
}

impl Exchange<'_> {
    /// The access entry, with what is now known, to travel with the response.
    fn entry(&mut self, status: StatusCode) -> Option<Box<access::Entry>> {
        let mut e = self.access.take()?;
        e.route = self.route.as_ref().map(|r| r.name.clone());
        e.server = self.server.as_ref().map(|s| s.name.clone());
        e.status = status.as_u16();
        Some(e)
    }
}

impl Proxy {
    pub fn new(state: State, shutdown: Shutdown, limits: Arc<ClientLimits>) -> Proxy {
        Proxy {
            state: ArcSwap::from_pointee(state),
            shutdown,
            limits,
        }
    }

    /// Installs a new state; requests already routed finish on the old one. Returns
    /// the old state.
    pub fn replace(&self, state: State) -> Arc<State> {
        self.state.swap(Arc::new(state))
    }

    /// The state requests are served with now.
    pub fn state(&self) -> Arc<State> {
        self.state.load_full()
    }

    /// Serves one request. Never fails: every error becomes its response.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        conn: &Arc<ConnInfo>,
    ) -> Response<ClientBody> {
        let access = self.state.load().access;
        let mut x = Exchange {
            conn,
            started: Instant::now(),
            route: None,
            server: None,
            grpc: grpc::is_call(req.headers()),
            access: access.enabled.then(|| {
                Box::new(access::Entry {
                    started: Instant::now(),
                    listener: conn.listener.clone(),
                    client: conn.client,
                    protocol: conn.protocol.as_str(),
                    method: req.method().clone(),
                    // HTTP/2 names the host in `:authority`.
                    host: req.headers().get(http::header::HOST).cloned().or_else(|| {
                        let authority = req.uri().authority()?;
                        HeaderValue::from_str(authority.as_str()).ok()
                    }),
                    uri: req.uri().clone(),
                    with_query: access.query,
                    route: None,
                    server: None,
                    status: 0,
                    grpc_status: None,
                    bytes_in: Arc::new(AtomicU64::new(0)),
                })
            }),
        };
        let method = req.method().clone();
        match self.serve(req, &mut x).await {
            Ok(resp) => resp,
            Err(error) => {
                let route = x.route.as_ref().map_or("-", |r| &*r.name);
                let server = x.server.as_ref().map_or("-", |s| &*s.name);
                let status = error.status();
                match error.origin() {
                    Origin::Client => tracing::info!(
                        client = %conn.client, listener = %conn.listener, route, %method,
                        status = status.as_u16(), cause = %error, "request refused"
                    ),
                    Origin::Upstream => tracing::warn!(
                        client = %conn.client, listener = %conn.listener, route, server, %method,
                        status = status.as_u16(), cause = %error, "upstream failure"
                    ),
                }
                if x.grpc {
                    if let Some(route) = &x.route {
                        route.metrics.grpc.inc(error.grpc_status());
                    }
                    let mut entry = x.entry(StatusCode::OK);
                    if let Some(e) = entry.as_mut() {
                        e.grpc_status = Some(error.grpc_status());
                    }
                    return error.grpc_response().map(|b| b.with_access(entry));
                }
                let entry = x.entry(status);
                error.response().map(|b| b.with_access(entry))
            }
        }
    }

    async fn serve(
        &self,
        mut req: Request<Incoming>,
        x: &mut Exchange<'_>,
    ) -> Result<Response<ClientBody>, ProxyError> {
        // ---- check ----
        // HTTP/2 holds its header list to the limit itself (SETTINGS_MAX_HEADER_LIST_SIZE);
        // over HTTP/1.1 hyper reads a head up to twice the limit, and this answers.
        let max_head = self.state.load().max_head;
        if req.version() != Version::HTTP_2 && head_size(&req) > max_head {
            return Err(ProxyError::HeadTooLarge(max_head));
        }
        let upgrade = handshake::classify_request(&req);
        if req.method() == Method::CONNECT && upgrade != Upgrade::WebSocketH2 {
            return Err(ProxyError::MethodNotAllowed(
                "CONNECT: this is not a forward proxy",
            ));
        }
        let host = request_host(&req)?;
        if let Some(port) = x.conn.redirect_https {
            let resp = redirect_to_https(&req, host.as_ref(), port);
            let entry = x.entry(resp.status());
            return Ok(resp.map(|b| b.with_access(entry)));
        }
        if has_dot_segments(req.uri().path()) {
            return Err(ProxyError::BadRequest("the path has `.` or `..` segments"));
        }

        // ---- route ----
        let (timeouts, lifetime) = {
            let state = self.state.load();
            let host = host.as_ref().and_then(|h| h.to_str().ok());
            let headers = req.headers();
            x.route = state
                .routes
                .find(host, req.uri().path(), |p| {
                    upgrade.is_websocket() && offers_subprotocol(headers, p)
                })
                .cloned();
            (state.timeouts, state.max_tunnel_lifetime)
        };
        let Some(route) = x.route.clone() else {
            return Err(ProxyError::NoRoute);
        };

        if upgrade.is_websocket() {
            let key = match self.check_handshake(&req, upgrade, &route, x.conn) {
                Ok(k) => k,
                Err(e) => {
                    route.metrics.handshake(HandshakeOutcome::Rejected);
                    return Err(e);
                }
            };
            let client_upgrade = hyper::upgrade::on(&mut req);
            let limits = TunnelLimits {
                timers: tunnel::Timers {
                    idle: timeouts.idle,
                    half_closed: timeouts.half_closed,
                },
                lifetime,
                drain: timeouts.drain,
            };
            // Boxed: its state (3.2 KB) is the largest of this function's, and hyper
            // moves each request's future at least twice, plain requests too. Boxing
            // it took plain requests from 17.8 to 17.5 µs of CPU (medians of eight
            // benches/compare.sh-style runs) and left handshakes unchanged.
            let handshake = Handshake {
                upgrade,
                key,
                client_upgrade,
                limits,
            };
            return Box::pin(self.handshake(req, host, handshake, &route, x)).await;
        }

        // ---- rewrite, forward ----
        let plan = route
            .upstream
            .plan(req.headers(), req.uri().query(), x.conn.client.ip());
        let (mut parts, body) = req.into_parts();
        // A gRPC call's deadline bounds the wait for the response head too.
        let mut timeout = timeouts.upstream_response;
        let mut trailers = false;
        if x.grpc {
            timeout = grpc::timeout(&parts.headers).map_or(timeout, |t| t.min(timeout));
            trailers = headers::has_token(&parts.headers, &http::header::TE, "trailers");
        }
        rewrite_request(&mut parts, x.conn, host, upgrade);
        if trailers && route.upstream.speaks_h2() {
            // TE is hop-by-hop, but `TE: trailers` is how a gRPC server knows its
            // client (here sluice, which passes trailers on) takes trailers.
            parts
                .headers
                .insert(http::header::TE, HeaderValue::from_static("trailers"));
        }
        let counted = x.access.as_ref().map(|e| e.bytes_in.clone());
        let req = Request::from_parts(parts, RequestBody::new(body, counted));
        let answer = match route.upstream.send(req, &plan, timeout).await {
            Ok(a) => a,
            Err(e) => {
                if matches!(e, ProxyError::UpstreamFull) {
                    route.metrics.refused_full.inc();
                }
                route.metrics.http_request(e.status());
                route
                    .metrics
                    .http_duration
                    .observe(x.started.elapsed().as_secs_f64());
                return Err(e);
            }
        };
        x.server = Some(answer.checkin.server().clone());

        // ---- respond ----
        let (mut parts, body) = answer.response.into_parts();
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            // Passing this on would switch the client's connection to a protocol
            // nobody agreed to; the upstream connection is dropped, not pooled.
            route.metrics.http_request(StatusCode::BAD_GATEWAY);
            return Err(ProxyError::UnexpectedUpgrade);
        }
        headers::remove_hop_by_hop(&mut parts.headers);
        route.metrics.http_request(parts.status);
        route
            .metrics
            .http_duration
            .observe(x.started.elapsed().as_secs_f64());
        let mut entry = x.entry(parts.status);
        let mut body = ProxyBody::upstream(body, Some(answer.checkin));
        if x.grpc {
            // A trailers-only answer carries its gRPC status in the head; others in
            // the trailers, which the body counts as they pass.
            match grpc::status_of(&parts.headers) {
                Some(status) => {
                    route.metrics.grpc.inc(status);
                    if let Some(e) = entry.as_mut() {
                        e.grpc_status = Some(status);
                    }
                }
                None => body = body.with_grpc(route.metrics.grpc.clone()),
            }
        }
        Ok(Response::from_parts(parts, body.with_access(entry)))
    }

    /// Checks a handshake before it goes anywhere: well-formed (RFC 6455, or RFC 8441
    /// over HTTP/2), from an allowed Origin, and within the client's handshake rate.
    /// Returns the key the upstream's 101 must answer: the client's, or over HTTP/2 a
    /// new one of sluice's.
    fn check_handshake(
        &self,
        req: &Request<Incoming>,
        upgrade: Upgrade,
        route: &Route,
        conn: &ConnInfo,
    ) -> Result<[u8; 24], ProxyError> {
        let key = if upgrade == Upgrade::WebSocketH2 {
            handshake::check_request_h2(req.headers())?;
            handshake::new_key()
        } else {
            let key = handshake::check_request(req.version(), req.headers())?;
            <[u8; 24]>::try_from(key).expect("a checked key is 24 bytes")
        };
        // Browsers always send Origin with a WebSocket handshake; a request without one
        // is not a browser's, and cross-site hijacking needs a browser.
        if let (Some(policy), Some(origin)) =
            (&route.origins, req.headers().get(http::header::ORIGIN))
            && !policy.allows(origin.as_bytes())
        {
            return Err(ProxyError::OriginNotAllowed);
        }
        if !self.limits.allow_handshake(conn.client.ip()) {
            route.metrics.refused_rate.inc();
            return Err(ProxyError::RateLimited);
        }
        Ok(key)
    }

    /// Forwards a checked WebSocket handshake and, on a valid 101, answers the client
    /// (with the 101 over HTTP/1.1, with a 200 on its stream over HTTP/2) and starts
    /// the tunnel.
    async fn handshake(
        &self,
        req: Request<Incoming>,
        host: Option<HeaderValue>,
        hs: Handshake,
        route: &Arc<Route>,
        x: &mut Exchange<'_>,
    ) -> Result<Response<ClientBody>, ProxyError> {
        let Handshake {
            upgrade,
            key,
            client_upgrade,
            limits,
        } = hs;
        let plan = route
            .upstream
            .plan(req.headers(), req.uri().query(), x.conn.client.ip());
        let (mut parts, body) = req.into_parts();
        rewrite_request(&mut parts, x.conn, host, upgrade);
        if upgrade == Upgrade::WebSocketH2 {
            parts.headers.insert(
                http::header::SEC_WEBSOCKET_KEY,
                HeaderValue::from_bytes(&key).expect("base64 is a valid header value"),
            );
        }
        let req = Request::from_parts(parts, RequestBody::new(body, None));
        let (mut resp, load) = match route.upstream.send_upgrade(req, &plan).await {
            Ok(r) => r,
            Err(error) => {
                if matches!(error, ProxyError::UpstreamFull) {
                    route.metrics.refused_full.inc();
                }
                route.metrics.handshake(HandshakeOutcome::UpstreamError);
                return Err(error);
            }
        };
        let server = load.server().clone();
        x.server = Some(server.clone());
        // Over HTTP/1.1 the upstream accepts with a 101; over HTTP/2 (RFC 8441) with a
        // 2xx on the stream.
        let upstream_h2 = route.upstream.speaks_h2();
        let accepted = if upstream_h2 {
            resp.status().is_success()
        } else {
            resp.status() == StatusCode::SWITCHING_PROTOCOLS
        };
        if !accepted {
            // The upstream refused: its answer goes back as an ordinary response, the
            // client's connection stays HTTP, and the upstream connection is closed
            // once the body is through.
            route.metrics.handshake(HandshakeOutcome::Rejected);
            tracing::info!(
                client = %x.conn.client, route = %route.name, server = %server.name,
                status = resp.status().as_u16(), "upstream refused the WebSocket handshake"
            );
            let (mut parts, body) = resp.into_parts();
            headers::remove_hop_by_hop(&mut parts.headers);
            let entry = x.entry(parts.status);
            return Ok(Response::from_parts(
                parts,
                ProxyBody::upstream(body, None).with_access(entry),
            ));
        }
        if !upstream_h2
            && let Err(error) = handshake::check_response(resp.status(), resp.headers(), &key)
        {
            route.metrics.handshake(HandshakeOutcome::Rejected);
            return Err(error);
        }
        route.metrics.handshake(HandshakeOutcome::Upgraded);

        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let (mut parts, _) = resp.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers);
        let status = if upgrade == Upgrade::WebSocketH2 {
            // RFC 8441 §5: the stream opens with a 2xx; Sec-WebSocket-Accept answers a
            // key the client never sent.
            parts.status = StatusCode::OK;
            parts.headers.remove(http::header::SEC_WEBSOCKET_ACCEPT);
            parts.version = Version::HTTP_2;
            StatusCode::OK
        } else {
            if upstream_h2 {
                // The upstream's 2xx stands for the 101 this client waits for, with
                // the accept for the client's own key.
                parts.status = StatusCode::SWITCHING_PROTOCOLS;
                parts.headers.remove(http::header::CONTENT_LENGTH);
                parts.headers.insert(
                    http::header::SEC_WEBSOCKET_ACCEPT,
                    HeaderValue::from_bytes(&handshake::accept_for(&key))
                        .expect("base64 is a valid header value"),
                );
            }
            headers::set_websocket_upgrade(&mut parts.headers);
            parts.version = Version::HTTP_11;
            StatusCode::SWITCHING_PROTOCOLS
        };

        let tunnel = Tunnel {
            route: route.clone(),
            conn: x.conn.clone(),
            load,
            limits,
            shutdown: self.shutdown.clone(),
            access: x.entry(status),
        };
        self.shutdown
            .spawn(tunnel.run(client_upgrade, upstream_upgrade));
        Ok(Response::from_parts(parts, ProxyBody::empty()))
    }
}

/// A checked WebSocket handshake on its way upstream.
struct Handshake {
    upgrade: Upgrade,
    /// The key the upstream's 101 must answer.
    key: [u8; 24],
    client_upgrade: hyper::upgrade::OnUpgrade,
    limits: TunnelLimits,
}

/// What ends a tunnel besides its peers.
#[derive(Clone, Copy)]
struct TunnelLimits {
    timers: tunnel::Timers,
    lifetime: Option<Duration>,
    /// The period over which tunnels of a removed server are closed.
    drain: Duration,
}

/// A tunnel about to run, with everything it reports to.
struct Tunnel {
    route: Arc<Route>,
    /// Kept for the tunnel's life: it holds the connection's place under the limits.
    conn: Arc<ConnInfo>,
    /// The upstream server's load, held for the tunnel's life.
    load: LoadGuard,
    limits: TunnelLimits,
    shutdown: Shutdown,
    access: Option<Box<access::Entry>>,
}

impl Tunnel {
    /// Waits for both upgrades, then spawns the tunnel's own task, which runs to the
    /// end and logs and counts how it ended.
    ///
    /// Two tasks rather than one: what a tunnel task holds is most of an idle
    /// tunnel's memory, and a task is sized to the largest state of its future. This
    /// one, which also holds the upgrades and the whole `Tunnel`, is gone once the
    /// handshake is; the long-lived one holds only what a running tunnel needs, and
    /// is allocated after the handshake's buffers were freed rather than among them.
    /// The long-lived future is 632 bytes where the single task's was 936, and with
    /// glibc's malloc an idle tunnel's resident memory fell from 2.88 to 2.5 KiB
    /// (9,900 tunnels, benches/compare.sh's idle scenario).
    async fn run(self, client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(
                    client = %self.conn.client, route = %self.route.name, error = %e,
                    "upgrade did not complete"
                );
                return;
            }
        };
        let Tunnel {
            route,
            conn,
            load,
            limits,
            shutdown,
            access,
        } = self;
        // hyper has let the connection go by now, so the connection's own state is
        // usually ours alone: keep only what a tunnel needs of it.
        let (client_addr, held) = ConnInfo::into_held(conn);
        let started = Instant::now();
        let metrics = &route.metrics;
        metrics.tunnels_active.inc();
        let counters = tunnel::Counters {
            client_to_upstream: metrics.client_to_upstream.clone(),
            upstream_to_client: metrics.upstream_to_client.clone(),
        };
        let stops = tunnel::Stops {
            token: load.server().ending(),
            drain: shutdown.stop_token().clone(),
            spread: limits.drain,
            lifetime: limits.lifetime,
        };
        let running = Running {
            tunnel: tunnel::run_upgraded(client, upstream, limits.timers, counters, stops),
            route,
            load: Some(load),
            access,
            started,
            client: client_addr,
            _held: held,
        };
        shutdown.spawn(running);
    }
}

pin_project_lite::pin_project! {
    /// A running tunnel's task: the tunnel, then its log line and metrics. Written by
    /// hand rather than as an `async` block, which would hold a second copy of the
    /// tunnel it awaits.
    struct Running {
        #[pin]
        tunnel: tunnel::Tunnel<tunnel::Transfers>,
        route: Arc<Route>,
        // Taken at the end, to be let go before the gauge falls.
        load: Option<LoadGuard>,
        access: Option<Box<access::Entry>>,
        started: Instant,
        client: SocketAddr,
        // The connection's place under the limits, for the tunnel's life.
        _held: Held,
    }
}

impl Future for Running {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let report = ready!(this.tunnel.poll(cx));
        let route = &*this.route;
        if let Some(load) = this.load.take() {
            tracing::debug!(
                client = %this.client, route = %route.name, server = %load.server().name,
                end = report.end.as_str(), "tunnel closed"
            );
            // The server's load first, so that whoever sees the gauge fall also sees
            // the server's count fall (least-connections reads it).
            drop(load);
        }
        route
            .metrics
            .tunnel_duration
            .observe(this.started.elapsed().as_secs_f64());
        route.metrics.tunnels_active.dec();
        if let Some(entry) = this.access.take() {
            entry.finish_tunnel(
                report.client_to_upstream,
                report.upstream_to_client,
                report.end.as_str(),
            );
        }
        Poll::Ready(())
    }
}
