//! The request service, as ordered steps: check -> route -> rewrite -> forward ->
//! respond. WebSocket handshakes take the same road to the upstream and open a tunnel
//! only on a checked `101`.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::body::ProxyBody;
use crate::conn::ConnInfo;
use crate::error::{Origin, ProxyError};
use crate::handshake::{self, Upgrade};
use crate::headers;
use crate::metrics::HandshakeOutcome;
use crate::route::{Route, RouteTable};
use crate::shutdown::Shutdown;
use crate::tunnel;

/// What requests are served with; replaced whole on reload, so a request sees either
/// the old or the new configuration, never half of each.
pub struct State {
    pub routes: RouteTable,
    pub timeouts: crate::config::Timeouts,
}

/// The request service shared by every connection.
pub struct Proxy {
    state: ArcSwap<State>,
    shutdown: Shutdown,
}

/// A failed request: the error, and what is known of where it was going.
struct Failure {
    error: ProxyError,
    route: Option<Arc<Route>>,
    server: Option<String>,
}

impl From<ProxyError> for Failure {
    fn from(error: ProxyError) -> Self {
        Failure {
            error,
            route: None,
            server: None,
        }
    }
}

impl Proxy {
    pub fn new(state: State, shutdown: Shutdown) -> Proxy {
        Proxy {
            state: ArcSwap::from_pointee(state),
            shutdown,
        }
    }

    /// Installs a new state; requests already routed finish on the old one.
    pub fn replace(&self, state: State) {
        self.state.store(Arc::new(state));
    }

    /// Serves one request. Never fails: every error becomes its response.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        conn: &Arc<ConnInfo>,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        match self.serve(req, conn, started).await {
            Ok(resp) => resp,
            Err(f) => {
                let route = f.route.as_ref().map_or("-", |r| r.name.as_str());
                let server = f.server.as_deref().unwrap_or("-");
                match f.error.origin() {
                    Origin::Client => tracing::info!(
                        client = %conn.client, listener = %conn.listener, route, %method, path,
                        status = f.error.status().as_u16(), cause = %f.error, "request refused"
                    ),
                    Origin::Upstream => tracing::warn!(
                        client = %conn.client, listener = %conn.listener, route, server, %method, path,
                        status = f.error.status().as_u16(), cause = %f.error, "upstream failure"
                    ),
                }
                f.error.response()
            }
        }
    }

    async fn serve(
        &self,
        mut req: Request<Incoming>,
        conn: &Arc<ConnInfo>,
        started: Instant,
    ) -> Result<Response<ProxyBody>, Failure> {
        if req.method() == Method::CONNECT {
            return Err(
                ProxyError::MethodNotAllowed("CONNECT: this is not a forward proxy").into(),
            );
        }
        let host = request_host(&req)?;
        if let Some(port) = conn.listener.redirect_https {
            return Ok(redirect_to_https(&req, host.as_ref(), port));
        }
        if has_dot_segments(req.uri().path()) {
            return Err(ProxyError::BadRequest("the path has `.` or `..` segments").into());
        }
        let upgrade = handshake::classify(req.method(), req.headers());

        let (route, timeouts) = {
            let state = self.state.load();
            let host = host.as_ref().and_then(|h| h.to_str().ok());
            let route = state.routes.find(host, req.uri().path()).cloned();
            (route, state.timeouts)
        };
        let Some(route) = route else {
            return Err(ProxyError::NoRoute.into());
        };
        let fail = |error: ProxyError| Failure {
            error,
            route: Some(route.clone()),
            server: None,
        };

        if upgrade == Upgrade::WebSocket {
            let key = match handshake::check_request(req.version(), req.headers()) {
                Ok(k) => <[u8; 24]>::try_from(k).expect("a checked key is 24 bytes"),
                Err(e) => {
                    route.metrics.handshake(HandshakeOutcome::Rejected);
                    return Err(fail(e));
                }
            };
            let client_upgrade = hyper::upgrade::on(&mut req);
            let (mut parts, body) = req.into_parts();
            rewrite_request(&mut parts, conn, host, Upgrade::WebSocket);
            return self
                .handshake(
                    Request::from_parts(parts, body),
                    key,
                    client_upgrade,
                    &route,
                    conn,
                    tunnel::Timers {
                        idle: timeouts.idle,
                        half_closed: timeouts.half_closed,
                    },
                )
                .await;
        }

        let (mut parts, body) = req.into_parts();
        rewrite_request(&mut parts, conn, host, upgrade);
        let result = route.upstream.send(Request::from_parts(parts, body)).await;
        let answer = match result {
            Ok(a) => a,
            Err(e) => {
                route.metrics.http_request(e.status());
                route
                    .metrics
                    .http_duration
                    .observe(started.elapsed().as_secs_f64());
                return Err(fail(e));
            }
        };
        let (mut parts, body) = answer.response.into_parts();
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            // Passing this on would switch the client's connection to a protocol
            // nobody agreed to; the upstream connection is dropped, not pooled.
            route.metrics.http_request(StatusCode::BAD_GATEWAY);
            return Err(Failure {
                error: ProxyError::UnexpectedUpgrade,
                route: Some(route),
                server: Some(answer.server.name.clone()),
            });
        }
        headers::remove_hop_by_hop(&mut parts.headers);
        route.metrics.http_request(parts.status);
        route
            .metrics
            .http_duration
            .observe(started.elapsed().as_secs_f64());
        Ok(Response::from_parts(
            parts,
            ProxyBody::upstream(body, Some(answer.checkin)),
        ))
    }

    /// Forwards a checked WebSocket handshake and, on a valid 101, answers the client
    /// with it and starts the tunnel.
    async fn handshake(
        &self,
        req: Request<Incoming>,
        key: [u8; 24],
        client_upgrade: hyper::upgrade::OnUpgrade,
        route: &Arc<Route>,
        conn: &Arc<ConnInfo>,
        timers: tunnel::Timers,
    ) -> Result<Response<ProxyBody>, Failure> {
        let (mut resp, server) = match route.upstream.send_upgrade(req).await {
            Ok(r) => r,
            Err(error) => {
                route.metrics.handshake(HandshakeOutcome::UpstreamError);
                return Err(Failure {
                    error,
                    route: Some(route.clone()),
                    server: None,
                });
            }
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            // The upstream refused: its answer goes back as an ordinary response, the
            // client's connection stays HTTP, and the upstream connection is closed
            // once the body is through.
            route.metrics.handshake(HandshakeOutcome::Rejected);
            tracing::info!(
                client = %conn.client, route = %route.name, server = %server.name,
                status = resp.status().as_u16(), "upstream refused the WebSocket handshake"
            );
            let (mut parts, body) = resp.into_parts();
            headers::remove_hop_by_hop(&mut parts.headers);
            return Ok(Response::from_parts(parts, ProxyBody::upstream(body, None)));
        }
        if let Err(error) = handshake::check_response(resp.status(), resp.headers(), &key) {
            route.metrics.handshake(HandshakeOutcome::Rejected);
            return Err(Failure {
                error,
                route: Some(route.clone()),
                server: Some(server.name.clone()),
            });
        }
        route.metrics.handshake(HandshakeOutcome::Upgraded);

        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let (mut parts, _) = resp.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers);
        headers::set_websocket_upgrade(&mut parts.headers);
        parts.version = Version::HTTP_11;

        let route = route.clone();
        let conn = conn.clone();
        let shutdown = self.shutdown.clone();
        self.shutdown.spawn(async move {
            let (client, upstream) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::debug!(client = %conn.client, route = %route.name, error = %e, "upgrade did not complete");
                    return;
                }
            };
            run_tunnel(client, upstream, &route, &conn, &server.name, timers, &shutdown).await;
        });
        Ok(Response::from_parts(parts, ProxyBody::empty()))
    }
}

/// Runs one tunnel to its end and logs how it ended.
async fn run_tunnel(
    client: hyper::upgrade::Upgraded,
    upstream: hyper::upgrade::Upgraded,
    route: &Route,
    conn: &ConnInfo,
    server: &str,
    timers: tunnel::Timers,
    shutdown: &Shutdown,
) {
    let started = Instant::now();
    let metrics = &route.metrics;
    metrics.tunnels_active.inc();
    let counters = tunnel::Counters {
        client_to_upstream: metrics.client_to_upstream.clone(),
        upstream_to_client: metrics.upstream_to_client.clone(),
    };
    let report = tunnel::run(
        TokioIo::new(client),
        TokioIo::new(upstream),
        timers,
        counters,
        shutdown.stopped(),
    )
    .await;
    let duration = started.elapsed();
    metrics.tunnel_duration.observe(duration.as_secs_f64());
    metrics.tunnels_active.dec();
    tracing::debug!(
        client = %conn.client, listener = %conn.listener, route = %route.name, server,
        end = report.end.as_str(), client_to_upstream = report.client_to_upstream,
        upstream_to_client = report.upstream_to_client, duration_ms = duration.as_millis() as u64,
        "tunnel closed"
    );
}

/// A `308 Permanent Redirect` to the same host and target on `https://`: 308 rather
/// than 301 so that clients repeat the method and body.
fn redirect_to_https(
    req: &Request<Incoming>,
    host: Option<&HeaderValue>,
    port: u16,
) -> Response<ProxyBody> {
    let host = host
        .and_then(|h| h.to_str().ok())
        .map(crate::route::strip_port);
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        return ProxyError::BadRequest("a redirect to HTTPS needs a Host header").response();
    };
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 {
        format!("https://{host}{target}")
    } else {
        format!("https://{host}:{port}{target}")
    };
    let mut resp = Response::new(ProxyBody::full(Bytes::from_static(b"moved to https\n")));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        Err(_) => {
            return ProxyError::BadRequest("the request target cannot be redirected").response();
        }
    }
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The host a request is for: the authority of an absolute-form target, else the Host
/// header. HTTP/1.1 requires one (RFC 9112 §3.2).
fn request_host(req: &Request<Incoming>) -> Result<Option<HeaderValue>, ProxyError> {
    if let Some(auth) = req.uri().authority() {
        return HeaderValue::from_str(auth.as_str())
            .map(Some)
            .map_err(|_| ProxyError::BadRequest("the request target's host is not valid"));
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(h), None) => Ok(Some(h.clone())),
        (Some(_), Some(_)) => Err(ProxyError::BadRequest("more than one Host header")),
        (None, _) if req.version() == Version::HTTP_11 => {
            Err(ProxyError::BadRequest("HTTP/1.1 requires a Host header"))
        }
        (None, _) => Ok(None),
    }
}

/// Rewrites a client's request head into the one sent upstream: origin-form target,
/// HTTP/1.1, no hop-by-hop headers, the forwarding headers set, and the upgrade
/// headers again for a WebSocket handshake.
fn rewrite_request(
    parts: &mut Parts,
    conn: &ConnInfo,
    host: Option<HeaderValue>,
    upgrade: Upgrade,
) {
    if parts.uri.authority().is_some() {
        // An absolute-form target names the host; the upstream gets origin-form and a
        // Host header that agrees with it.
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse::<Uri>()
            .unwrap_or_else(|_| Uri::from_static("/"));
        parts.uri = path;
        if let Some(h) = &host {
            parts.headers.insert(header::HOST, h.clone());
        }
    }
    headers::remove_hop_by_hop(&mut parts.headers);
    if upgrade == Upgrade::WebSocket {
        headers::set_websocket_upgrade(&mut parts.headers);
    }
    headers::set_forwarded(&mut parts.headers, &conn.forwarded, host.as_ref());
    parts.version = Version::HTTP_11;
    // Nothing the client's connection attached (a pending upgrade of a refused `h2c`
    // request, say) belongs to the upstream request.
    parts.extensions = http::Extensions::new();
}

/// Whether a path has `.` or `..` segments, plain or percent-encoded. Routing matches
/// prefixes, so `/public/../admin` must not be routed as `/public`; browsers never send
/// such paths, so they are refused rather than rewritten.
fn has_dot_segments(path: &str) -> bool {
    path.split('/').any(|seg| {
        let b = seg.as_bytes();
        if b.is_empty() || b.len() > 6 || !(b[0] == b'.' || b[0] == b'%') {
            return false;
        }
        let mut dots = 0;
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'.' {
                i += 1;
            } else if b.len() >= i + 3
                && b[i] == b'%'
                && b[i + 1] == b'2'
                && (b[i + 2] | 0x20) == b'e'
            {
                i += 3;
            } else {
                return false;
            }
            dots += 1;
        }
        dots <= 2
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_found_plain_and_encoded() {
        for p in [
            "/a/../b",
            "/a/./b",
            "/..",
            "/a/%2e%2e/b",
            "/a/%2E./b",
            "/a/.%2e",
        ] {
            assert!(has_dot_segments(p), "{p}");
        }
        for p in [
            "/",
            "/a/b",
            "/a/...",
            "/a/.well-known/x",
            "/a/%2e%2e%2e",
            "/a/b.",
        ] {
            assert!(!has_dot_segments(p), "{p}");
        }
    }
}
