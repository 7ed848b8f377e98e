//! File structs -> [`Settings`], reporting every problem found, not just the first.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
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
    let timeouts = v.timeouts(&file.timeouts);
    let limits = v.limits(&file.limits);
    let log = v.log(&file.log);
    let workers = file
        .runtime
        .workers
        .as_ref()
        .and_then(|w| v.int_in(w, "runtime.workers", 1, 1024));
    let upstreams = v.upstreams(&file.upstreams);
    let listeners = v.listeners(&file.listeners, admin);
    let routes = v.routes(&file.routes, &file.upstreams);

    // In file order, so the list reads top to bottom; problems of the file as a whole
    // (no listeners, no routes) first.
    v.problems.sort_by_key(|p| p.at.map(|a| (a.line, a.column)));
    if v.problems.is_empty() {
        Ok(Settings {
            admin,
            timeouts,
            limits,
            log,
            workers,
            listeners,
            routes,
            upstreams,
            source: PathBuf::new(),
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

    fn duration(&mut self, s: &Option<Spanned<String>>, key: &str, default: Duration) -> Duration {
        let Some(s) = s else { return default };
        match humantime::parse_duration(s.get_ref()) {
            Ok(d) if d.is_zero() && key != "drain" => {
                self.error(s.span(), format!("timeouts.{key} must be longer than zero"));
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.error(
                    s.span(),
                    format!(
                        "timeouts.{key} = \"{}\" is not a duration ({e}); write it like \"5s\", \"500ms\" or \"2m\"",
                        s.get_ref()
                    ),
                );
                default
            }
        }
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
            connect: self.duration(&t.connect, "connect", d.connect),
            upstream_response: self.duration(
                &t.upstream_response,
                "upstream_response",
                d.upstream_response,
            ),
            request_header: self.duration(&t.request_header, "request_header", d.request_header),
            idle: self.duration(&t.idle, "idle", d.idle),
            half_closed: self.duration(&t.half_closed, "half_closed", d.half_closed),
            drain: self.duration(&t.drain, "drain", d.drain),
            tls_handshake: self.duration(&t.tls_handshake, "tls_handshake", d.tls_handshake),
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
            out.push(ListenerSettings {
                name,
                listen,
                tls,
                redirect_https,
            });
        }
        out
    }

    fn upstreams(
        &mut self,
        upstreams: &std::collections::BTreeMap<Spanned<String>, Spanned<UpstreamFile>>,
    ) -> Vec<UpstreamSettings> {
        let mut out = Vec::new();
        for (name, u) in upstreams {
            let span = name.span();
            let name = name.get_ref().clone();
            let u = u.get_ref();
            let servers = match (&u.servers, &u.builtin) {
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
                            format!(
                                "upstream \"{name}\": builtin = \"{other}\" is not known: the built-in upstream is \"echo\""
                            ),
                        );
                        None
                    }
                },
                (Some(list), None) => {
                    if list.get_ref().is_empty() {
                        self.error(
                            list.span(),
                            format!(
                                "upstream \"{name}\" has an empty server list: list at least one server"
                            ),
                        );
                        None
                    } else {
                        let addrs: Vec<ServerAddr> = list
                            .get_ref()
                            .iter()
                            .filter_map(|s| self.server(&name, s))
                            .collect();
                        Some(Servers::Addresses(addrs))
                    }
                }
            };
            let keepalive = u
                .keepalive
                .as_ref()
                .and_then(|k| self.int_in(k, "keepalive", 0, 100_000))
                .unwrap_or(32);
            let tls = self.upstream_tls(&name, u, matches!(servers, Some(Servers::Builtin(_))));
            if let Some(servers) = servers {
                out.push(UpstreamSettings {
                    name,
                    servers,
                    keepalive,
                    tls,
                });
            }
        }
        out
    }

    /// One `host:port` server, resolved now: a name that does not resolve at load is
    /// a configuration error, not a runtime 502.
    fn server(&mut self, upstream: &str, s: &Spanned<String>) -> Option<ServerAddr> {
        let text = s.get_ref();
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Some(ServerAddr {
                name: text.clone(),
                addr,
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
        match text.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(addr)) => Some(ServerAddr {
                name: text.clone(),
                addr,
            }),
            Ok(None) => {
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

    fn routes(
        &mut self,
        routes: &[Spanned<RouteFile>],
        upstreams: &std::collections::BTreeMap<Spanned<String>, Spanned<UpstreamFile>>,
    ) -> Vec<RouteSettings> {
        if routes.is_empty() {
            self.error_nowhere(
                "no [[routes]]: add at least one, such as\n  [[routes]]\n  path = \"/\"\n  upstream = \"echo\"",
            );
        }
        // Upstreams are validated into a Vec in the map's (sorted) order; a route
        // refers to one by its index there.
        let names: Vec<&str> = upstreams.keys().map(|k| k.get_ref().as_str()).collect();
        let mut seen: HashMap<(Option<String>, String), usize> = HashMap::new();
        let mut out = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            let r = r.get_ref();
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
            if let Some(first) = seen.insert((host.clone(), path.clone()), i + 1) {
                let span = r.path.as_ref().map_or(r.upstream.span(), |p| p.span());
                self.error(
                    span,
                    format!(
                        "route {} matches the same host and path as route {first}, so it could never be chosen",
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
                });
            }
        }
        out
    }

    /// A path from the file, relative to the file's directory.
    fn path(&self, p: &Spanned<String>) -> PathBuf {
        self.base.join(p.get_ref())
    }

    /// Reports a TLS file problem at the span of the value that named the file.
    fn tls_error(&mut self, e: crate::tls::TlsError, spans: &[(&PathBuf, Range<usize>)]) {
        let span = spans
            .iter()
            .find(|(p, _)| **p == e.path)
            .or(spans.first())
            .map(|(_, s)| s.clone())
            .unwrap_or(0..0);
        self.error(span, e.to_string());
    }

    fn listener_tls(&mut self, name: &str, t: &Spanned<ListenerTlsFile>) -> Option<ListenerTls> {
        let span = t.span();
        let t = t.get_ref();
        let mut pairs: Vec<(CertPaths, Range<usize>, Range<usize>)> = Vec::new();
        match (&t.cert, &t.key, &t.certificates) {
            (Some(cert), Some(key), None) => pairs.push((
                CertPaths {
                    cert: self.path(cert),
                    key: self.path(key),
                },
                cert.span(),
                key.span(),
            )),
            (None, None, Some(list)) if !list.get_ref().is_empty() => {
                for c in list.get_ref() {
                    pairs.push((
                        CertPaths {
                            cert: self.path(&c.cert),
                            key: self.path(&c.key),
                        },
                        c.cert.span(),
                        c.key.span(),
                    ));
                }
            }
            (_, _, Some(list)) if t.cert.is_some() || t.key.is_some() => {
                self.error(
                    list.span(),
                    format!("listener \"{name}\": give either `cert` and `key` or `certificates`, not both"),
                );
                return None;
            }
            _ => {
                self.error(
                    span,
                    format!(
                        "listener \"{name}\": tls needs `cert` and `key`, or `certificates = [{{ cert = ..., key = ... }}, ...]`"
                    ),
                );
                return None;
            }
        }
        let mut ok = true;
        for (paths, cert_span, key_span) in &pairs {
            if let Err(e) = crate::tls::load_cert(paths) {
                self.tls_error(
                    e,
                    &[
                        (&paths.cert, cert_span.clone()),
                        (&paths.key, key_span.clone()),
                    ],
                );
                ok = false;
            }
        }
        let min_version = match t
            .min_version
            .as_ref()
            .map(|v| (v.get_ref().as_str(), v.span()))
        {
            None | Some(("1.2", _)) => TlsVersion::Tls12,
            Some(("1.3", _)) => TlsVersion::Tls13,
            Some((other, span)) => {
                self.error(
                    span,
                    format!("min_version = \"{other}\" is not known: use \"1.2\" or \"1.3\""),
                );
                ok = false;
                TlsVersion::Tls12
            }
        };
        let client_ca = t.client_ca.as_ref().map(|ca| (self.path(ca), ca.span()));
        if let Some((path, span)) = &client_ca
            && let Err(e) = crate::tls::load_roots(path)
        {
            self.tls_error(e, &[(path, span.clone())]);
            ok = false;
        }
        ok.then(|| ListenerTls {
            certificates: pairs.into_iter().map(|(p, _, _)| p).collect(),
            min_version,
            client_ca: client_ca.map(|(p, _)| p),
        })
    }

    fn upstream_tls(&mut self, name: &str, u: &UpstreamFile, builtin: bool) -> Option<UpstreamTls> {
        let on = u.tls.as_ref().is_some_and(|t| *t.get_ref());
        if !on {
            for (key, value) in [
                ("sni", &u.sni),
                ("ca", &u.ca),
                ("client_cert", &u.client_cert),
                ("client_key", &u.client_key),
            ] {
                if let Some(v) = value {
                    self.error(
                        v.span(),
                        format!("upstream \"{name}\": `{key}` is used only with tls = true"),
                    );
                }
            }
            return None;
        }
        let tls_span = u.tls.as_ref().map_or(0..0, |t| t.span());
        if builtin {
            self.error(
                tls_span,
                format!("upstream \"{name}\": the built-in upstream does not speak TLS"),
            );
            return None;
        }
        let client_cert = match (&u.client_cert, &u.client_key) {
            (Some(c), Some(k)) => Some((
                CertPaths {
                    cert: self.path(c),
                    key: self.path(k),
                },
                c.span(),
                k.span(),
            )),
            (None, None) => None,
            (Some(c), None) | (None, Some(c)) => {
                self.error(
                    c.span(),
                    format!("upstream \"{name}\": `client_cert` and `client_key` go together"),
                );
                return None;
            }
        };
        let ca = u.ca.as_ref().map(|c| (self.path(c), c.span()));
        let sni = u.sni.as_ref().map(|s| s.get_ref().to_ascii_lowercase());
        if let Some(s) = &u.sni
            && rustls::pki_types::ServerName::try_from(s.get_ref().as_str()).is_err()
        {
            self.error(
                s.span(),
                format!(
                    "upstream \"{name}\": sni \"{}\" is not a host name",
                    s.get_ref()
                ),
            );
            return None;
        }
        let tls = UpstreamTls {
            sni,
            ca: ca.as_ref().map(|(p, _)| p.clone()),
            client_cert: client_cert.as_ref().map(|(p, _, _)| p.clone()),
        };
        if let Err(e) = crate::tls::client_config(&tls) {
            let mut spans: Vec<(&PathBuf, Range<usize>)> = Vec::new();
            if let Some((p, s)) = &ca {
                spans.push((p, s.clone()));
            }
            if let Some((p, cs, ks)) = &client_cert {
                spans.push((&p.cert, cs.clone()));
                spans.push((&p.key, ks.clone()));
            }
            if spans.is_empty() {
                self.error(tls_span, format!("upstream \"{name}\": {e}"));
            } else {
                self.tls_error(e, &spans);
            }
            return None;
        }
        Some(tls)
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
