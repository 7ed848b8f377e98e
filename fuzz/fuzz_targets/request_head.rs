//! A client's request head, as bytes off the wire, through everything sluice does to
//! one before it goes upstream: classify, check a handshake, find the host, refuse dot
//! segments, and rewrite the head (hop-by-hop removal, cookies, `X-Forwarded-*`).
//!
//! The first byte picks the shape: even is HTTP/1.x as parsed; odd is the same head
//! as an HTTP/2 request would reach sluice, with a `protocol` header standing for the
//! `:protocol` pseudo-header of an extended CONNECT (RFC 8441).
//!
//! `request::rewrite_request` needs a `client::ConnInfo`, which only the crate can
//! build (it holds a connection's admission); its steps are run here one by one, in
//! its order, with the same public functions.
#![no_main]

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};
use libfuzzer_sys::fuzz_target;
use sluice::handshake::{self, Upgrade};
use sluice::headers::{self, Forwarded};
use sluice::{request, route};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, head)) = data.split_first() else {
        return;
    };
    if let Some(req) = parse(head, mode & 1 == 1) {
        exercise(req);
    }
});

/// The head as hyper would hand it to sluice, or None where hyper would refuse it.
fn parse(bytes: &[u8], h2: bool) -> Option<Request<()>> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut slots);
    let httparse::Status::Complete(_) = parsed.parse(bytes).ok()? else {
        return None;
    };
    let method = Method::from_bytes(parsed.method?.as_bytes()).ok()?;
    let uri = parsed.path?.parse::<Uri>().ok()?;
    let version = match (h2, parsed.version?) {
        (true, _) => Version::HTTP_2,
        (false, 0) => Version::HTTP_10,
        (false, _) => Version::HTTP_11,
    };
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .version(version)
        .body(())
        .ok()?;
    for h in parsed.headers.iter() {
        if h2 && h.name.eq_ignore_ascii_case("protocol") {
            let protocol = std::str::from_utf8(h.value).ok()?;
            req.extensions_mut()
                .insert(hyper::ext::Protocol::from(protocol));
            continue;
        }
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        req.headers_mut().append(name, value);
    }
    Some(req)
}

fn exercise(req: Request<()>) {
    let upgrade = handshake::classify_request(&req);
    match upgrade {
        Upgrade::WebSocket => {
            assert_eq!(req.method(), Method::GET);
            assert_ne!(req.version(), Version::HTTP_2);
            assert!(token_in(req.headers(), &header::UPGRADE, "websocket"));
            assert!(token_in(req.headers(), &header::CONNECTION, "upgrade"));
        }
        Upgrade::WebSocketH2 => {
            assert_eq!(req.method(), Method::CONNECT);
            assert_eq!(req.version(), Version::HTTP_2);
        }
        Upgrade::Other => assert!(req.headers().contains_key(header::UPGRADE)),
        Upgrade::None => {}
    }
    if req.version() != Version::HTTP_2 && req.method() != Method::CONNECT {
        assert_eq!(upgrade, handshake::classify(req.method(), req.headers()));
    }

    match upgrade {
        Upgrade::WebSocketH2 => {
            let _ = handshake::check_request_h2(req.headers());
        }
        _ => {
            if let Ok(key) = handshake::check_request(req.version(), req.headers()) {
                assert_eq!(req.version(), Version::HTTP_11);
                assert_eq!(key.len(), 24);
                assert!(key.ends_with(b"=="));
                assert_eq!(
                    req.headers()
                        .get_all(header::SEC_WEBSOCKET_KEY)
                        .iter()
                        .count(),
                    1
                );
                let versions: Vec<_> = req
                    .headers()
                    .get_all(header::SEC_WEBSOCKET_VERSION)
                    .iter()
                    .collect();
                assert_eq!(versions, [&HeaderValue::from_static("13")]);
                assert!(!req.headers().contains_key(header::TRANSFER_ENCODING));
                let _ = handshake::accept_for(key);
            }
        }
    }

    let host = request::request_host(&req);
    if let Ok(Some(h)) = &host
        && req.uri().authority().is_none()
    {
        assert_eq!(Some(h), req.headers().get(header::HOST));
    }
    let host = host.ok().flatten();
    if let Some(h) = host.as_ref().and_then(|h| h.to_str().ok()) {
        let bare = route::strip_port(h);
        assert!(h.starts_with(bare));
    }

    let path = req.uri().path();
    assert_eq!(
        request::has_dot_segments(path),
        dot_segments_reference(path)
    );
    let _ = route::offers_subprotocol(req.headers(), "mqtt");

    let redirect = request::redirect_to_https::<(), ()>(&req, host.as_ref(), 8443);
    assert!(redirect.status().is_redirection() || redirect.status().is_client_error());

    rewrite(req, host, upgrade);
}

/// `request::rewrite_request`'s steps, in its order, each followed by what it promises.
fn rewrite(req: Request<()>, host: Option<HeaderValue>, upgrade: Upgrade) {
    let (mut parts, ()) = req.into_parts();
    if parts.uri.authority().is_some() {
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse::<Uri>()
            .unwrap_or_else(|_| Uri::from_static("/"));
        assert!(path.authority().is_none());
        parts.uri = path;
        if let Some(h) = &host {
            parts.headers.insert(header::HOST, h.clone());
        }
    }

    if parts.version == Version::HTTP_2 {
        let cookies: Vec<Vec<u8>> = parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect();
        headers::join_cookies(&mut parts.headers);
        let joined: Vec<_> = parts.headers.get_all(header::COOKIE).iter().collect();
        if cookies.is_empty() {
            assert!(joined.is_empty());
        } else {
            assert_eq!(joined.len(), 1);
            assert_eq!(joined[0].as_bytes(), cookies.join(&b"; "[..]));
        }
    }

    let named: Vec<HeaderName> = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .collect();
    headers::remove_hop_by_hop(&mut parts.headers);
    for name in named.iter().chain(&hop_by_hop()) {
        assert!(!parts.headers.contains_key(name), "{name} was left");
    }

    match upgrade {
        Upgrade::WebSocket | Upgrade::WebSocketH2 => {
            headers::set_websocket_upgrade(&mut parts.headers)
        }
        Upgrade::None | Upgrade::Other => {}
    }

    let earlier: Vec<Vec<u8>> = parts
        .headers
        .get_all(&headers::X_FORWARDED_FOR)
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .filter(|v| !v.trim_ascii().is_empty())
        .collect();
    let fwd = Forwarded::new(
        "::ffff:192.0.2.1".parse().unwrap(),
        parts.version == Version::HTTP_2,
    );
    // From a peer that is not trusted, the chain is replaced by the peer alone.
    let mut untrusted = parts.headers.clone();
    headers::set_forwarded(&mut untrusted, &fwd, host.as_ref(), false);
    let alone: Vec<&[u8]> = untrusted
        .get_all(&headers::X_FORWARDED_FOR)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    assert_eq!(alone, [&b"192.0.2.1"[..]]);
    assert!(!untrusted.contains_key(header::FORWARDED));
    // From a trusted one, it is appended to.
    headers::set_forwarded(&mut parts.headers, &fwd, host.as_ref(), true);
    let xff: Vec<_> = parts
        .headers
        .get_all(&headers::X_FORWARDED_FOR)
        .iter()
        .collect();
    assert_eq!(xff.len(), 1);
    let mut expected = earlier.join(&b", "[..]);
    if !expected.is_empty() {
        expected.extend_from_slice(b", ");
    }
    expected.extend_from_slice(b"192.0.2.1");
    assert_eq!(xff[0].as_bytes(), expected);
    assert_eq!(parts.headers.get(&headers::X_FORWARDED_HOST), host.as_ref());
    assert_eq!(
        parts
            .headers
            .get_all(&headers::X_FORWARDED_PROTO)
            .iter()
            .count(),
        1
    );
}

fn hop_by_hop() -> [HeaderName; 10] {
    [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        HeaderName::from_static("http2-settings"),
    ]
}

/// Whether any `name` line holds `token` in its list (OWS around items, any case).
fn token_in(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// The plain statement of the rule: a segment that, with `%2e` (any case) decoded, is
/// `.` or `..`.
fn dot_segments_reference(path: &str) -> bool {
    path.split('/').any(|seg| {
        let decoded = seg.replace("%2e", ".").replace("%2E", ".");
        decoded == "." || decoded == ".."
    })
}
