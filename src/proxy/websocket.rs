//! WebSockets in the request service: the handshake's checks, forwarding it, answering
//! the client once the upstream accepted (a 101 over HTTP/1.1, a 200 on the stream
//! over HTTP/2), and the tunnel's task with its report.

use std::future::Future;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use http::header::HeaderValue;
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use super::{ClientBody, Exchange, Proxy};
use crate::access;
use crate::body::{ProxyBody, RequestBody};
use crate::client::{ConnInfo, Held};
use crate::config::Timeouts;
use crate::error::ProxyError;
use crate::handshake::{self, Upgrade};
use crate::headers;
use crate::metrics::HandshakeOutcome;
use crate::request::rewrite_request;
use crate::route::Route;
use crate::shutdown::Shutdown;
use crate::tunnel;
use crate::upstream::LoadGuard;

impl Proxy {
    /// Serves a request that opens a WebSocket: checked here, then forwarded.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn websocket(
        &self,
        mut req: Request<Incoming>,
        upgrade: Upgrade,
        host: Option<HeaderValue>,
        route: &Arc<Route>,
        x: &mut Exchange<'_>,
        timeouts: &Timeouts,
        lifetime: Option<Duration>,
    ) -> Result<Response<ClientBody>, ProxyError> {
        let key = match self.check_handshake(&req, upgrade, route, x.client) {
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
        let handshake = Handshake {
            upgrade,
            key,
            client_upgrade,
            limits,
        };
        self.handshake(req, host, handshake, route, x).await
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
        client: IpAddr,
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
        if !self.limits.allow_handshake(client) {
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
            .plan(req.headers(), req.uri().query(), x.client);
        let (mut parts, body) = req.into_parts();
        rewrite_request(&mut parts, x.conn, host, upgrade, &x.request_id);
        if upgrade == Upgrade::WebSocketH2 {
            parts.headers.insert(
                http::header::SEC_WEBSOCKET_KEY,
                HeaderValue::from_bytes(&key).expect("base64 is a valid header value"),
            );
        }
        let req = Request::from_parts(parts, RequestBody::new(body, None));
        let (mut resp, load) = match route
            .upstream
            .send_upgrade(req, &plan, x.proxied_for())
            .await
        {
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
                client = %x.client, route = %route.name, server = %server.name,
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
        let ws = frames_setup(route, resp.headers());

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
            ws,
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
    /// Frame tracking, unless turned off.
    ws: Option<tunnel::WsSetup>,
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
            ws,
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
            ws: ws.map(|_| metrics.websocket.clone()),
        };
        let stops = tunnel::Stops {
            token: load.server().ending(),
            draining: shutdown.drain_token().clone(),
            drain: shutdown.stop_token().clone(),
            spread: limits.drain,
            lifetime: limits.lifetime,
        };
        let running = Running {
            tunnel: tunnel::run_upgraded(client, upstream, limits.timers, counters, stops, ws),
            tracked: ws.is_some(),
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
        // Whether the tunnel tracks frames.
        tracked: bool,
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
        if *this.tracked && report.close.is_none() && !report.vanished {
            // TCP ended with no Close either way (what a client sees as 1006).
            route.metrics.websocket.close(None, report.end.by());
        }
        if let Some(entry) = this.access.take() {
            entry.finish_tunnel(access::TunnelEnd {
                client_to_upstream: report.client_to_upstream,
                upstream_to_client: report.upstream_to_client,
                end: report.end.as_str(),
                close: report.close.map(|(code, from)| (code, from.as_str())),
                messages: this.tracked.then_some(report.messages),
            });
        }
        Poll::Ready(())
    }
}

/// The frame tracking a route's tunnels get, with the extensions the upstream's 101
/// (or 2xx) agreed to; `None` when tracking is off (`SLUICE_WS_FRAMES=0`).
fn frames_setup(route: &Route, headers: &http::HeaderMap) -> Option<tunnel::WsSetup> {
    if !tunnel::frames_enabled() {
        return None;
    }
    let w = &route.websocket;
    Some(tunnel::WsSetup {
        frames: tunnel::ws::Setup {
            rsv: tunnel::ws::Rsv::from_headers(headers),
            limits: tunnel::frames::Limits {
                max_frame: w.max_frame_bytes.unwrap_or(u64::MAX),
                max_message: w.max_message_bytes.unwrap_or(u64::MAX),
            },
            close_code: w.close_code,
            max_messages_per_second: w.max_messages_per_second,
        },
        close_timeout: w.close_timeout,
        ping: w.ping_interval.map(|interval| (interval, w.ping_timeout)),
    })
}
