//! The routing table: from a request's host and path to a route, built once per
//! configuration and never changed after.

use std::collections::HashMap;
use std::sync::Arc;

use crate::metrics::RouteMetrics;
use crate::origin::OriginPolicy;
use crate::upstream::Upstream;

/// One route: where matching requests go, and its metrics.
pub struct Route {
    pub name: Arc<str>,
    /// The path prefix.
    pub path: String,
    /// Set when the route takes only WebSocket handshakes offering this subprotocol.
    pub subprotocol: Option<String>,
    /// Set when only these Origins may open WebSockets here.
    pub origins: Option<OriginPolicy>,
    pub upstream: Arc<Upstream>,
    pub metrics: Arc<RouteMetrics>,
    /// How the route's tunnels treat WebSocket frames.
    pub websocket: crate::config::WebSocket,
}

/// Routes by host, then any-host routes; each list longest prefix first.
#[derive(Default)]
pub struct RouteTable {
    by_host: HashMap<String, Vec<Arc<Route>>>,
    any_host: Vec<Arc<Route>>,
}

impl RouteTable {
    /// Adds a route for `host` (lowercase, no port) or for any host.
    pub fn add(&mut self, host: Option<&str>, route: Route) {
        let list = match host {
            Some(h) => self.by_host.entry(h.to_owned()).or_default(),
            None => &mut self.any_host,
        };
        list.push(Arc::new(route));
        // Longest prefix first; for one prefix, routes that ask for a subprotocol
        // before those that take anything. Stable: otherwise the configuration's order.
        list.sort_by_key(|r| (std::cmp::Reverse(r.path.len()), r.subprotocol.is_none()));
    }

    /// The route for a request: host-specific routes first, then any-host routes; in
    /// each, the longest matching path prefix.
    ///
    /// `host` is the Host header or URI authority as received: its port is ignored and
    /// so is letter case. `offers` says whether the request is a WebSocket handshake
    /// offering a subprotocol; routes that require one match only such requests.
    pub fn find(
        &self,
        host: Option<&str>,
        path: &str,
        offers: impl Fn(&str) -> bool,
    ) -> Option<&Arc<Route>> {
        if let Some(host) = host.map(strip_port).filter(|h| !h.is_empty()) {
            let routes = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                self.by_host.get(&host.to_ascii_lowercase())
            } else {
                self.by_host.get(host)
            };
            if let Some(r) = routes.and_then(|routes| longest_prefix(routes, path, &offers)) {
                return Some(r);
            }
        }
        longest_prefix(&self.any_host, path, &offers)
    }

    /// Every route, for reloads and metrics.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.by_host.values().flatten().chain(&self.any_host)
    }
}

fn longest_prefix<'a>(
    routes: &'a [Arc<Route>],
    path: &str,
    offers: &impl Fn(&str) -> bool,
) -> Option<&'a Arc<Route>> {
    routes
        .iter()
        .find(|r| prefix_matches(&r.path, path) && r.subprotocol.as_deref().is_none_or(offers))
}

/// Whether a handshake's `Sec-WebSocket-Protocol` headers offer `protocol` (exactly:
/// subprotocol names are case-sensitive).
pub fn offers_subprotocol(headers: &http::HeaderMap, protocol: &str) -> bool {
    headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii() == protocol.as_bytes())
        })
}

/// Whether `prefix` matches `path` on segment boundaries: `/ws` matches `/ws` and
/// `/ws/chat` but not `/wsx`; a prefix ending in `/` matches everything below it.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes()[prefix.len()] == b'/')
}

/// `example.com:8080` -> `example.com`, `[::1]:80` -> `[::1]`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Balance, Servers, Timeouts, UpstreamSettings};
    use crate::metrics::Metrics;

    fn table(routes: &[(Option<&str>, &str, &str, Option<&str>)]) -> RouteTable {
        let m = Metrics::new();
        let mut t = RouteTable::default();
        for (host, path, name, subprotocol) in routes {
            let settings = UpstreamSettings {
                name: name.to_string(),
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
            let upstream = Arc::new(
                Upstream::new(
                    &settings,
                    Vec::new(),
                    Timeouts::default(),
                    Default::default(),
                    m.upstream(name),
                )
                .unwrap(),
            );
            t.add(
                *host,
                Route {
                    name: name.to_string().into(),
                    path: path.to_string(),
                    subprotocol: subprotocol.map(str::to_owned),
                    origins: None,
                    upstream,
                    metrics: Arc::new(m.route(name)),
                    websocket: Default::default(),
                },
            );
        }
        t
    }

    fn found(t: &RouteTable, host: Option<&str>, path: &str) -> Option<String> {
        t.find(host, path, |_| false).map(|r| r.name.to_string())
    }

    #[test]
    fn host_routes_win_then_longest_prefix() {
        let t = table(&[
            (None, "/", "root", None),
            (None, "/ws", "ws", None),
            (Some("chat.example.com"), "/", "chat", None),
            (Some("chat.example.com"), "/ws/admin", "chat-admin", None),
        ]);
        assert_eq!(
            found(&t, Some("chat.example.com"), "/ws"),
            Some("chat".into())
        );
        assert_eq!(
            found(&t, Some("Chat.Example.com:8443"), "/ws/admin/x"),
            Some("chat-admin".into())
        );
        assert_eq!(found(&t, Some("other"), "/ws/x"), Some("ws".into()));
        assert_eq!(found(&t, Some("other"), "/wsx"), Some("root".into()));
        assert_eq!(found(&t, None, "/"), Some("root".into()));
    }

    #[test]
    fn host_routes_fall_back_to_any_host() {
        let t = table(&[
            (Some("a.example"), "/api", "a-api", None),
            (None, "/", "any", None),
        ]);
        assert_eq!(found(&t, Some("a.example"), "/other"), Some("any".into()));
    }

    #[test]
    fn no_match_is_none() {
        let t = table(&[(None, "/ws", "ws", None)]);
        assert_eq!(found(&t, Some("x"), "/"), None);
        assert_eq!(found(&t, Some("x"), "/wss"), None);
    }

    #[test]
    fn subprotocol_routes_take_only_handshakes_offering_it() {
        let t = table(&[
            (None, "/ws", "generic", None),
            (None, "/ws", "mqtt", Some("mqtt")),
            (None, "/ws", "stomp", Some("v12.stomp")),
        ]);
        let pick = |offered: &[&str]| {
            t.find(None, "/ws", |p| offered.contains(&p))
                .map(|r| r.name.to_string())
        };
        assert_eq!(pick(&["mqtt"]), Some("mqtt".into()));
        assert_eq!(
            pick(&["v12.stomp", "mqtt"]).as_deref(),
            Some("mqtt"),
            "configuration order among matches"
        );
        assert_eq!(pick(&["v12.stomp"]), Some("stomp".into()));
        assert_eq!(pick(&["other"]), Some("generic".into()));
        assert_eq!(pick(&[]), Some("generic".into()));
    }

    #[test]
    fn offered_subprotocols_are_read_from_every_header_line() {
        let mut h = http::HeaderMap::new();
        h.append(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            "graphql-ws, mqtt".parse().unwrap(),
        );
        h.append(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            "wamp".parse().unwrap(),
        );
        assert!(offers_subprotocol(&h, "mqtt"));
        assert!(offers_subprotocol(&h, "wamp"));
        assert!(!offers_subprotocol(&h, "MQTT"));
    }

    #[test]
    fn ports_are_stripped_from_names_and_ipv6_literals() {
        assert_eq!(strip_port("example.com:80"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}
