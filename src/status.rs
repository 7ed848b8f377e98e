//! What the admin listener's status page and `/status` show: the gateway's shape
//! (listeners, routes, upstreams and their servers), kept current by the gateway at
//! start and on every reload, read together with the live counters of the metrics
//! registry and the servers' own health.
//!
//! Nothing secret goes in: no keys, no certificates' contents, no request headers,
//! no admin token.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus::proto::MetricType;
use serde_json::{Value, json};

use crate::config::{ListenerSettings, RouteSettings, Settings, UpstreamProtocol};
use crate::metrics::Metrics;
use crate::upstream::Upstream;

/// The gateway's shape and history, shared with the admin listener.
pub struct StatusBoard {
    started: Instant,
    started_at: SystemTime,
    inner: Mutex<Board>,
}

struct Board {
    config_hash: String,
    config_path: String,
    loaded_at: SystemTime,
    last_reload: Option<Reload>,
    token: Option<String>,
    listeners: Vec<(ListenerSettings, SocketAddr)>,
    routes: Vec<RouteSettings>,
    /// Route index → upstream name, from the settings.
    upstream_names: Vec<String>,
    upstreams: Vec<Arc<Upstream>>,
}

struct Reload {
    at: SystemTime,
    ok: bool,
    errors: Vec<String>,
}

impl StatusBoard {
    pub fn new(settings: &Settings) -> StatusBoard {
        StatusBoard {
            started: Instant::now(),
            started_at: SystemTime::now(),
            inner: Mutex::new(Board {
                config_hash: settings.hash.clone(),
                config_path: settings.source.display().to_string(),
                loaded_at: SystemTime::now(),
                last_reload: None,
                token: settings.admin_token.clone(),
                listeners: Vec::new(),
                routes: Vec::new(),
                upstream_names: Vec::new(),
                upstreams: Vec::new(),
            }),
        }
    }

    fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Installs the shape of a configuration now running.
    pub fn install(
        &self,
        settings: &Settings,
        listeners: Vec<(ListenerSettings, SocketAddr)>,
        upstreams: Vec<Arc<Upstream>>,
    ) {
        let mut b = self.board();
        b.config_hash = settings.hash.clone();
        b.config_path = settings.source.display().to_string();
        b.loaded_at = SystemTime::now();
        b.token = settings.admin_token.clone();
        b.listeners = listeners;
        b.routes = settings.routes.clone();
        b.upstream_names = settings
            .routes
            .iter()
            .map(|r| settings.upstreams[r.upstream].name.clone())
            .collect();
        b.upstreams = upstreams;
    }

    /// Records a reload's result; `errors` are a refused one's problems, one each.
    pub fn reloaded(&self, ok: bool, errors: Vec<String>) {
        self.board().last_reload = Some(Reload {
            at: SystemTime::now(),
            ok,
            errors,
        });
    }

    /// The admin token the current configuration sets.
    pub fn token(&self) -> Option<String> {
        self.board().token.clone()
    }

    /// Everything, as the JSON `/status` serves.
    pub fn json(&self, metrics: &Metrics, draining: bool) -> Value {
        let counters = Counters::read(metrics);
        let b = self.board();
        let listeners: Vec<Value> = b
            .listeners
            .iter()
            .map(|(l, addr)| {
                let name = l.name.as_str();
                json!({
                    "name": name,
                    "address": addr.to_string(),
                    "tls": l.tls.is_some(),
                    "http2": l.http2,
                    "proxy_protocol": l.proxy_protocol,
                    "connections_open": counters.get("sluice_connections_active", &[("listener", name)]),
                    "connections_total": counters.get("sluice_connections_total", &[("listener", name)]),
                    "protocols": {
                        "http1": counters.get("sluice_connections_negotiated_total", &[("listener", name), ("protocol", "http1")]),
                        "h2": counters.get("sluice_connections_negotiated_total", &[("listener", name), ("protocol", "h2")]),
                    },
                })
            })
            .collect();
        let routes: Vec<Value> = b
            .routes
            .iter()
            .zip(&b.upstream_names)
            .map(|(r, upstream)| {
                let name = r.name.as_str();
                let handshakes = |outcome| {
                    counters.get(
                        "sluice_websocket_handshakes_total",
                        &[("route", name), ("outcome", outcome)],
                    )
                };
                json!({
                    "name": name,
                    "host": r.host,
                    "path": r.path,
                    "subprotocol": r.subprotocol,
                    "upstream": upstream,
                    "tunnels_open": counters.get("sluice_websocket_tunnels_active", &[("route", name)]),
                    "handshakes": {
                        "upgraded": handshakes("upgraded"),
                        "rejected": handshakes("rejected"),
                        "upstream_error": handshakes("upstream_error"),
                    },
                    "requests": counters.status_classes(name),
                    "bytes": {
                        "client_to_upstream": counters.get("sluice_tunnel_bytes_total", &[("route", name), ("direction", "client_to_upstream")]),
                        "upstream_to_client": counters.get("sluice_tunnel_bytes_total", &[("route", name), ("direction", "upstream_to_client")]),
                    },
                })
            })
            .collect();
        let upstreams: Vec<Value> = b
            .upstreams
            .iter()
            .map(|u| {
                let servers: Vec<Value> = u
                    .servers()
                    .iter()
                    .map(|s| {
                        let h = s.health();
                        json!({
                            "name": &*s.name,
                            "addresses": s.addrs().map(|a| a.to_string()).collect::<Vec<_>>(),
                            "up": s.is_up(),
                            "weight": s.weight(),
                            "ejected_for_seconds": h.ejected_for.as_secs_f64(),
                            "failed_connects": h.failed_connects,
                            "health_checks_failing": h.checks_failing,
                            "in_use": s.load(),
                        })
                    })
                    .collect();
                json!({
                    "name": &*u.name,
                    "protocol": match u.protocol() {
                        UpstreamProtocol::Http1 => "http1",
                        UpstreamProtocol::H2 => "h2",
                    },
                    "servers": servers,
                })
            })
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "started_at": unix(self.started_at),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "draining": draining,
            "config": {
                "path": b.config_path,
                "hash": b.config_hash,
                "loaded_at": unix(b.loaded_at),
                "last_reload": b.last_reload.as_ref().map(|r| json!({
                    "at": unix(r.at),
                    "ok": r.ok,
                    "errors": r.errors,
                })),
            },
            "listeners": listeners,
            "routes": routes,
            "upstreams": upstreams,
        })
    }
}

/// Seconds since the Unix epoch.
fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// One series: its labels and value.
type Series = (Vec<(String, String)>, f64);

/// One reading of the registry: each series by its metric's name.
struct Counters {
    series: HashMap<String, Vec<Series>>,
}

impl Counters {
    fn read(metrics: &Metrics) -> Counters {
        let mut series: HashMap<String, Vec<_>> = HashMap::new();
        for family in metrics.registry().gather() {
            let kind = family.get_field_type();
            let entry = series.entry(family.name().to_owned()).or_default();
            for m in family.get_metric() {
                let labels = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name().to_owned(), l.value().to_owned()))
                    .collect();
                let value = match kind {
                    MetricType::COUNTER => m.get_counter().value(),
                    MetricType::GAUGE => m.get_gauge().value(),
                    _ => continue,
                };
                entry.push((labels, value));
            }
        }
        Counters { series }
    }

    /// The value of the series `name` whose labels include `labels`; 0 when none.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series.get(name).map_or(0.0, |all| {
            all.iter()
                .filter(|(have, _)| {
                    labels
                        .iter()
                        .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
                })
                .map(|(_, v)| v)
                .sum()
        })
    }

    /// A route's requests by status class.
    fn status_classes(&self, route: &str) -> Value {
        let mut classes = [0.0; 5];
        for (labels, v) in self
            .series
            .get("sluice_http_requests_total")
            .into_iter()
            .flatten()
        {
            let mine = labels.iter().any(|(k, v)| k == "route" && v == route);
            let class = labels
                .iter()
                .find(|(k, _)| k == "status")
                .and_then(|(_, s)| s.as_bytes().first())
                .map(|d| d.wrapping_sub(b'1') as usize);
            if let (true, Some(c)) = (mine, class)
                && c < 5
            {
                classes[c] += v;
            }
        }
        json!({
            "1xx": classes[0], "2xx": classes[1], "3xx": classes[2],
            "4xx": classes[3], "5xx": classes[4],
        })
    }
}
