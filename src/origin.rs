//! WebSocket `Origin` allow-lists, the defence against cross-site WebSocket hijacking.
//!
//! Browsers attach cookies to a WebSocket handshake whatever page opened it, and the
//! same-origin policy does not apply to WebSockets; the `Origin` header is the only
//! sign of which site's script is asking. A route with an allow-list refuses
//! handshakes from any other origin. Whether a missing `Origin` (sent by non-browser
//! clients, which hold no victim's cookies) is acceptable is the caller's decision.
//!
//! Patterns are parsed once; matching compares slices and allocates nothing.

use std::net::Ipv6Addr;

/// The origins one route accepts WebSocket handshakes from.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    patterns: Box<[Pattern]>,
}

#[derive(Debug, Clone)]
struct Pattern {
    https: bool,
    /// The scheme's default when the pattern has none.
    port: u16,
    host: HostPattern,
}

#[derive(Debug, Clone)]
enum HostPattern {
    /// A name or IPv4 address, lowercase.
    Exact(Box<[u8]>),
    /// `*.example.com` as `.example.com`, lowercase: any name ending in it.
    Subdomains(Box<[u8]>),
    /// Compared as addresses, so that `[::1]` and `[0:0::1]` are the same host.
    V6(Ipv6Addr),
}

/// An origin split into its parts, borrowing the input.
struct Parts<'a> {
    https: bool,
    host: &'a [u8],
    /// The scheme's default when none was written.
    port: u16,
}

impl OriginPolicy {
    /// Patterns like "https://app.example.com", "https://app.example.com:8443",
    /// "https://*.example.com", "http://localhost:3000", "http://[::1]:8080".
    ///
    /// Err(message naming the bad pattern) for anything else: the scheme is http or
    /// https; there is no path (not even `/`), query, fragment or user info; `*.` may
    /// only begin the host, once, followed by at least two labels. No patterns
    /// allow nothing.
    pub fn new(patterns: &[String]) -> Result<OriginPolicy, String> {
        let patterns = patterns
            .iter()
            .map(|p| Pattern::parse(p).map_err(|why| format!("origin {p:?}: {why}")))
            .collect::<Result<_, _>>()?;
        Ok(OriginPolicy { patterns })
    }

    /// Whether an Origin header value is allowed.
    ///
    /// Scheme and host compare without regard to case, ports exactly, with a missing
    /// port meaning the scheme's default. `null` (sandboxed frames, `file:` pages,
    /// some redirects) is never allowed, nor is anything that is not an origin as a
    /// browser serialises it, such as one with a trailing `/`.
    pub fn allows(&self, origin: &[u8]) -> bool {
        // `null` would fail to parse anyway; it is named because it is the one value a
        // browser really sends that must never match.
        if origin == b"null" {
            return false;
        }
        let Ok(origin) = Parts::split(origin) else {
            return false;
        };
        let v6 = match ipv6_literal(origin.host) {
            Some(Ok(addr)) => Some(addr),
            Some(Err(_)) => return false,
            None if is_host_name(origin.host) => None,
            None => return false,
        };
        self.patterns.iter().any(|p| {
            p.https == origin.https
                && p.port == origin.port
                && match &p.host {
                    HostPattern::Exact(name) => origin.host.eq_ignore_ascii_case(name),
                    HostPattern::Subdomains(suffix) => {
                        // Longer than the suffix, and the suffix starts with a dot, so at
                        // least one whole label precedes it: the bare domain, and
                        // `evil-example.com`, do not match.
                        origin.host.len() > suffix.len()
                            && origin.host[origin.host.len() - suffix.len()..]
                                .eq_ignore_ascii_case(suffix)
                    }
                    HostPattern::V6(addr) => v6 == Some(*addr),
                }
        })
    }
}

impl Pattern {
    fn parse(pattern: &str) -> Result<Pattern, &'static str> {
        let parts = Parts::split(pattern.as_bytes())?;
        let host = match ipv6_literal(parts.host) {
            Some(Ok(addr)) => HostPattern::V6(addr),
            Some(Err(why)) => return Err(why),
            None => match parts.host.strip_prefix(b"*.") {
                Some(suffix) if !is_host_name(suffix) => {
                    return Err("after `*.` comes a host name");
                }
                // `*.com` would let any site in; a mistake, never a policy.
                Some(suffix) if !suffix.contains(&b'.') => {
                    return Err(
                        "`*.` must be followed by at least two labels, as in *.example.com",
                    );
                }
                Some(suffix) => {
                    let mut dotted = Vec::with_capacity(suffix.len() + 1);
                    dotted.push(b'.');
                    dotted.extend(suffix.iter().map(u8::to_ascii_lowercase));
                    HostPattern::Subdomains(dotted.into())
                }
                None if parts.host.contains(&b'*') => {
                    return Err("a wildcard is only allowed as a leading `*.`");
                }
                None if !is_host_name(parts.host) => {
                    return Err("the host is not a valid name or address");
                }
                None => HostPattern::Exact(parts.host.to_ascii_lowercase().into()),
            },
        };
        Ok(Pattern {
            https: parts.https,
            port: parts.port,
            host,
        })
    }
}

impl<'a> Parts<'a> {
    /// `scheme://host[:port]`, nothing more.
    fn split(s: &'a [u8]) -> Result<Parts<'a>, &'static str> {
        let (https, rest) = if let Some(rest) = strip_prefix_ignore_case(s, b"https://") {
            (true, rest)
        } else if let Some(rest) = strip_prefix_ignore_case(s, b"http://") {
            (false, rest)
        } else {
            return Err("the scheme must be http:// or https://");
        };
        if rest.iter().any(|b| matches!(b, b'/' | b'?' | b'#')) {
            return Err("an origin has no path (not even a trailing /), query or fragment");
        }
        if rest.contains(&b'@') {
            return Err("an origin has no user info");
        }
        // An IPv6 literal holds colons; its port, if any, follows the `]`.
        let host_end = if rest.first() == Some(&b'[') {
            rest.iter()
                .position(|&b| b == b']')
                .map_or(rest.len(), |i| i + 1)
        } else {
            rest.iter().position(|&b| b == b':').unwrap_or(rest.len())
        };
        let (host, after) = rest.split_at(host_end);
        if host.is_empty() {
            return Err("the host is missing");
        }
        let port = match after {
            [] => {
                if https {
                    443
                } else {
                    80
                }
            }
            [b':', digits @ ..] => parse_port(digits)
                .ok_or("the port must be a number from 1 to 65535 without leading zeros")?,
            _ => return Err("the host is not a valid name or address"),
        };
        Ok(Parts { https, host, port })
    }
}

/// `Some` for a bracketed host: the address, or why it is not one.
fn ipv6_literal(host: &[u8]) -> Option<Result<Ipv6Addr, &'static str>> {
    let inner = host.strip_prefix(b"[")?;
    const BAD: &str = "the host is not a valid IPv6 address in brackets";
    let addr = inner
        .strip_suffix(b"]")
        .and_then(|a| std::str::from_utf8(a).ok())
        .and_then(|a| a.parse().ok())
        .ok_or(BAD);
    Some(addr)
}

/// Letters, digits, `-` and `_` in dot-separated non-empty labels; this also covers
/// IPv4 addresses. No trailing dot: browsers do not send one for a plain name.
fn is_host_name(host: &[u8]) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split(|&b| b == b'.').all(|label| {
            !label.is_empty()
                && label
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// 1 to 65535 in at most five digits (so no overflow), without leading zeros: a
/// browser never writes them.
fn parse_port(digits: &[u8]) -> Option<u16> {
    if digits.is_empty()
        || digits.len() > 5
        || digits[0] == b'0'
        || !digits.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    let value = digits
        .iter()
        .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    u16::try_from(value).ok()
}

fn strip_prefix_ignore_case<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(patterns: &[&str]) -> OriginPolicy {
        OriginPolicy::new(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn allowed(p: &OriginPolicy, origins: &[&str]) -> Vec<bool> {
        origins.iter().map(|o| p.allows(o.as_bytes())).collect()
    }

    #[test]
    fn exact_origin_matches_scheme_host_and_port() {
        let p = policy(&["https://app.example.com"]);
        assert!(p.allows(b"https://app.example.com"));
        assert!(
            p.allows(b"HTTPS://App.Example.COM"),
            "scheme and host ignore case"
        );
        assert!(
            p.allows(b"https://app.example.com:443"),
            "443 is https's default"
        );
        for bad in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://app.example.com:80",
            "https://example.com",
            "https://x.app.example.com",
            "https://app.example.com.evil.com",
            "https://app.example.co",
        ] {
            assert!(!p.allows(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn pattern_ports_compare_exactly_with_defaults() {
        let p = policy(&[
            "https://a.com:8443",
            "http://localhost:3000",
            "http://b.com:80",
        ]);
        assert_eq!(
            allowed(
                &p,
                &[
                    "https://a.com:8443",
                    "https://a.com",
                    "https://a.com:443",
                    "https://a.com:08443"
                ]
            ),
            [true, false, false, false]
        );
        assert_eq!(
            allowed(
                &p,
                &[
                    "http://localhost:3000",
                    "http://localhost",
                    "http://localhost:3001"
                ]
            ),
            [true, false, false]
        );
        assert_eq!(
            allowed(&p, &["http://b.com", "http://b.com:80", "https://b.com"]),
            [true, true, false]
        );
    }

    #[test]
    fn wildcard_matches_subdomains_at_any_depth_only() {
        let p = policy(&["https://*.example.com"]);
        assert_eq!(
            allowed(
                &p,
                &[
                    "https://a.example.com",
                    "https://a.b.example.com",
                    "https://A.EXAMPLE.com:443"
                ]
            ),
            [true, true, true]
        );
        for bad in [
            "https://example.com",
            "https://evil-example.com",
            "https://example.com.evil.com",
            "https://a.example.com.evil.com",
            "https://.example.com",
            "https://a..example.com",
            "http://a.example.com",
            "https://a.example.com:8443",
            "https://*.example.com",
        ] {
            assert!(!p.allows(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn null_and_malformed_origins_are_refused() {
        let p = policy(&["https://a.com", "http://localhost:3000"]);
        for bad in [
            "null",
            "NULL",
            "",
            "https://a.com/",
            "https://a.com/path",
            "https://a.com?x",
            "https://a.com#x",
            "https://user@a.com",
            "https://a.com:",
            "https://a.com:0",
            "https://a.com:65536",
            "https://a.com:443x",
            "https://a.com:4430000",
            "https://a.com.",
            "https://a com",
            "https://",
            "a.com",
            "//a.com",
            "wss://a.com",
            "https:/a.com",
            "https://a.com\0",
            "https://[a.com]",
            "http://localhost:3000/",
        ] {
            assert!(!p.allows(bad.as_bytes()), "{bad:?}");
        }
        assert!(!p.allows(&[0xff, 0xfe]));
    }

    #[test]
    fn ipv6_literals_compare_as_addresses() {
        let p = policy(&["http://[::1]:8080", "https://[2001:DB8::1]"]);
        assert_eq!(
            allowed(
                &p,
                &[
                    "http://[::1]:8080",
                    "http://[0:0::1]:8080",
                    "http://[::1]",
                    "https://[::1]:8080",
                    "https://[2001:db8::1]",
                    "https://[2001:db8::1]:443",
                    "https://[2001:db8::2]",
                    "http://::1:8080",
                    "http://[::1:8080",
                    "http://[::1]x",
                    "http://[::1%25eth0]:8080",
                ]
            ),
            [
                true, true, false, false, true, true, false, false, false, false, false
            ]
        );
    }

    #[test]
    fn ipv4_hosts_match_as_written() {
        let p = policy(&["http://127.0.0.1:8000"]);
        assert_eq!(
            allowed(
                &p,
                &[
                    "http://127.0.0.1:8000",
                    "http://127.0.0.2:8000",
                    "http://127.0.0.1"
                ]
            ),
            [true, false, false]
        );
    }

    #[test]
    fn any_of_several_patterns_allows() {
        let p = policy(&["https://a.com", "https://*.b.com"]);
        assert_eq!(
            allowed(
                &p,
                &[
                    "https://a.com",
                    "https://x.b.com",
                    "https://b.com",
                    "https://c.com"
                ]
            ),
            [true, true, false, false]
        );
        assert!(
            !policy(&[]).allows(b"https://a.com"),
            "no patterns allow nothing"
        );
    }

    #[test]
    fn bad_patterns_are_refused_by_name() {
        for bad in [
            "",
            "*",
            "null",
            "a.com",
            "ws://a.com",
            "ftp://a.com",
            "https://a.com/",
            "https://a.com/app",
            "https://a.com?x=1",
            "https://a.com#f",
            "https://u:p@a.com",
            "https://a.com:0",
            "https://a.com:99999",
            "https://a.com:*",
            "https://a.com:",
            "https://*",
            "https://*.",
            "https://*.com",
            "https://*.*.example.com",
            "https://a.*.example.com",
            "https://*example.com",
            "https://app*.example.com",
            "https://example.*",
            "https://*.[::1]",
            "https://[::1",
            "https://[not-v6]",
            "https://a..com",
            "https://a.com.",
            " https://a.com",
            "https://a.com ",
        ] {
            let err = OriginPolicy::new(&[bad.to_string()]).expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        let err =
            OriginPolicy::new(&["https://ok.com".into(), "https://a.com/".into()]).unwrap_err();
        assert!(
            err.contains("\"https://a.com/\"") && err.contains("path"),
            "{err}"
        );
    }
}
