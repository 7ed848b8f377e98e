//! The WebSocket opening handshake (RFC 6455 §4): recognising it, checking the
//! client's side, and checking the upstream's `101` before anything is tunnelled.
//! Over HTTP/2 a WebSocket opens with an extended CONNECT (RFC 8441); it is checked
//! the same way and sent upstream as an HTTP/1.1 handshake with a key of sluice's.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::header::{self, HeaderMap};
use http::{Method, StatusCode, Version};
use sha1::{Digest, Sha1};

use crate::error::ProxyError;
use crate::headers::has_token;

/// The GUID every `Sec-WebSocket-Accept` is derived with (RFC 6455 §1.3).
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What a request asks of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    /// An ordinary request.
    None,
    /// A WebSocket opening handshake.
    WebSocket,
    /// A WebSocket opened over HTTP/2: an extended CONNECT with `:protocol`
    /// `websocket` (RFC 8441).
    WebSocketH2,
    /// Any other upgrade (`h2c`, TLS, ...): never honoured, the request is proxied as
    /// ordinary HTTP with the upgrade headers removed.
    Other,
}

impl Upgrade {
    /// Whether the request opens a WebSocket, over either HTTP version.
    pub fn is_websocket(self) -> bool {
        matches!(self, Upgrade::WebSocket | Upgrade::WebSocketH2)
    }
}

/// Classifies a request, over HTTP/1.1 by [`classify`], over HTTP/2 by its method
/// and `:protocol`.
pub fn classify_request<B>(req: &http::Request<B>) -> Upgrade {
    if req.method() == Method::CONNECT {
        let websocket = req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
        return if websocket && req.version() == Version::HTTP_2 {
            Upgrade::WebSocketH2
        } else {
            Upgrade::None
        };
    }
    // HTTP/2 has no Upgrade; a client that sends the header anyway asks for nothing.
    if req.version() == Version::HTTP_2 {
        return Upgrade::None;
    }
    classify(req.method(), req.headers())
}

/// Classifies an HTTP/1.1 request: a WebSocket handshake is a `GET` whose `Connection`
/// holds `upgrade` and whose `Upgrade` holds `websocket` (both case-insensitive lists).
pub fn classify(method: &Method, headers: &HeaderMap) -> Upgrade {
    if !headers.contains_key(header::UPGRADE) {
        return Upgrade::None;
    }
    if method == Method::GET
        && has_token(headers, &header::CONNECTION, "upgrade")
        && has_token(headers, &header::UPGRADE, "websocket")
    {
        Upgrade::WebSocket
    } else {
        Upgrade::Other
    }
}

/// Checks the client's half of a WebSocket handshake; returns its key.
///
/// Nothing that fails here reaches an upstream.
pub fn check_request(version: Version, headers: &HeaderMap) -> Result<&[u8], ProxyError> {
    if version != Version::HTTP_11 {
        return Err(ProxyError::BadHandshake("it must be HTTP/1.1"));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(ProxyError::BadHandshake("Sec-WebSocket-Key is missing"))?
        .as_bytes();
    if headers.get_all(header::SEC_WEBSOCKET_KEY).iter().count() != 1 || !valid_key(key) {
        return Err(ProxyError::BadHandshake(
            "Sec-WebSocket-Key is not 16 bytes in base64",
        ));
    }
    check_version_and_body(headers)?;
    Ok(key)
}

/// What both versions of the handshake require: WebSocket version 13, and no body.
fn check_version_and_body(headers: &HeaderMap) -> Result<(), ProxyError> {
    let versions = headers.get_all(header::SEC_WEBSOCKET_VERSION);
    if versions.iter().count() != 1 || versions.iter().any(|v| v.as_bytes() != b"13") {
        return Err(ProxyError::UnsupportedVersion);
    }
    // A handshake has no body; one that claims to is an attempt to smuggle bytes past
    // the proxy into the tunnel. (Over HTTP/2 the stream carries the tunnel's bytes
    // after the 200; before it, nothing.)
    let content_length_nonzero = headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .any(|v| v.as_bytes().iter().any(|&b| b != b'0'));
    if content_length_nonzero || headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(ProxyError::BadHandshake("a handshake cannot carry a body"));
    }
    Ok(())
}

/// Checks an extended CONNECT that opens a WebSocket over HTTP/2 (RFC 8441 §5): the
/// version, and no body. It has no key; [`new_key`] makes the one sent upstream.
pub fn check_request_h2(headers: &HeaderMap) -> Result<(), ProxyError> {
    check_version_and_body(headers)
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes in base64, for a handshake sluice
/// sends upstream on a client's behalf. It proves only that the upstream understood
/// a WebSocket handshake, so it needs to be unpredictable, not secret.
pub fn new_key() -> [u8; 24] {
    let nonce = fastrand::u128(..).to_le_bytes();
    let mut out = [0u8; 24];
    let n = BASE64
        .encode_slice(nonce, &mut out)
        .expect("16 bytes encode to 24");
    debug_assert_eq!(n, 24);
    out
}

/// A key is the base64 encoding of 16 bytes: 24 characters ending in `==`.
fn valid_key(key: &[u8]) -> bool {
    let mut out = [0u8; 18];
    key.len() == 24 && matches!(BASE64.decode_slice(key, &mut out), Ok(16))
}

/// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key ++ GUID)).
pub fn accept_for(key: &[u8]) -> [u8; 28] {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    let digest = sha.finalize();
    let mut out = [0u8; 28];
    let n = BASE64
        .encode_slice(digest, &mut out)
        .expect("20 bytes encode to 28");
    debug_assert_eq!(n, 28);
    out
}

/// Checks an upstream's answer to a handshake whose key was `key`. Only a response
/// that passes opens a tunnel.
pub fn check_response(
    status: StatusCode,
    headers: &HeaderMap,
    key: &[u8],
) -> Result<(), ProxyError> {
    debug_assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);
    if !has_token(headers, &header::UPGRADE, "websocket") {
        return Err(ProxyError::BadUpgradeResponse("Upgrade is not websocket"));
    }
    if !has_token(headers, &header::CONNECTION, "upgrade") {
        return Err(ProxyError::BadUpgradeResponse(
            "Connection does not hold upgrade",
        ));
    }
    let mut accepts = headers.get_all(header::SEC_WEBSOCKET_ACCEPT).iter();
    let accept = accepts.next().ok_or(ProxyError::BadUpgradeResponse(
        "Sec-WebSocket-Accept is missing",
    ))?;
    // It must not appear more than once (RFC 6455 §11.3.3); a client given two would
    // refuse the 101 sluice passes on, after the tunnel was opened (found by fuzzing).
    if accepts.next().is_some() {
        return Err(ProxyError::BadUpgradeResponse(
            "Sec-WebSocket-Accept appears more than once",
        ));
    }
    if accept.as_bytes() != accept_for(key) {
        return Err(ProxyError::BadUpgradeResponse(
            "Sec-WebSocket-Accept does not match the key",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn handshake() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("example.com"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static(KEY));
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        h
    }

    #[test]
    fn new_keys_are_valid_and_differ() {
        let (a, b) = (new_key(), new_key());
        assert!(valid_key(&a) && valid_key(&b));
        assert_ne!(a, b);
    }

    #[test]
    fn extended_connect_is_a_websocket_only_over_http2() {
        let connect = |protocol: Option<&'static str>, version| {
            let mut req = http::Request::connect("https://example.com/chat")
                .version(version)
                .body(())
                .unwrap();
            if let Some(p) = protocol {
                req.extensions_mut()
                    .insert(hyper::ext::Protocol::from_static(p));
            }
            classify_request(&req)
        };
        assert_eq!(
            connect(Some("websocket"), Version::HTTP_2),
            Upgrade::WebSocketH2
        );
        assert_eq!(
            connect(Some("WebSocket"), Version::HTTP_2),
            Upgrade::WebSocketH2
        );
        assert_eq!(
            connect(Some("webtransport"), Version::HTTP_2),
            Upgrade::None
        );
        assert_eq!(connect(None, Version::HTTP_2), Upgrade::None);
        assert_eq!(connect(Some("websocket"), Version::HTTP_11), Upgrade::None);
        // An HTTP/2 GET with HTTP/1.1's upgrade headers asks for nothing.
        let mut get = http::Request::get("https://example.com/")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        *get.headers_mut() = handshake();
        assert_eq!(classify_request(&get), Upgrade::None);
    }

    #[test]
    fn http2_handshake_checks() {
        let mut h = HeaderMap::new();
        assert!(matches!(
            check_request_h2(&h),
            Err(ProxyError::UnsupportedVersion)
        ));
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        assert!(check_request_h2(&h).is_ok());
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        assert!(matches!(
            check_request_h2(&h),
            Err(ProxyError::BadHandshake(_))
        ));
    }

    #[test]
    fn accept_matches_the_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(&accept_for(KEY.as_bytes()), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn classifies_websocket_other_upgrades_and_plain() {
        let h = handshake();
        assert_eq!(classify(&Method::GET, &h), Upgrade::WebSocket);
        assert_eq!(classify(&Method::POST, &h), Upgrade::Other);
        let mut h2c = HeaderMap::new();
        h2c.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, HTTP2-Settings"),
        );
        h2c.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert_eq!(classify(&Method::GET, &h2c), Upgrade::Other);
        let mut no_conn = handshake();
        no_conn.remove(header::CONNECTION);
        assert_eq!(classify(&Method::GET, &no_conn), Upgrade::Other);
        assert_eq!(classify(&Method::GET, &HeaderMap::new()), Upgrade::None);
    }

    #[test]
    fn request_checks() {
        let h = handshake();
        assert_eq!(check_request(Version::HTTP_11, &h).unwrap(), KEY.as_bytes());
        assert!(matches!(
            check_request(Version::HTTP_10, &h),
            Err(ProxyError::BadHandshake(_))
        ));

        let mut bad_key = handshake();
        bad_key.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("short"));
        assert!(matches!(
            check_request(Version::HTTP_11, &bad_key),
            Err(ProxyError::BadHandshake(_))
        ));
        let mut no_key = handshake();
        no_key.remove(header::SEC_WEBSOCKET_KEY);
        assert!(matches!(
            check_request(Version::HTTP_11, &no_key),
            Err(ProxyError::BadHandshake(_))
        ));

        let mut v8 = handshake();
        v8.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert!(matches!(
            check_request(Version::HTTP_11, &v8),
            Err(ProxyError::UnsupportedVersion)
        ));

        let mut body = handshake();
        body.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert!(matches!(
            check_request(Version::HTTP_11, &body),
            Err(ProxyError::BadHandshake(_))
        ));
        let mut zero = handshake();
        zero.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert!(check_request(Version::HTTP_11, &zero).is_ok());
        let mut chunked = handshake();
        chunked.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(check_request(Version::HTTP_11, &chunked).is_err());
    }

    #[test]
    fn response_checks() {
        let mut ok = HeaderMap::new();
        ok.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        ok.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        ok.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        );
        let s = StatusCode::SWITCHING_PROTOCOLS;
        assert!(check_response(s, &ok, KEY.as_bytes()).is_ok());

        let mut wrong = ok.clone();
        wrong.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_static("AAAA"),
        );
        assert!(check_response(s, &wrong, KEY.as_bytes()).is_err());
        let mut no_upgrade = ok.clone();
        no_upgrade.remove(header::UPGRADE);
        assert!(check_response(s, &no_upgrade, KEY.as_bytes()).is_err());
        let mut no_conn = ok.clone();
        no_conn.remove(header::CONNECTION);
        assert!(check_response(s, &no_conn, KEY.as_bytes()).is_err());
        // Found by fuzz/fuzz_targets/upgrade_response.rs: a second accept line, right
        // or wrong, makes the response invalid.
        for second in ["s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "AAAA"] {
            let mut twice = ok.clone();
            twice.append(
                header::SEC_WEBSOCKET_ACCEPT,
                HeaderValue::from_static(second),
            );
            assert!(check_response(s, &twice, KEY.as_bytes()).is_err());
        }
    }
}
