//! An upstream's answer to a WebSocket handshake through `handshake::check_response`,
//! with an oracle: a response it accepts really is a 101 with `Upgrade: websocket`,
//! `Connection: upgrade` and exactly one `Sec-WebSocket-Accept`, the one that matches
//! the key (computed here independently, RFC 6455 §4.2.2).
//!
//! The first byte picks the mode. Even: the rest is a raw response head, checked
//! against a fixed key. Odd: the rest is a structured response built from parts, where
//! the right accept value is one of the choices, so the accepting path is reached
//! without the fuzzer having to guess a SHA-1.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sha1::{Digest, Sha1};
use sluice::handshake;

/// RFC 6455 §1.3's example key.
const KEY: &[u8] = b"dGhlIHNhbXBsZSBub25jZQ==";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        if let Some((status, headers)) = parse(rest) {
            check(status, &headers, KEY);
        }
    } else if let Ok(resp) = Structured::arbitrary_take_rest(Unstructured::new(rest)) {
        let key = BASE64.encode(resp.nonce);
        let headers = resp.headers(key.as_bytes());
        check(StatusCode::SWITCHING_PROTOCOLS, &headers, key.as_bytes());
    }
});

fn parse(bytes: &[u8]) -> Option<(StatusCode, HeaderMap)> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut slots);
    let httparse::Status::Complete(_) = parsed.parse(bytes).ok()? else {
        return None;
    };
    let status = StatusCode::from_u16(parsed.code?).ok()?;
    let mut headers = HeaderMap::new();
    for h in parsed.headers.iter() {
        headers.append(
            HeaderName::from_bytes(h.name.as_bytes()).ok()?,
            HeaderValue::from_bytes(h.value).ok()?,
        );
    }
    Some((status, headers))
}

/// As the request service does: only a 101 is checked, anything else is a refusal.
fn check(status: StatusCode, headers: &HeaderMap, key: &[u8]) {
    if status != StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    if handshake::check_response(status, headers, key).is_err() {
        return;
    }
    assert!(has_token(headers, &header::UPGRADE, "websocket"));
    assert!(has_token(headers, &header::CONNECTION, "upgrade"));
    let accepts: Vec<_> = headers
        .get_all(header::SEC_WEBSOCKET_ACCEPT)
        .iter()
        .collect();
    assert_eq!(
        accepts.len(),
        1,
        "accepted with {} Sec-WebSocket-Accept lines",
        accepts.len()
    );
    assert_eq!(accepts[0].as_bytes(), expected_accept(key).as_bytes());
}

fn expected_accept(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    BASE64.encode(sha.finalize())
}

fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|t| {
            t.trim_matches(|b| b == b' ' || b == b'\t')
                .eq_ignore_ascii_case(token.as_bytes())
        })
    })
}

trait TrimMatches {
    fn trim_matches(&self, f: impl Fn(u8) -> bool) -> &[u8];
}

impl TrimMatches for [u8] {
    fn trim_matches(&self, f: impl Fn(u8) -> bool) -> &[u8] {
        let start = self.iter().position(|&b| !f(b)).unwrap_or(self.len());
        let end = self.iter().rposition(|&b| !f(b)).map_or(start, |i| i + 1);
        &self[start..end]
    }
}

#[derive(Debug, Arbitrary)]
struct Structured {
    nonce: [u8; 16],
    lines: Vec<Line>,
}

#[derive(Debug, Arbitrary)]
struct Line {
    name: Name,
    value: Value,
}

#[derive(Debug, Arbitrary)]
enum Name {
    Upgrade,
    Connection,
    Accept,
    Other(String),
}

#[derive(Debug, Arbitrary)]
enum Value {
    /// The accept value that matches the key.
    RightAccept,
    /// The matching accept value, with one byte changed.
    NearAccept(u8, u8),
    /// One of the values a real server sends, possibly in a list, in any case.
    Known(u8, bool, Option<String>),
    Raw(Vec<u8>),
}

const KNOWN: &[&str] = &[
    "websocket",
    "upgrade",
    "Upgrade",
    "WebSocket",
    "keep-alive",
    "h2c",
    "",
];

impl Structured {
    fn headers(&self, key: &[u8]) -> HeaderMap {
        let accept = expected_accept(key);
        let mut headers = HeaderMap::new();
        for line in &self.lines {
            let name = match &line.name {
                Name::Upgrade => header::UPGRADE,
                Name::Connection => header::CONNECTION,
                Name::Accept => header::SEC_WEBSOCKET_ACCEPT,
                Name::Other(s) => match HeaderName::from_bytes(s.as_bytes()) {
                    Ok(n) => n,
                    Err(_) => continue,
                },
            };
            let value = match &line.value {
                Value::RightAccept => accept.clone().into_bytes(),
                Value::NearAccept(at, to) => {
                    let mut v = accept.clone().into_bytes();
                    let i = usize::from(*at) % v.len();
                    v[i] = *to;
                    v
                }
                Value::Known(i, upper, extra) => {
                    let mut v = KNOWN[usize::from(*i) % KNOWN.len()].to_owned();
                    if *upper {
                        v.make_ascii_uppercase();
                    }
                    if let Some(extra) = extra {
                        v.push_str(extra);
                    }
                    v.into_bytes()
                }
                Value::Raw(v) => v.clone(),
            };
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                headers.append(name, value);
            }
        }
        headers
    }
}
