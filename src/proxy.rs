//! The request service, as ordered steps: check -> route -> rewrite -> forward ->
//! respond -> log. WebSocket handshakes take the same road to the upstream and open a
//! tunnel only on a checked `101` ([`websocket`]).

mod websocket;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use crate::access;
use crate::body::{ProxyBody, RequestBody};
use crate::client::ConnInfo;
use crate::config::Timeouts;
use crate::error::{Origin, ProxyError};
use crate::grpc;
use crate::handshake::{self, Upgrade};
use crate::headers;
use crate::limits::ClientLimits;
use crate::request::{
    has_dot_segments, head_size, redirect_to_https, request_host, rewrite_request,
};
use crate::request_id;
use crate::route::{Route, RouteTable, offers_subprotocol};
use crate::shutdown::Shutdown;
use crate::upstream::{Checkin, ProxiedFor, Server};

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
    /// The client: the connection's peer, or the address a trusted proxy named.
    client: IpAddr,
    /// This request's ID: a trusted proxy's `X-Request-Id`, or a new one.
    request_id: HeaderValue,
    started: Instant,
    route: Option<Arc<Route>>,
    server: Option<Arc<Server>>,
    access: Option<Box<access::Entry>>,
    /// The request is a gRPC call: sluice's own answers must be gRPC's.
    grpc: bool,
}

impl Exchange<'_> {
    /// Whom an upstream connection is opened for (its PROXY header, when the
    /// upstream wants one): the client a trusted proxy named has no port of its own.
    fn proxied_for(&self) -> ProxiedFor {
        let client = if self.client == self.conn.client.ip() {
            self.conn.client
        } else {
            SocketAddr::new(self.client, 0)
        };
        ProxiedFor {
            client,
            local: self.conn.local,
        }
    }

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
        let (client, request_id) = match &conn.trusted {
            Some(trusted) => (
                trusted.client(req.headers(), conn.client.ip()),
                req.headers()
                    .get(&headers::X_REQUEST_ID)
                    .filter(|id| request_id::is_acceptable(id))
                    .cloned()
                    .unwrap_or_else(request_id::new),
            ),
            None => (conn.client.ip(), request_id::new()),
        };
        let entry = access.enabled.then(|| {
            Box::new(access::Entry {
                started: Instant::now(),
                listener: conn.listener.clone(),
                client: if conn.trusted.is_some() {
                    access::Client::Named(client)
                } else {
                    access::Client::Conn(conn.client)
                },
                request_id: request_id.clone(),
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
        });
        let mut x = Exchange {
            conn,
            client,
            request_id,
            started: Instant::now(),
            route: None,
            server: None,
            grpc: grpc::is_call(req.headers()),
            access: entry,
        };
        let method = req.method().clone();
        let mut resp = match self.serve(req, &mut x).await {
            Ok(resp) => resp,
            Err(error) => {
                let route = x.route.as_ref().map_or("-", |r| &*r.name);
                let server = x.server.as_ref().map_or("-", |s| &*s.name);
                let status = error.status();
                match error.origin() {
                    Origin::Client => tracing::info!(
                        client = %x.client, listener = %conn.listener, route, %method,
                        status = status.as_u16(), cause = %error, "request refused"
                    ),
                    Origin::Upstream => tracing::warn!(
                        client = %x.client, listener = %conn.listener, route, server, %method,
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
                    error.grpc_response().map(|b| b.with_access(entry))
                } else {
                    let entry = x.entry(status);
                    error.response().map(|b| b.with_access(entry))
                }
            }
        };
        // The client can quote it when it reports a problem.
        resp.headers_mut()
            .insert(headers::X_REQUEST_ID.clone(), x.request_id);
        resp
    }

    async fn serve(
        &self,
        req: Request<Incoming>,
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
            // Boxed: its state (3.2 KB) is the largest of this function's, and hyper
            // moves each request's future at least twice, plain requests too. Boxing
            // it took plain requests from 17.8 to 17.5 µs of CPU (medians of eight
            // benches/compare.sh-style runs) and left handshakes unchanged.
            return Box::pin(self.websocket(req, upgrade, host, &route, x, &timeouts, lifetime))
                .await;
        }

        // ---- rewrite, forward ----
        let plan = route
            .upstream
            .plan(req.headers(), req.uri().query(), x.client);
        let (mut parts, body) = req.into_parts();
        // A gRPC call's deadline bounds the wait for the response head too.
        let mut timeout = timeouts.upstream_response;
        let mut trailers = false;
        if x.grpc {
            timeout = grpc::timeout(&parts.headers).map_or(timeout, |t| t.min(timeout));
            trailers = headers::has_token(&parts.headers, &http::header::TE, "trailers");
        }
        rewrite_request(&mut parts, x.conn, host, upgrade, &x.request_id);
        if trailers && route.upstream.speaks_h2() {
            // TE is hop-by-hop, but `TE: trailers` is how a gRPC server knows its
            // client (here sluice, which passes trailers on) takes trailers.
            parts
                .headers
                .insert(http::header::TE, HeaderValue::from_static("trailers"));
        }
        let counted = x.access.as_ref().map(|e| e.bytes_in.clone());
        let req = Request::from_parts(parts, RequestBody::new(body, counted));
        let answer = match route
            .upstream
            .send(req, &plan, timeout, x.proxied_for())
            .await
        {
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
}
