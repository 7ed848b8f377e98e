//! gRPC's header readers and `grpc-message` encoding, each against a plain statement of
//! its rule. `encode_message`'s output must be a valid header value of printable ASCII
//! that percent-decodes back to the input.
//!
//! Input: a `content-type` line, a `grpc-timeout` line, a `grpc-status` line (each
//! absent when empty), then the message, the rest of the input.
#![no_main]

use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sluice::grpc;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |&b| b == b'\n');
    let mut headers = HeaderMap::new();
    for name in [CONTENT_TYPE.as_str(), "grpc-timeout", "grpc-status"] {
        if let Some(v) = parts.next().filter(|v| !v.is_empty())
            && let Ok(v) = HeaderValue::from_bytes(v)
        {
            headers.insert(name, v);
        }
    }
    let message = String::from_utf8_lossy(parts.next().unwrap_or_default());

    let ct = headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes);
    let is_call = ct.is_some_and(|v| {
        let lower = v.to_ascii_lowercase();
        lower == b"application/grpc"
            || lower.starts_with(b"application/grpc+")
            || lower.starts_with(b"application/grpc;")
    });
    assert_eq!(grpc::is_call(&headers), is_call);

    let timeout = headers.get("grpc-timeout").and_then(|v| {
        let s = v.to_str().ok()?;
        let unit = s.chars().last()?;
        let digits = &s[..s.len() - unit.len_utf8()];
        if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // u128: 99,999,999 hours in nanoseconds is past u64.
        let n: u128 = digits.parse().ok()?;
        let nanos = match unit {
            'H' => n * 3_600_000_000_000,
            'M' => n * 60_000_000_000,
            'S' => n * 1_000_000_000,
            'm' => n * 1_000_000,
            'u' => n * 1_000,
            'n' => n,
            _ => return None,
        };
        Some(nanos)
    });
    assert_eq!(grpc::timeout(&headers).map(|d| d.as_nanos()), timeout);

    let status = headers
        .get("grpc-status")
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|&c| c <= 16);
    assert_eq!(grpc::status_of(&headers), status);

    let encoded = grpc::encode_message(&message);
    assert!(HeaderValue::from_str(&encoded).is_ok(), "{encoded:?}");
    assert!(encoded.bytes().all(|b| (0x20..=0x7e).contains(&b)));
    assert_eq!(percent_decode(encoded.as_bytes()), message.as_bytes());
});

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).expect("a hex digit") as u8;
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            out.push(hex(s[i + 1]) << 4 | hex(s[i + 2]));
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}
