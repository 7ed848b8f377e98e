//! Prometheus metrics: one registry per gateway, and typed per-listener, per-route and
//! per-upstream handles resolved once when the configuration is loaded.
//!
//! Label values come only from names in the configuration, never from request data,
//! so the number of series stays bounded. On the hot path a handle is an `Arc` to an
//! atomic: updating it takes no lock and allocates nothing (see `benches/metrics.rs`).

mod sizes;
pub mod websocket;

use std::sync::{Arc, OnceLock};

use crate::limits::Refusal;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// How a WebSocket handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeOutcome {
    /// The upstream sent a valid 101 and a tunnel opened.
    Upgraded,
    /// Refused: by sluice (bad handshake) or by the upstream (any answer but a valid 101).
    Rejected,
    /// No answer from the upstream: connect failure, timeout, reset.
    UpstreamError,
}

/// All of sluice's metrics.
pub struct Metrics {
    registry: Registry,
    connections_active: IntGaugeVec,
    connections_total: IntCounterVec,
    connections_refused: IntCounterVec,
    connections_negotiated: IntCounterVec,
    accept_exhausted: IntCounterVec,
    proxy_header_errors: IntCounterVec,
    tls_handshakes: IntCounterVec,
    tunnels_active: IntGaugeVec,
    handshakes: IntCounterVec,
    tunnel_bytes: IntCounterVec,
    tunnel_duration: HistogramVec,
    http_requests: IntCounterVec,
    grpc_responses: IntCounterVec,
    http_duration: HistogramVec,
    requests_refused: IntCounterVec,
    upstream_connect: HistogramVec,
    server_up: IntGaugeVec,
    reloads: IntCounterVec,
    config_info: IntGaugeVec,
    config_loaded: IntGauge,
    websocket: websocket::Families,
}

// Latency buckets in seconds, from a loopback hop (100 µs) to a slow backend (30 s).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
// Tunnel lifetimes in seconds, from a failed exchange to a day-long session.
const TUNNEL_BUCKETS: &[f64] = &[
    0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0,
];

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            registry
                .register(c)
                .expect("metric names are fixed and unique");
        };
        macro_rules! family {
            ($ty:ident, $name:expr, $help:expr, $labels:expr $(,)?) => {{
                let v = $ty::new(Opts::new($name, $help), $labels).expect("valid metric");
                reg(Box::new(v.clone()));
                v
            }};
        }
        macro_rules! hist {
            ($name:expr, $help:expr, $labels:expr, $buckets:expr $(,)?) => {{
                let v = HistogramVec::new(
                    HistogramOpts::new($name, $help).buckets($buckets.to_vec()),
                    $labels,
                )
                .expect("valid metric");
                reg(Box::new(v.clone()));
                v
            }};
        }
        let m = Metrics {
            connections_active: family!(
                IntGaugeVec,
                "sluice_connections_active",
                "Client connections open now, tunnels included.",
                &["listener"],
            ),
            connections_total: family!(
                IntCounterVec,
                "sluice_connections_total",
                "Client connections accepted.",
                &["listener"],
            ),
            connections_refused: family!(
                IntCounterVec,
                "sluice_connections_refused_total",
                "Client connections closed at accept because a limit was reached.",
                &["listener", "limit"],
            ),
            connections_negotiated: family!(
                IntCounterVec,
                "sluice_connections_negotiated_total",
                "Client connections by the HTTP version they speak (http1, h2).",
                &["listener", "protocol"],
            ),
            accept_exhausted: family!(
                IntCounterVec,
                "sluice_accept_exhausted_total",
                "Accepts that failed for want of file descriptors or memory (the listener backs off; connections wait in its queue).",
                &["listener"],
            ),
            proxy_header_errors: family!(
                IntCounterVec,
                "sluice_proxy_protocol_errors_total",
                "Connections closed on a listener with proxy_protocol = true for want of a valid PROXY header in time.",
                &["listener"],
            ),
            tls_handshakes: family!(
                IntCounterVec,
                "sluice_tls_handshakes_total",
                "TLS handshakes with clients, by result (ok or error).",
                &["listener", "result"],
            ),
            tunnels_active: family!(
                IntGaugeVec,
                "sluice_websocket_tunnels_active",
                "WebSocket tunnels open now.",
                &["route"],
            ),
            handshakes: family!(
                IntCounterVec,
                "sluice_websocket_handshakes_total",
                "WebSocket handshakes by outcome: upgraded, rejected or upstream_error.",
                &["route", "outcome"],
            ),
            tunnel_bytes: family!(
                IntCounterVec,
                "sluice_tunnel_bytes_total",
                "Bytes carried by tunnels, counted as they flow.",
                &["route", "direction"],
            ),
            tunnel_duration: hist!(
                "sluice_tunnel_duration_seconds",
                "How long tunnels stayed open.",
                &["route"],
                TUNNEL_BUCKETS
            ),
            http_requests: family!(
                IntCounterVec,
                "sluice_http_requests_total",
                "HTTP requests answered, by status (WebSocket handshakes not included).",
                &["route", "status"],
            ),
            grpc_responses: family!(
                IntCounterVec,
                "sluice_grpc_responses_total",
                "gRPC calls answered, by gRPC status (from the upstream's trailers or sluice's own answer).",
                &["route", "grpc_status"],
            ),
            http_duration: hist!(
                "sluice_http_request_duration_seconds",
                "From a request's head to its response's head.",
                &["route"],
                LATENCY_BUCKETS
            ),
            requests_refused: family!(
                IntCounterVec,
                "sluice_requests_refused_total",
                "Requests refused by a limit: handshakes_per_second_per_ip (429) or max_connections_per_server (503).",
                &["route", "limit"]
            ),
            server_up: family!(
                IntGaugeVec,
                "sluice_upstream_server_up",
                "1 when the server may get new traffic; 0 when ejected, failing its health checks, or removed.",
                &["upstream", "server"]
            ),
            reloads: family!(
                IntCounterVec,
                "sluice_config_reloads_total",
                "Configuration reloads by result (ok or error).",
                &["result"]
            ),
            config_info: family!(
                IntGaugeVec,
                "sluice_config_info",
                "The loaded configuration's hash (of the file's bytes); always 1.",
                &["hash"]
            ),
            config_loaded: {
                let g = IntGauge::new(
                    "sluice_config_loaded_timestamp_seconds",
                    "When the running configuration was loaded, in Unix time.",
                )
                .expect("valid metric");
                reg(Box::new(g.clone()));
                g
            },
            upstream_connect: hist!(
                "sluice_upstream_connect_duration_seconds",
                "Time to open a connection to an upstream server.",
                &["upstream"],
                LATENCY_BUCKETS
            ),
            websocket: websocket::Families::new(&registry),
            registry: registry.clone(),
        };
        for result in ["ok", "error"] {
            m.reloads.with_label_values(&[result]);
        }
        let build = IntGaugeVec::new(
            Opts::new("sluice_build_info", "The running build; always 1."),
            &["version"],
        )
        .expect("valid metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        reg(Box::new(build));
        #[cfg(target_os = "linux")]
        reg(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        m
    }

    /// The registry, for collectors added by other parts of sluice.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Everything in the Prometheus text format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        out
    }

    /// Handles for one listener.
    pub fn listener(&self, name: &str) -> ListenerMetrics {
        ListenerMetrics {
            active: self.connections_active.with_label_values(&[name]),
            total: self.connections_total.with_label_values(&[name]),
            refused: [
                Refusal::MaxConnections,
                Refusal::ListenerMaxConnections,
                Refusal::MaxConnectionsPerIp,
            ]
            .map(|r| {
                self.connections_refused
                    .with_label_values(&[name, r.as_str()])
            }),
            tls_ok: self.tls_handshakes.with_label_values(&[name, "ok"]),
            tls_error: self.tls_handshakes.with_label_values(&[name, "error"]),
            http1: self
                .connections_negotiated
                .with_label_values(&[name, "http1"]),
            h2: self.connections_negotiated.with_label_values(&[name, "h2"]),
            accept_exhausted: self.accept_exhausted.with_label_values(&[name]),
            proxy_header_errors: self.proxy_header_errors.with_label_values(&[name]),
        }
    }

    /// Handles for one route (routes that share a name share their series).
    pub fn route(&self, name: &str) -> RouteMetrics {
        let route = RouteMetrics {
            name: name.to_owned(),
            tunnels_active: self.tunnels_active.with_label_values(&[name]),
            upgraded: self.handshakes.with_label_values(&[name, "upgraded"]),
            rejected: self.handshakes.with_label_values(&[name, "rejected"]),
            upstream_error: self.handshakes.with_label_values(&[name, "upstream_error"]),
            client_to_upstream: self
                .tunnel_bytes
                .with_label_values(&[name, "client_to_upstream"]),
            upstream_to_client: self
                .tunnel_bytes
                .with_label_values(&[name, "upstream_to_client"]),
            tunnel_duration: self.tunnel_duration.with_label_values(&[name]),
            http_duration: self.http_duration.with_label_values(&[name]),
            refused_rate: self
                .requests_refused
                .with_label_values(&[name, "handshakes_per_second_per_ip"]),
            refused_full: self
                .requests_refused
                .with_label_values(&[name, "max_connections_per_server"]),
            http_requests: self.http_requests.clone(),
            by_status: Box::new([const { OnceLock::new() }; STATUS_SLOTS]),
            websocket: Arc::new(self.websocket.route(name)),
            grpc: Arc::new(GrpcStatuses {
                route: name.to_owned(),
                responses: self.grpc_responses.clone(),
                by_code: [const { OnceLock::new() }; GRPC_CODES],
            }),
        };
        // The statuses every route sees sooner or later exist from the start at 0, so
        // that the first one counted shows in rate() and in ratio alerts.
        for status in [
            http::StatusCode::OK,
            http::StatusCode::BAD_GATEWAY,
            http::StatusCode::GATEWAY_TIMEOUT,
        ] {
            route.status_counter(status);
        }
        route
    }

    /// The up gauge of one server.
    pub fn server_up(&self, upstream: &str, server: &str) -> IntGauge {
        self.server_up.with_label_values(&[upstream, server])
    }

    /// Removes a server that left the configuration from the up gauges.
    pub fn forget_server(&self, upstream: &str, server: &str) {
        let _ = self.server_up.remove_label_values(&[upstream, server]);
    }

    /// Counts a reload and, when it took, records the configuration now running.
    pub fn reloaded(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Records the configuration now running: its hash and when it was loaded.
    pub fn config_loaded(&self, hash: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[hash]).set(1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.config_loaded.set(now);
    }

    /// Handles for one upstream.
    pub fn upstream(&self, name: &str) -> UpstreamMetrics {
        UpstreamMetrics {
            connect_duration: self.upstream_connect.with_label_values(&[name]),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Per-listener handles.
#[derive(Clone)]
pub struct ListenerMetrics {
    pub active: IntGauge,
    pub total: IntCounter,
    refused: [IntCounter; 3],
    pub tls_ok: IntCounter,
    pub tls_error: IntCounter,
    /// Connections served as HTTP/1.1, and as HTTP/2.
    pub http1: IntCounter,
    pub h2: IntCounter,
    /// Accepts that failed for want of file descriptors or memory.
    pub accept_exhausted: IntCounter,
    /// Connections without a valid PROXY header in time.
    pub proxy_header_errors: IntCounter,
}

impl ListenerMetrics {
    /// The counter of connections `refusal` closed.
    pub fn refused(&self, refusal: Refusal) -> &IntCounter {
        &self.refused[refusal as usize]
    }
}

/// gRPC status codes 0..=16.
const GRPC_CODES: usize = 17;

/// One route's gRPC statuses, each counter created on first use; shared with the
/// response bodies that carry the statuses in their trailers.
pub struct GrpcStatuses {
    route: String,
    responses: IntCounterVec,
    by_code: [OnceLock<IntCounter>; GRPC_CODES],
}

impl GrpcStatuses {
    /// Counts one call answered with `code`.
    pub fn inc(&self, code: u16) {
        let Some(slot) = self.by_code.get(usize::from(code)) else {
            return;
        };
        slot.get_or_init(|| {
            self.responses
                .with_label_values(&[self.route.as_str(), &code.to_string()])
        })
        .inc();
    }
}

/// Status codes 100..=599, one lazily created counter each.
const STATUS_SLOTS: usize = 500;

/// Per-route handles.
pub struct RouteMetrics {
    name: String,
    pub tunnels_active: IntGauge,
    upgraded: IntCounter,
    rejected: IntCounter,
    upstream_error: IntCounter,
    pub client_to_upstream: IntCounter,
    pub upstream_to_client: IntCounter,
    pub tunnel_duration: Histogram,
    pub http_duration: Histogram,
    /// Handshakes refused by the per-client rate.
    pub refused_rate: IntCounter,
    /// Requests refused because every server was at its connection cap.
    pub refused_full: IntCounter,
    http_requests: IntCounterVec,
    /// gRPC statuses, counted where they are seen.
    pub grpc: Arc<GrpcStatuses>,
    /// Frames, messages and Closes of the route's tunnels.
    pub websocket: Arc<websocket::WsMetrics>,
    // The status label is bounded (100..=599) but too wide to create up front: each
    // slot is filled on first use, after which a request costs one atomic load and one
    // atomic add.
    by_status: Box<[OnceLock<IntCounter>; STATUS_SLOTS]>,
}

impl RouteMetrics {
    /// Counts one WebSocket handshake.
    pub fn handshake(&self, outcome: HandshakeOutcome) {
        match outcome {
            HandshakeOutcome::Upgraded => &self.upgraded,
            HandshakeOutcome::Rejected => &self.rejected,
            HandshakeOutcome::UpstreamError => &self.upstream_error,
        }
        .inc();
    }

    /// Counts one HTTP response by status.
    pub fn http_request(&self, status: http::StatusCode) {
        if let Some(c) = self.status_counter(status) {
            c.inc();
        }
    }

    fn status_counter(&self, status: http::StatusCode) -> Option<&IntCounter> {
        let slot = self
            .by_status
            .get(usize::from(status.as_u16()).wrapping_sub(100))?;
        Some(slot.get_or_init(|| {
            self.http_requests
                .with_label_values(&[self.name.as_str(), status.as_str()])
        }))
    }
}

/// Per-upstream handles.
#[derive(Clone)]
pub struct UpstreamMetrics {
    pub connect_duration: Histogram,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_its_labels() {
        let m = Metrics::new();
        let r = m.route("chat");
        r.handshake(HandshakeOutcome::Upgraded);
        r.http_request(http::StatusCode::NOT_FOUND);
        r.client_to_upstream.inc_by(5);
        m.listener("http").total.inc();
        m.upstream("chat").connect_duration.observe(0.001);
        let text = String::from_utf8(m.render()).unwrap();
        for needle in [
            "sluice_websocket_handshakes_total{outcome=\"upgraded\",route=\"chat\"} 1",
            "sluice_http_requests_total{route=\"chat\",status=\"404\"} 1",
            "sluice_tunnel_bytes_total{direction=\"client_to_upstream\",route=\"chat\"} 5",
            "sluice_connections_total{listener=\"http\"} 1",
            "sluice_upstream_connect_duration_seconds_count{upstream=\"chat\"} 1",
            "sluice_build_info{version=",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
