//! File structs -> [`Settings`], reporting every problem found, not just the first.

mod tls;
mod upstreams;
mod websocket;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::*;

/// Validates a parsed file. `text` is the file's text, to turn spans into positions;
/// `base` is the directory relative paths in the file are resolved against. Certificate
/// and key files are loaded here, so `--check` reports a bad one before it is needed.
pub(super) fn settings(file: File, text: &str, base: &Path) -> Result<Settings, Vec<Problem>> {
    let mut v = Validator {
        text,
        base,
        problems: Vec::new(),
    };

    let admin = file
        .admin
        .as_ref()
        .and_then(|a| v.socket_addr(&a.listen, "admin listen"));
    let admin_token = file
        .admin
        .as_ref()
        .and_then(|a| a.token.as_ref())
        .and_then(|t| {
            let token = t.get_ref();
            if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                v.error(
                    t.span(),
                    "admin token must be at least 16 visible ASCII characters (no spaces)",
                );
                return None;
            }
            Some(token.clone())
        });
    let timeouts = v.timeouts(&file.timeouts);
    let limits = v.limits(&file.limits);
    let http2 = v.http2(&file.http2);
    let websocket = v.websocket(&file.websocket);
    let log = v.log(&file.log);
    let workers = file
        .runtime
        .workers
        .as_ref()
        .and_then(|w| v.int_in(w, "runtime.workers", 1, 1024));
    let tcp = v.tcp(&file.tcp);
    let upstreams = v.upstreams(&file.upstreams);
    let listeners = v.listeners(&file.listeners, admin);
    let routes = v.routes(&file.routes, &file.upstreams, websocket);

    // In file order, so the list reads top to bottom; problems of the file as a whole
    // (no listeners, no routes) first.
    v.problems.sort_by_key(|p| p.at.map(|a| (a.line, a.column)));
    if v.problems.is_empty() {
        Ok(Settings {
            admin,
            admin_token,
            timeouts,
            limits,
            http2,
            websocket,
            log,
            workers,
            tcp,
            listeners,
            routes,
            upstreams,
            source: PathBuf::new(),
            hash: String::new(),
        })
    } else {
        Err(v.problems)
    }
}

struct Validator<'a> {
    text: &'a str,
    base: &'a Path,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.problems.push(Problem {
            at: Some(Position::of(self.text, span.start)),
            message: message.into(),
        });
    }

    fn error_nowhere(&mut self, message: impl Into<String>) {
        self.problems.push(Problem {
            at: None,
            message: message.into(),
        });
    }

    fn socket_addr(&mut self, s: &Spanned<String>, what: &str) -> Option<SocketAddr> {
        match s.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error(
                    s.span(),
                    format!(
                        "{what} `{}` is not an IP address and port, such as \"127.0.0.1:8080\" or \"[::]:443\"",
                        s.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// A duration such as "5s"; `zero_ok` says whether "0s" is meaningful (it turns
    /// something off, or means "at once").
    fn duration(
        &mut self,
        s: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
        zero_ok: bool,
    ) -> Duration {
        let Some(s) = s else { return default };
        match humantime::parse_duration(s.get_ref()) {
            Ok(d) if d.is_zero() && !zero_ok => {
                self.error(s.span(), format!("{key} must be longer than zero"));
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.error(
                    s.span(),
                    format!(
                        "{key} = \"{}\" is not a duration ({e}); write it like \"5s\", \"500ms\" or \"2m\"",
                        s.get_ref()
                    ),
                );
                default
            }
        }
    }

    /// An optional duration where "0s" means off.
    fn duration_or_off(
        &mut self,
        s: &Option<Spanned<String>>,
        key: &str,
        default: Option<Duration>,
    ) -> Option<Duration> {
        if s.is_none() {
            return default;
        }
        Some(self.duration(s, key, Duration::ZERO, true)).filter(|d| !d.is_zero())
    }

    fn int_in(&mut self, n: &Spanned<i64>, key: &str, min: i64, max: i64) -> Option<usize> {
        let value = *n.get_ref();
        if (min..=max).contains(&value) {
            usize::try_from(value).ok()
        } else {
            self.error(
                n.span(),
                format!("{key} = {value} is out of range: it must be from {min} to {max}"),
            );
            None
        }
    }

    fn timeouts(&mut self, t: &TimeoutsFile) -> Timeouts {
        let d = Timeouts::default();
        Timeouts {
            connect: self.duration(&t.connect, "timeouts.connect", d.connect, false),
            upstream_response: self.duration(
                &t.upstream_response,
                "timeouts.upstream_response",
                d.upstream_response,
                false,
            ),
            request_header: self.duration(
                &t.request_header,
                "timeouts.request_header",
                d.request_header,
                false,
            ),
            idle: self.duration(&t.idle, "timeouts.idle", d.idle, false),
            half_closed: self.duration(
                &t.half_closed,
                "timeouts.half_closed",
                d.half_closed,
                false,
            ),
            drain: self.duration(&t.drain, "timeouts.drain", d.drain, true),
            tls_handshake: self.duration(
                &t.tls_handshake,
                "timeouts.tls_handshake",
                d.tls_handshake,
                false,
            ),
        }
    }

    fn tcp(&mut self, t: &TcpFile) -> Tcp {
        let d = Tcp::default();
        Tcp {
            keepalive: self.duration_or_off(&t.keepalive, "tcp.keepalive", d.keepalive),
            keepalive_interval: match &t.keepalive_interval {
                Some(_) => Some(self.duration(
                    &t.keepalive_interval,
                    "tcp.keepalive_interval",
                    Duration::ZERO,
                    false,
                )),
                None => d.keepalive_interval,
            },
            keepalive_probes: t
                .keepalive_probes
                .as_ref()
                .and_then(|n| self.int_in(n, "tcp.keepalive_probes", 1, 100))
                .map(|n| n as u32)
                .or(d.keepalive_probes),
            user_timeout: self.duration_or_off(&t.user_timeout, "tcp.user_timeout", d.user_timeout),
        }
    }

    fn limits(&mut self, l: &LimitsFile) -> Limits {
        let d = Limits::default();
        Limits {
            max_connections: l
                .max_connections
                .as_ref()
                .and_then(|n| self.int_in(n, "limits.max_connections", 1, 10_000_000))
                .unwrap_or(d.max_connections),
            // hyper parses a head in one buffer; below 1 KiB ordinary browsers fail.
            max_request_header_bytes: l
                .max_request_header_bytes
                .as_ref()
                .and_then(|n| self.int_in(n, "limits.max_request_header_bytes", 1024, 1024 * 1024))
                .unwrap_or(d.max_request_header_bytes),
            max_connections_per_ip: l
                .max_connections_per_ip
                .as_ref()
                .and_then(|n| self.int_in(n, "limits.max_connections_per_ip", 1, 10_000_000)),
            handshakes_per_second_per_ip: l
                .handshakes_per_second_per_ip
                .as_ref()
                .and_then(|r| self.rate(r, "limits.handshakes_per_second_per_ip")),
            handshake_burst_per_ip: l
                .handshake_burst_per_ip
                .as_ref()
                .and_then(|r| self.rate(r, "limits.handshake_burst_per_ip"))
                .or(l
                    .handshakes_per_second_per_ip
                    .as_ref()
                    .map(|r| r.get_ref().max(1.0)))
                .unwrap_or(0.0),
            max_tunnel_lifetime: self.duration_or_off(
                &l.max_tunnel_lifetime,
                "limits.max_tunnel_lifetime",
                None,
            ),
        }
    }

    fn http2(&mut self, h: &Http2File) -> Http2 {
        let d = Http2::default();
        // Windows: RFC 9113 allows 2^31 - 1; below 64 KiB a stream crawls.
        let window = |v: &mut Self, n: &Option<Spanned<i64>>, key: &str, default: u32| {
            n.as_ref()
                .and_then(|n| v.int_in(n, key, 65_535, (1 << 31) - 1))
                .map_or(default, |n| n as u32)
        };
        Http2 {
            max_concurrent_streams: h
                .max_concurrent_streams
                .as_ref()
                .and_then(|n| self.int_in(n, "http2.max_concurrent_streams", 1, 10_000))
                .map_or(d.max_concurrent_streams, |n| n as u32),
            keepalive_interval: self.duration_or_off(
                &h.keepalive_interval,
                "http2.keepalive_interval",
                d.keepalive_interval,
            ),
            keepalive_timeout: self.duration(
                &h.keepalive_timeout,
                "http2.keepalive_timeout",
                d.keepalive_timeout,
                false,
            ),
            stream_window: window(
                self,
                &h.stream_window,
                "http2.stream_window",
                d.stream_window,
            ),
            connection_window: window(
                self,
                &h.connection_window,
                "http2.connection_window",
                d.connection_window,
            ),
        }
    }

    fn rate(&mut self, r: &Spanned<f64>, key: &str) -> Option<f64> {
        let value = *r.get_ref();
        if value.is_finite() && value > 0.0 && value <= 1e6 {
            Some(value)
        } else {
            self.error(
                r.span(),
                format!("{key} = {value} must be above 0 and at most 1000000"),
            );
            None
        }
    }

    fn log(&mut self, l: &LogFile) -> LogSettings {
        let format = match l.format.as_ref().map(|f| (f.get_ref().as_str(), f.span())) {
            None | Some(("text", _)) => LogFormat::Text,
            Some(("json", _)) => LogFormat::Json,
            Some((other, span)) => {
                self.error(
                    span,
                    format!("log.format = \"{other}\" is not known: use \"text\" or \"json\""),
                );
                LogFormat::Text
            }
        };
        LogSettings {
            format,
            access: l.access.unwrap_or(true),
            access_query: l.access_query.unwrap_or(false),
        }
    }

    fn listeners(
        &mut self,
        listeners: &[Spanned<ListenerFile>],
        admin: Option<SocketAddr>,
    ) -> Vec<ListenerSettings> {
        if listeners.is_empty() {
            self.error_nowhere(
                "no [[listeners]]: add at least one, such as\n  [[listeners]]\n  name = \"http\"\n  listen = \"127.0.0.1:8080\"",
            );
        }
        let mut names = HashSet::new();
        let mut addrs: HashMap<SocketAddr, String> = HashMap::new();
        let mut out = Vec::new();
        for l in listeners {
            let l = l.get_ref();
            let Some(listen) = self.socket_addr(&l.listen, "listener listen") else {
                continue;
            };
            let name = match &l.name {
                Some(n) => {
                    if n.get_ref().is_empty() {
                        self.error(n.span(), "a listener name cannot be empty");
                    }
                    n.get_ref().clone()
                }
                None => l.listen.get_ref().clone(),
            };
            if !names.insert(name.clone()) {
                let span = l.name.as_ref().map_or(l.listen.span(), |n| n.span());
                self.error(span, format!("two listeners are named \"{name}\""));
            }
            // Port 0 asks the system for a free port, so two of them never clash.
            if listen.port() != 0 {
                if let Some(other) = addrs.insert(listen, name.clone()) {
                    self.error(
                        l.listen.span(),
                        format!(
                            "listener \"{name}\" listens on {listen}, which listener \"{other}\" already uses"
                        ),
                    );
                }
                if admin == Some(listen) {
                    self.error(
                        l.listen.span(),
                        format!(
                            "listener \"{name}\" listens on {listen}, which is the admin listener's address"
                        ),
                    );
                }
            }
            let tls = l.tls.as_ref().and_then(|t| self.listener_tls(&name, t));
            let redirect_https = match (&l.redirect_https, &l.redirect_https_port) {
                (Some(r), port) if *r.get_ref() => {
                    if l.tls.is_some() {
                        self.error(
                            r.span(),
                            format!("listener \"{name}\" terminates TLS itself, so it cannot redirect to HTTPS"),
                        );
                    }
                    let port = port
                        .as_ref()
                        .and_then(|p| self.int_in(p, "redirect_https_port", 1, 65535))
                        .unwrap_or(443);
                    Some(port as u16)
                }
                (_, Some(p)) => {
                    self.error(
                        p.span(),
                        "redirect_https_port is used only with redirect_https = true",
                    );
                    None
                }
                _ => None,
            };
            let max_connections = l
                .max_connections
                .as_ref()
                .and_then(|n| self.int_in(n, "max_connections", 1, 10_000_000));
            let mut trusted = Vec::new();
            for net in l.trusted_proxies.iter().flatten() {
                // A bare address is a network of one.
                let parsed = net.get_ref().parse::<ipnet::IpNet>().or_else(|_| {
                    net.get_ref()
                        .parse::<std::net::IpAddr>()
                        .map(ipnet::IpNet::from)
                });
                match parsed {
                    Ok(n) => trusted.push(n),
                    Err(_) => self.error(
                        net.span(),
                        format!(
                            "trusted_proxies: \"{}\" is not an IP address or network (\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.1\")",
                            net.get_ref()
                        ),
                    ),
                }
            }
            out.push(ListenerSettings {
                name,
                listen,
                tls,
                redirect_https,
                max_connections,
                reuse_port: l.reuse_port.unwrap_or(false),
                // h2c with prior knowledge is opt-in on plain listeners: a client
                // there cannot have learnt of it from ALPN.
                http2: l.http2.unwrap_or(l.tls.is_some()),
                proxy_protocol: l.proxy_protocol.unwrap_or(false),
                trusted_proxies: crate::trust::TrustedProxies::new(trusted),
            });
        }
        out
    }

    fn routes(
        &mut self,
        routes: &[Spanned<RouteFile>],
        upstreams: &std::collections::BTreeMap<Spanned<String>, Spanned<UpstreamFile>>,
        websocket_table: WebSocket,
    ) -> Vec<RouteSettings> {
        if routes.is_empty() {
            self.error_nowhere(
                "no [[routes]]: add at least one, such as\n  [[routes]]\n  path = \"/\"\n  upstream = \"echo\"",
            );
        }
        // Upstreams are validated into a Vec in the map's (sorted) order; a route
        // refers to one by its index there.
        let names: Vec<&str> = upstreams.keys().map(|k| k.get_ref().as_str()).collect();
        let mut seen: HashMap<(Option<String>, String, Option<String>), usize> = HashMap::new();
        let mut out = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            let r = r.get_ref();
            // First, so its problems are reported even when the route's others skip it.
            let websocket = self.route_websocket(i + 1, r.websocket.as_ref(), websocket_table);
            let upstream_name = r.upstream.get_ref();
            let upstream = names.iter().position(|n| n == upstream_name);
            if upstream.is_none() {
                let known = if names.is_empty() {
                    "no upstreams are defined".to_owned()
                } else {
                    format!("defined: {}", names.join(", "))
                };
                self.error(
                    r.upstream.span(),
                    format!(
                        "route {} names upstream \"{upstream_name}\", which is not defined ({known})",
                        i + 1
                    ),
                );
            }
            let host = r.host.as_ref().and_then(|h| self.host(h));
            let path = match &r.path {
                None => "/".to_owned(),
                Some(p) if p.get_ref().starts_with('/') && !p.get_ref().contains(['?', '#']) => {
                    p.get_ref().clone()
                }
                Some(p) => {
                    self.error(
                        p.span(),
                        format!(
                            "route path \"{}\" must start with `/` and hold no `?` or `#`",
                            p.get_ref()
                        ),
                    );
                    continue;
                }
            };
            let name = match &r.name {
                Some(n) if n.get_ref().is_empty() => {
                    self.error(n.span(), "a route name cannot be empty");
                    continue;
                }
                Some(n) => n.get_ref().clone(),
                None => upstream_name.clone(),
            };
            let subprotocol = match &r.subprotocol {
                Some(p) if is_token(p.get_ref()) => Some(p.get_ref().clone()),
                Some(p) => {
                    self.error(p.span(), format!("route subprotocol \"{}\" is not a token (letters, digits, and !#$%&'*+-.^_`|~)", p.get_ref()));
                    continue;
                }
                None => None,
            };
            let allowed_origins = match &r.allowed_origins {
                Some(list) => {
                    let patterns: Vec<String> =
                        list.get_ref().iter().map(|o| o.get_ref().clone()).collect();
                    for o in list.get_ref() {
                        if let Err(e) =
                            crate::origin::OriginPolicy::new(std::slice::from_ref(o.get_ref()))
                        {
                            self.error(o.span(), format!("allowed_origins: {e}"));
                        }
                    }
                    if patterns.is_empty() {
                        self.error(list.span(), "allowed_origins is empty, which would refuse every handshake: list origins, or leave it out to allow any");
                    }
                    patterns
                }
                None => Vec::new(),
            };
            if let Some(first) =
                seen.insert((host.clone(), path.clone(), subprotocol.clone()), i + 1)
            {
                let span = r.path.as_ref().map_or(r.upstream.span(), |p| p.span());
                self.error(
                    span,
                    format!(
                        "route {} matches the same host, path and subprotocol as route {first}, so it could never be chosen",
                        i + 1
                    ),
                );
            }
            if let Some(upstream) = upstream {
                out.push(RouteSettings {
                    name,
                    host,
                    path,
                    upstream,
                    subprotocol,
                    allowed_origins,
                    websocket,
                });
            }
        }
        out
    }

    fn host(&mut self, h: &Spanned<String>) -> Option<String> {
        let host = h.get_ref();
        let valid = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if valid {
            Some(host.to_ascii_lowercase())
        } else {
            self.error(
                h.span(),
                format!(
                    "route host \"{host}\" is not a host name: write it without scheme, port or path, such as \"chat.example.com\""
                ),
            );
            None
        }
    }
}

/// An HTTP token (RFC 9110 §5.6.2), which is what a subprotocol name must be.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
