//! Header rewriting between the two legs: hop-by-hop removal and `X-Forwarded-*`.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `X-Forwarded-Host`; not among `http`'s constants.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Request-Id`: the ID that follows one request through sluice and its upstream.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1), plus
/// the ones a proxy consumes itself. They are never forwarded.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Sent with an `h2c` upgrade; meaningless once the upgrade is refused.
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Whether any `name` header holds `token` in its comma-separated list, ignoring case.
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Removes hop-by-hop headers: those `Connection` names, then the fixed set.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // The values are cloned (a reference count, not a copy) so the map can be changed
    // while reading them; a second Connection line is rare, and only it allocates.
    let mut values = headers.get_all(header::CONNECTION).iter();
    let first = values.next().cloned();
    let rest: Vec<HeaderValue> = values.cloned().collect();
    for v in first.iter().chain(&rest) {
        for token in v.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if let Ok(name) = HeaderName::from_bytes(token) {
                headers.remove(&name);
            }
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(&HTTP2_SETTINGS);
}

/// The connection facts the forwarding headers are built from, formatted once per
/// connection rather than once per request.
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// The client's IP address as a header value.
    pub client_ip: HeaderValue,
    /// `http` or `https`.
    pub proto: HeaderValue,
}

impl Forwarded {
    pub fn new(client: std::net::IpAddr, tls: bool) -> Forwarded {
        let ip = client.to_canonical().to_string();
        Forwarded {
            client_ip: HeaderValue::from_str(&ip).expect("an IP address is a valid header value"),
            proto: HeaderValue::from_static(if tls { "https" } else { "http" }),
        }
    }
}

/// Sets `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host` on a request
/// about to go upstream. `host` is the request's original Host. With `keep_chain`
/// (the peer is a trusted proxy) the client is appended to the earlier hops, and a
/// `Forwarded` header stays; otherwise both are the client's own words and are
/// replaced: `X-Forwarded-For` names the peer alone, and `Forwarded` goes.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    fwd: &Forwarded,
    host: Option<&HeaderValue>,
    keep_chain: bool,
) {
    if !keep_chain {
        headers.remove(http::header::FORWARDED);
    }
    let earlier = if keep_chain {
        headers.get_all(&X_FORWARDED_FOR).iter().count()
    } else {
        0
    };
    let xff = match earlier {
        0 => fwd.client_ip.clone(),
        _ => {
            // Earlier proxies' hops, possibly over several lines, then this client.
            // Empty lines are skipped: `X-Forwarded-For:` alone would otherwise give
            // ", client", whose first (empty) item a reader takes for the client
            // (found by fuzzing).
            let mut joined = Vec::with_capacity(64);
            for v in headers.get_all(&X_FORWARDED_FOR) {
                if v.as_bytes().trim_ascii().is_empty() {
                    continue;
                }
                if !joined.is_empty() {
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(v.as_bytes());
            }
            if joined.is_empty() {
                fwd.client_ip.clone()
            } else {
                joined.extend_from_slice(b", ");
                joined.extend_from_slice(fwd.client_ip.as_bytes());
                HeaderValue::from_bytes(&joined).unwrap_or_else(|_| fwd.client_ip.clone())
            }
        }
    };
    headers.insert(X_FORWARDED_FOR.clone(), xff);
    headers.insert(X_FORWARDED_PROTO.clone(), fwd.proto.clone());
    match host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST.clone(), h.clone());
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

/// Joins several `Cookie` fields into one, pairs separated by `; ` (RFC 9113
/// §8.2.3), as an HTTP/1.1 server expects them.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// Marks a message as a WebSocket upgrade: `Connection: Upgrade`, `Upgrade: websocket`.
pub fn set_websocket_upgrade(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn tokens_match_in_lists_ignoring_case_and_space() {
        let h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ]);
        assert!(has_token(&h, &header::CONNECTION, "upgrade"));
        assert!(has_token(&h, &header::UPGRADE, "websocket"));
        assert!(!has_token(&h, &header::CONNECTION, "close"));
        let h = map(&[("connection", "keep-alive"), ("connection", "upgrade")]);
        assert!(has_token(&h, &header::CONNECTION, "upgrade"));
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = map(&[
            ("connection", "close, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAA"),
            ("proxy-authorization", "Basic x"),
            ("cookie", "a=b"),
            ("sec-websocket-key", "k"),
        ]);
        remove_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["cookie", "sec-websocket-key"]);
    }

    #[test]
    fn forwarded_for_appends_and_proto_host_are_set() {
        let fwd = Forwarded::new("10.0.0.9".parse().unwrap(), false);
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
        ]);
        let host = HeaderValue::from_static("example.com:8080");
        set_forwarded(&mut h, &fwd, Some(&host), true);
        assert_eq!(h[&X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.0.0.9");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "example.com:8080");

        let mut h = HeaderMap::new();
        set_forwarded(&mut h, &fwd, None, true);
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.9");
    }

    #[test]
    fn an_untrusted_peer_cannot_lengthen_the_chain() {
        let fwd = Forwarded::new("10.0.0.9".parse().unwrap(), false);
        let mut h = map(&[("x-forwarded-for", "1.1.1.1"), ("forwarded", "for=1.1.1.1")]);
        set_forwarded(&mut h, &fwd, None, false);
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.9");
        assert!(!h.contains_key(header::FORWARDED));
    }

    #[test]
    fn empty_forwarded_for_lines_are_skipped() {
        // Found by fuzz/fuzz_targets/request_head.rs: an empty line made ", 10.0.0.9".
        let fwd = Forwarded::new("10.0.0.9".parse().unwrap(), false);
        let mut h = map(&[("x-forwarded-for", "")]);
        set_forwarded(&mut h, &fwd, None, true);
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.9");
        let mut h = map(&[
            ("x-forwarded-for", " "),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", ""),
        ]);
        set_forwarded(&mut h, &fwd, None, true);
        assert_eq!(h[&X_FORWARDED_FOR], "1.1.1.1, 10.0.0.9");
    }

    #[test]
    fn split_cookies_are_joined_in_order() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")]);
        join_cookies(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "a=1; b=2; c=3");
        let mut one = map(&[("cookie", "a=1; b=2")]);
        join_cookies(&mut one);
        assert_eq!(one[header::COOKIE], "a=1; b=2");
    }

    #[test]
    fn ipv4_mapped_clients_are_written_as_ipv4() {
        let fwd = Forwarded::new("::ffff:192.0.2.1".parse().unwrap(), true);
        assert_eq!(fwd.client_ip, "192.0.2.1");
        assert_eq!(fwd.proto, "https");
    }
}
