//! Upstream settings: servers (resolved now), weights, balancing, health and limits.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use toml::Spanned;

use super::super::*;
use super::Validator;

impl Validator<'_> {
    pub(super) fn upstreams(
        &mut self,
        upstreams: &BTreeMap<Spanned<String>, Spanned<UpstreamFile>>,
    ) -> Vec<UpstreamSettings> {
        let mut out = Vec::new();
        for (name, u) in upstreams {
            let span = name.span();
            let name = name.get_ref().clone();
            let u = u.get_ref();
            let servers = self.servers(&name, span.clone(), u);
            let builtin = matches!(servers, Some(Servers::Builtin(_)));
            let keepalive = u
                .keepalive
                .as_ref()
                .and_then(|k| self.int_in(k, "keepalive", 0, 100_000))
                .unwrap_or(32);
            let protocol = match u
                .protocol
                .as_ref()
                .map(|p| (p.get_ref().as_str(), p.span()))
            {
                None | Some(("http1", _)) => UpstreamProtocol::Http1,
                Some(("h2", _)) if builtin => {
                    let span = u.protocol.as_ref().map_or(span.clone(), |p| p.span());
                    self.error(
                        span,
                        format!("upstream \"{name}\" is builtin, which speaks HTTP/1.1 only"),
                    );
                    UpstreamProtocol::Http1
                }
                Some(("h2", _)) => UpstreamProtocol::H2,
                Some((other, span)) => {
                    self.error(
                        span,
                        format!("protocol = \"{other}\" is not known: use \"http1\" or \"h2\""),
                    );
                    UpstreamProtocol::Http1
                }
            };
            let send_proxy_protocol = match u
                .send_proxy_protocol
                .as_ref()
                .map(|p| (p.get_ref().as_str(), p.span()))
            {
                None => None,
                Some((_, span)) if protocol == UpstreamProtocol::H2 || builtin => {
                    self.error(
                        span,
                        format!("upstream \"{name}\" cannot send a PROXY header: an HTTP/2 connection carries many clients' streams, and a builtin upstream has no connection"),
                    );
                    None
                }
                Some(("v1", _)) => Some(ProxyVersion::V1),
                Some(("v2", _)) => Some(ProxyVersion::V2),
                Some((other, span)) => {
                    self.error(
                        span,
                        format!(
                            "send_proxy_protocol = \"{other}\" is not known: use \"v1\" or \"v2\""
                        ),
                    );
                    None
                }
            };
            let tls = self.upstream_tls(&name, u, builtin);
            let balance = self.balance(&name, u);
            let max_connections_per_server = u
                .max_connections_per_server
                .as_ref()
                .and_then(|n| self.int_in(n, "max_connections_per_server", 1, 10_000_000));
            let max_fails = u
                .max_fails
                .as_ref()
                .and_then(|n| self.int_in(n, "max_fails", 0, 1000))
                .map_or(3, |n| n as u32);
            let fail_timeout = self.duration(
                &u.fail_timeout,
                "fail_timeout",
                Duration::from_secs(10),
                false,
            );
            let health_check = u
                .health_check
                .as_ref()
                .and_then(|h| self.health_check(&name, h));
            let resolve_interval = self.duration(
                &u.resolve_interval,
                "resolve_interval",
                Duration::from_secs(30),
                false,
            );
            if let Some(servers) = servers {
                out.push(UpstreamSettings {
                    name,
                    servers,
                    keepalive,
                    protocol,
                    send_proxy_protocol,
                    tls,
                    balance,
                    max_connections_per_server,
                    max_fails,
                    fail_timeout,
                    health_check,
                    resolve_interval,
                });
            }
        }
        out
    }

    fn servers(
        &mut self,
        name: &str,
        span: std::ops::Range<usize>,
        u: &UpstreamFile,
    ) -> Option<Servers> {
        match (&u.servers, &u.builtin) {
            (Some(_), Some(b)) => {
                self.error(
                    b.span(),
                    format!("upstream \"{name}\" has both `servers` and `builtin`: keep one"),
                );
                None
            }
            (None, None) => {
                self.error(
                    span,
                    format!(
                        "upstream \"{name}\" has no `servers`: list at least one, such as servers = [\"127.0.0.1:9001\"]"
                    ),
                );
                None
            }
            (None, Some(b)) => match b.get_ref().as_str() {
                "echo" => Some(Servers::Builtin(Builtin::Echo)),
                other => {
                    self.error(
                        b.span(),
                        format!("upstream \"{name}\": builtin = \"{other}\" is not known: the built-in upstream is \"echo\""),
                    );
                    None
                }
            },
            (Some(list), None) if list.get_ref().is_empty() => {
                self.error(
                    list.span(),
                    format!(
                        "upstream \"{name}\" has an empty server list: list at least one server"
                    ),
                );
                None
            }
            (Some(list), None) => {
                let mut seen = std::collections::HashSet::new();
                let mut servers = Vec::new();
                for s in list.get_ref() {
                    let Some((addr, weight)) = self.server_entry(name, s) else {
                        continue;
                    };
                    if !seen.insert(addr.get_ref().clone()) {
                        self.error(
                            addr.span(),
                            format!(
                                "upstream \"{name}\" lists server `{}` twice",
                                addr.get_ref()
                            ),
                        );
                        continue;
                    }
                    if let Some(server) = self.server(name, &addr, weight) {
                        servers.push(server);
                    }
                }
                Some(Servers::Addresses(servers))
            }
        }
    }

    /// One entry of `servers`: `"host:port"` or `{ addr = "host:port", weight = N }`.
    fn server_entry(
        &mut self,
        name: &str,
        entry: &Spanned<toml::Value>,
    ) -> Option<(Spanned<String>, u32)> {
        let span = entry.span();
        let bad = |v: &mut Self, why: &str| {
            v.error(
                span.clone(),
                format!("upstream \"{name}\": {why}; write a server as \"host:port\" or {{ addr = \"host:port\", weight = N }}"),
            );
            None
        };
        match entry.get_ref() {
            toml::Value::String(s) => Some((Spanned::new(span.clone(), s.clone()), 1)),
            toml::Value::Table(t) => {
                if let Some(k) = t.keys().find(|k| *k != "addr" && *k != "weight") {
                    return bad(self, &format!("unknown key `{k}` in a server"));
                }
                let Some(toml::Value::String(addr)) = t.get("addr") else {
                    return bad(self, "a server table needs `addr`");
                };
                let weight = match t.get("weight") {
                    None => 1,
                    Some(toml::Value::Integer(w)) if (1..=1000).contains(w) => *w as u32,
                    Some(_) => return bad(self, "weight must be a whole number from 1 to 1000"),
                };
                Some((Spanned::new(span.clone(), addr.clone()), weight))
            }
            _ => bad(self, "a server must be a string or a table"),
        }
    }

    /// One `host:port` server, resolved now: a name that does not resolve at load is
    /// a configuration error, not a runtime 502. It is resolved again while running.
    fn server(&mut self, upstream: &str, s: &Spanned<String>, weight: u32) -> Option<ServerAddr> {
        let text = s.get_ref();
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Some(ServerAddr {
                name: text.clone(),
                addrs: vec![addr],
                resolve: false,
                weight,
            });
        }
        let has_port = text
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !has_port {
            self.error(
                s.span(),
                format!(
                    "upstream \"{upstream}\": server `{text}` is not host:port, such as \"127.0.0.1:9001\" or \"backend.internal:80\""
                ),
            );
            return None;
        }
        match text.to_socket_addrs().map(|a| a.collect::<Vec<_>>()) {
            Ok(addrs) if !addrs.is_empty() => Some(ServerAddr {
                name: text.clone(),
                addrs,
                resolve: true,
                weight,
            }),
            Ok(_) => {
                self.error(
                    s.span(),
                    format!("upstream \"{upstream}\": server `{text}` resolves to no address"),
                );
                None
            }
            Err(e) => {
                self.error(
                    s.span(),
                    format!("upstream \"{upstream}\": server `{text}` does not resolve: {e}"),
                );
                None
            }
        }
    }

    fn balance(&mut self, name: &str, u: &UpstreamFile) -> Balance {
        let policy = u.balance.as_ref().map(|b| (b.get_ref().as_str(), b.span()));
        let balance = match policy.clone() {
            None | Some(("round_robin", _)) => Balance::RoundRobin,
            Some(("least_connections", _)) => Balance::LeastConnections,
            Some(("random_two", _)) => Balance::RandomTwo,
            Some(("hash", span)) => match &u.hash_key {
                Some(k) => match crate::balance::HashKey::parse(k.get_ref()) {
                    Ok(key) => Balance::Hash(key),
                    Err(e) => {
                        self.error(k.span(), format!("upstream \"{name}\": hash_key: {e}"));
                        Balance::RoundRobin
                    }
                },
                None => {
                    self.error(
                        span,
                        format!(
                            "upstream \"{name}\": balance = \"hash\" needs hash_key = \"client_ip\", \"header:NAME\", \"cookie:NAME\" or \"query:NAME\""
                        ),
                    );
                    Balance::RoundRobin
                }
            },
            Some((other, span)) => {
                self.error(
                    span,
                    format!(
                        "upstream \"{name}\": balance = \"{other}\" is not known: use \"round_robin\", \"least_connections\", \"random_two\" or \"hash\""
                    ),
                );
                Balance::RoundRobin
            }
        };
        if let Some(k) = &u.hash_key
            && !matches!(balance, Balance::Hash(_))
            && policy.is_none_or(|(p, _)| p != "hash")
        {
            self.error(
                k.span(),
                format!("upstream \"{name}\": hash_key is used only with balance = \"hash\""),
            );
        }
        balance
    }

    fn health_check(&mut self, name: &str, h: &Spanned<HealthCheckFile>) -> Option<HealthCheck> {
        let span = h.span();
        let h = h.get_ref();
        let path = match (&h.path, h.tcp.unwrap_or(false)) {
            (Some(p), false) if p.get_ref().starts_with('/') => Some(p.get_ref().clone()),
            (Some(p), false) => {
                self.error(
                    p.span(),
                    format!(
                        "upstream \"{name}\": health_check path \"{}\" must start with `/`",
                        p.get_ref()
                    ),
                );
                return None;
            }
            (None, true) => None,
            (Some(p), true) => {
                self.error(p.span(), format!("upstream \"{name}\": health_check has both `path` and `tcp = true`: keep one"));
                return None;
            }
            (None, false) => {
                self.error(
                    span,
                    format!("upstream \"{name}\": health_check needs `path = \"/health\"` (HTTP) or `tcp = true` (connect only)"),
                );
                return None;
            }
        };
        let interval = self.duration(
            &h.interval,
            "health_check.interval",
            Duration::from_secs(5),
            false,
        );
        let timeout = self.duration(
            &h.timeout,
            "health_check.timeout",
            Duration::from_secs(1),
            false,
        );
        if timeout > interval {
            let span = h.timeout.as_ref().map_or(span.clone(), |t| t.span());
            self.error(
                span,
                format!("upstream \"{name}\": health_check timeout is longer than its interval"),
            );
        }
        let fails = h
            .fails
            .as_ref()
            .and_then(|n| self.int_in(n, "health_check.fails", 1, 100))
            .unwrap_or(2) as u32;
        let passes = h
            .passes
            .as_ref()
            .and_then(|n| self.int_in(n, "health_check.passes", 1, 100))
            .unwrap_or(2) as u32;
        Some(HealthCheck {
            path,
            interval,
            timeout,
            fails,
            passes,
        })
    }
}
