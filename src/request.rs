//! Request checks and rewriting: the host a request is for, refusing dot-segment
//! paths, the HTTPS redirect, and the head sent upstream.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode, Uri, Version};

use crate::body::{GiveBack, ProxyBody};
use crate::client::ConnInfo;
use crate::error::ProxyError;
use crate::handshake::Upgrade;
use crate::headers;

/// A `308 Permanent Redirect` to the same host and target on `https://`: 308 rather
/// than 301 so that clients repeat the method and body.
pub fn redirect_to_https<B, G: GiveBack>(
    req: &Request<B>,
    host: Option<&HeaderValue>,
    port: u16,
) -> Response<ProxyBody<G>> {
    let host = host
        .and_then(|h| h.to_str().ok())
        .map(crate::route::strip_port);
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        return ProxyError::BadRequest("a redirect to HTTPS needs a Host header").response();
    };
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 {
        format!("https://{host}{target}")
    } else {
        format!("https://{host}:{port}{target}")
    };
    let mut resp = Response::new(ProxyBody::full(Bytes::from_static(b"moved to https\n")));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        Err(_) => {
            return ProxyError::BadRequest("the request target cannot be redirected").response();
        }
    }
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The host a request is for: the authority of an absolute-form target, else the Host
/// header. HTTP/1.1 requires one (RFC 9112 §3.2).
pub fn request_host<B>(req: &Request<B>) -> Result<Option<HeaderValue>, ProxyError> {
    if let Some(auth) = req.uri().authority() {
        return HeaderValue::from_str(auth.as_str())
            .map(Some)
            .map_err(|_| ProxyError::BadRequest("the request target's host is not valid"));
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(h), None) => Ok(Some(h.clone())),
        (Some(_), Some(_)) => Err(ProxyError::BadRequest("more than one Host header")),
        (None, _) if req.version() == Version::HTTP_11 => {
            Err(ProxyError::BadRequest("HTTP/1.1 requires a Host header"))
        }
        (None, _) => Ok(None),
    }
}

/// Rewrites a client's request head into the one sent upstream: origin-form target,
/// HTTP/1.1, no hop-by-hop headers, the forwarding headers set, and the upgrade
/// headers again for a WebSocket handshake.
pub fn rewrite_request(
    parts: &mut Parts,
    conn: &ConnInfo,
    host: Option<HeaderValue>,
    upgrade: Upgrade,
    request_id: &HeaderValue,
) {
    if parts.uri.authority().is_some() {
        // An absolute-form target names the host; the upstream gets origin-form and a
        // Host header that agrees with it.
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse::<Uri>()
            .unwrap_or_else(|_| Uri::from_static("/"));
        parts.uri = path;
        if let Some(h) = &host {
            parts.headers.insert(header::HOST, h.clone());
        }
    }
    if parts.version == Version::HTTP_2 {
        // HTTP/2 may split cookies over several fields (RFC 9113 §8.2.3); HTTP/1.1
        // servers expect one Cookie line.
        headers::join_cookies(&mut parts.headers);
    }
    headers::remove_hop_by_hop(&mut parts.headers);
    match upgrade {
        Upgrade::WebSocket => headers::set_websocket_upgrade(&mut parts.headers),
        Upgrade::WebSocketH2 => {
            // The extended CONNECT becomes the HTTP/1.1 handshake it stands for; the
            // request service adds the key its 101 is checked against.
            parts.method = http::Method::GET;
            headers::set_websocket_upgrade(&mut parts.headers);
        }
        Upgrade::None | Upgrade::Other => {}
    }
    headers::set_forwarded(
        &mut parts.headers,
        &conn.forwarded,
        host.as_ref(),
        conn.trusted.is_some(),
    );
    parts
        .headers
        .insert(headers::X_REQUEST_ID.clone(), request_id.clone());
    parts.version = Version::HTTP_11;
    // Nothing the client's connection attached (a pending upgrade of a refused `h2c`
    // request, say) belongs to the upstream request.
    parts.extensions = http::Extensions::new();
}

/// The size of a request head as HTTP/1.1 writes it: the request line and each header
/// line with their line ends. What `max_request_header_bytes` limits.
pub fn head_size<B>(req: &Request<B>) -> usize {
    let line = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + " HTTP/1.1\r\n ".len();
    let headers: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    line + headers + 2
}

/// Whether a path has `.` or `..` segments, plain or percent-encoded. Routing matches
/// prefixes, so `/public/../admin` must not be routed as `/public`; browsers never send
/// such paths, so they are refused rather than rewritten.
pub fn has_dot_segments(path: &str) -> bool {
    path.split('/').any(|seg| {
        let b = seg.as_bytes();
        if b.is_empty() || b.len() > 6 || !(b[0] == b'.' || b[0] == b'%') {
            return false;
        }
        let mut dots = 0;
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'.' {
                i += 1;
            } else if b.len() >= i + 3
                && b[i] == b'%'
                && b[i + 1] == b'2'
                && (b[i + 2] | 0x20) == b'e'
            {
                i += 3;
            } else {
                return false;
            }
            dots += 1;
        }
        dots <= 2
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_size_counts_the_request_line_and_header_lines() {
        let req = Request::get("/abc")
            .header("host", "t")
            .header("x-a", "12345")
            .body(())
            .unwrap();
        // "GET /abc HTTP/1.1\r\n" + "host: t\r\n" + "x-a: 12345\r\n" + "\r\n"
        assert_eq!(head_size(&req), 19 + 9 + 12 + 2);
    }

    #[test]
    fn dot_segments_are_found_plain_and_encoded() {
        for p in [
            "/a/../b",
            "/a/./b",
            "/..",
            "/a/%2e%2e/b",
            "/a/%2E./b",
            "/a/.%2e",
        ] {
            assert!(has_dot_segments(p), "{p}");
        }
        for p in [
            "/",
            "/a/b",
            "/a/...",
            "/a/.well-known/x",
            "/a/%2e%2e%2e",
            "/a/b.",
        ] {
            assert!(!has_dot_segments(p), "{p}");
        }
    }
}
