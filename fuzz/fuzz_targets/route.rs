//! `route::RouteTable`: a table built from fuzzed routes, asked for fuzzed hosts and
//! paths, against a plain statement of the rules: host routes (the host lowercased,
//! its port dropped) before any-host routes; among the routes whose prefix matches on
//! a segment boundary and whose subprotocol (if any) is offered, the longest prefix,
//! then one that asks for a subprotocol, then the first added.
//!
//! Input: lines of tab-separated fields. `route HOST PATH [SUBPROTOCOL]` adds a route
//! (HOST `*` for any host); `find HOST PATH [OFFERED...]` asks (HOST `-` for none), each
//! OFFERED field a `Sec-WebSocket-Protocol` line.
#![no_main]

use std::sync::{Arc, OnceLock};

use http::header::{HeaderMap, HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use libfuzzer_sys::fuzz_target;
use sluice::config::{Balance, Servers, Timeouts, UpstreamSettings};
use sluice::metrics::{Metrics, RouteMetrics};
use sluice::route::{self, Route, RouteTable};
use sluice::upstream::Upstream;

struct RouteIn {
    host: Option<String>,
    path: String,
    subprotocol: Option<String>,
}

/// One upstream and one set of route metrics for every route: building them per run
/// would grow the metrics registry without end.
fn shared() -> &'static (Arc<Upstream>, Arc<RouteMetrics>) {
    static SHARED: OnceLock<(Arc<Upstream>, Arc<RouteMetrics>)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let m = Metrics::new();
        let settings = UpstreamSettings {
            name: "fuzz".into(),
            servers: Servers::Addresses(Vec::new()),
            keepalive: 0,
            protocol: Default::default(),
            send_proxy_protocol: None,
            tls: None,
            balance: Balance::RoundRobin,
            max_connections_per_server: None,
            max_fails: 0,
            fail_timeout: std::time::Duration::from_secs(1),
            health_check: None,
            resolve_interval: std::time::Duration::from_secs(1),
        };
        let upstream = Upstream::new(
            &settings,
            Vec::new(),
            Timeouts::default(),
            Default::default(),
            m.upstream("fuzz"),
        )
        .expect("an upstream without TLS");
        (Arc::new(upstream), Arc::new(m.route("fuzz")))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (upstream, metrics) = shared();
    let mut routes = Vec::new();
    let mut queries = Vec::new();
    for line in text.lines() {
        let mut fields = line.split('\t');
        match fields.next() {
            Some("route") if routes.len() < 16 => {
                let host = fields.next().unwrap_or("*");
                routes.push(RouteIn {
                    host: (host != "*").then(|| host.to_owned()),
                    path: fields.next().unwrap_or("/").to_owned(),
                    subprotocol: fields.next().map(str::to_owned),
                });
            }
            Some("find") if queries.len() < 8 => {
                let host = fields.next().unwrap_or("-");
                let path = fields.next().unwrap_or("/");
                queries.push((
                    (host != "-").then_some(host),
                    path,
                    fields.collect::<Vec<_>>(),
                ));
            }
            _ => {}
        }
    }
    let mut table = RouteTable::default();
    for (i, r) in routes.iter_mut().enumerate() {
        // The table's contract: hosts come lowercase and without a port.
        r.host = r
            .host
            .as_deref()
            .map(|h| route::strip_port(h).to_ascii_lowercase());
        table.add(
            r.host.as_deref(),
            Route {
                name: i.to_string().into(),
                path: r.path.clone(),
                subprotocol: r.subprotocol.clone(),
                origins: None,
                upstream: upstream.clone(),
                metrics: metrics.clone(),
                websocket: Default::default(),
            },
        );
    }
    assert_eq!(table.all().count(), routes.len());

    for (host, path, offered) in queries {
        let mut headers = HeaderMap::new();
        for o in offered {
            if let Ok(v) = HeaderValue::from_str(o) {
                headers.append(SEC_WEBSOCKET_PROTOCOL, v);
            }
        }
        let offers = |p: &str| route::offers_subprotocol(&headers, p);
        let got = table
            .find(host, path, offers)
            .map(|r| r.name.parse::<usize>().unwrap());
        assert_eq!(got, reference(&routes, host, path, &offers));
    }
});

fn reference(
    routes: &[RouteIn],
    host: Option<&str>,
    path: &str,
    offers: &impl Fn(&str) -> bool,
) -> Option<usize> {
    let host = host
        .map(route::strip_port)
        .filter(|h| !h.is_empty())
        .map(str::to_ascii_lowercase);
    let best = |for_host: Option<&str>| {
        routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.host.as_deref() == for_host)
            .filter(|(_, r)| segment_prefix(&r.path, path))
            .filter(|(_, r)| r.subprotocol.as_deref().is_none_or(offers))
            .max_by_key(|(i, r)| (r.path.len(), r.subprotocol.is_some(), std::cmp::Reverse(*i)))
            .map(|(i, _)| i)
    };
    host.as_deref()
        .and_then(|h| best(Some(h)))
        .or_else(|| best(None))
}

/// `/ws` matches `/ws` and `/ws/...`; a prefix ending in `/` matches all below it.
fn segment_prefix(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}
