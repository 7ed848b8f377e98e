//! The routing table: from a request's host and path to a route, built once per
//! configuration and never changed after.

use std::collections::HashMap;
use std::sync::Arc;

use crate::metrics::RouteMetrics;
use crate::upstream::Upstream;

/// One route: where matching requests go, and its metrics.
pub struct Route {
    pub name: Arc<str>,
    /// The path prefix.
    pub path: String,
    pub upstream: Arc<Upstream>,
    pub metrics: Arc<RouteMetrics>,
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
        // Stable: among equal lengths the configuration's order stays.
        list.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
    }

    /// The route for a request: host-specific routes first, then any-host routes; in
    /// each, the longest matching path prefix.
    ///
    /// `host` is the Host header or URI authority as received: its port is ignored and
    /// so is letter case.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        if let Some(host) = host.map(strip_port).filter(|h| !h.is_empty()) {
            let routes = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                self.by_host.get(&host.to_ascii_lowercase())
            } else {
                self.by_host.get(host)
            };
            if let Some(r) = routes.and_then(|routes| longest_prefix(routes, path)) {
                return Some(r);
            }
        }
        longest_prefix(&self.any_host, path)
    }
}

fn longest_prefix<'a>(routes: &'a [Arc<Route>], path: &str) -> Option<&'a Arc<Route>> {
    routes.iter().find(|r| prefix_matches(&r.path, path))
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
    use crate::config::Timeouts;
    use crate::metrics::Metrics;

    fn table(routes: &[(Option<&str>, &str, &str)]) -> RouteTable {
        let m = Metrics::new();
        let mut t = RouteTable::default();
        for (host, path, name) in routes {
            let upstream = Arc::new(
                Upstream::new(
                    name.to_string(),
                    &[],
                    0,
                    Timeouts::default(),
                    None,
                    m.upstream(name),
                )
                .unwrap(),
            );
            t.add(
                *host,
                Route {
                    name: name.to_string().into(),
                    path: path.to_string(),
                    upstream,
                    metrics: Arc::new(m.route(name)),
                },
            );
        }
        t
    }

    fn found(t: &RouteTable, host: Option<&str>, path: &str) -> Option<String> {
        t.find(host, path).map(|r| r.name.to_string())
    }

    #[test]
    fn host_routes_win_then_longest_prefix() {
        let t = table(&[
            (None, "/", "root"),
            (None, "/ws", "ws"),
            (Some("chat.example.com"), "/", "chat"),
            (Some("chat.example.com"), "/ws/admin", "chat-admin"),
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
        let t = table(&[(Some("a.example"), "/api", "a-api"), (None, "/", "any")]);
        assert_eq!(found(&t, Some("a.example"), "/other"), Some("any".into()));
    }

    #[test]
    fn no_match_is_none() {
        let t = table(&[(None, "/ws", "ws")]);
        assert_eq!(found(&t, Some("x"), "/"), None);
        assert_eq!(found(&t, Some("x"), "/wss"), None);
    }

    #[test]
    fn ports_are_stripped_from_names_and_ipv6_literals() {
        assert_eq!(strip_port("example.com:80"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}
