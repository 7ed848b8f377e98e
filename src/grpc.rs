//! gRPC as a proxy sees it (the gRPC over HTTP/2 protocol): which requests are gRPC
//! calls, their deadlines (`grpc-timeout`), and the status codes sluice answers with
//! itself, since a gRPC client cannot read an HTTP error page.

use std::time::Duration;

use http::HeaderMap;
use http::header::CONTENT_TYPE;

/// `grpc-status` codes sluice sends (the gRPC status code list).
pub mod code {
    pub const OK: u16 = 0;
    pub const INVALID_ARGUMENT: u16 = 3;
    pub const DEADLINE_EXCEEDED: u16 = 4;
    pub const PERMISSION_DENIED: u16 = 7;
    pub const RESOURCE_EXHAUSTED: u16 = 8;
    pub const UNIMPLEMENTED: u16 = 12;
    pub const INTERNAL: u16 = 13;
    pub const UNAVAILABLE: u16 = 14;
}

/// Whether a request is a gRPC call: its content type is `application/grpc`, alone or
/// with a subtype (`application/grpc+proto`, `application/grpc-web` is not one).
pub fn is_call(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(v.get(16), None | Some(b'+') | Some(b';'))
    })
}

/// A call's deadline from its `grpc-timeout` header: an integer of at most 8 digits
/// and a unit (`H`, `M`, `S`, `m`, `u`, `n`). `None` when absent or malformed.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.as_bytes();
    let (unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The `grpc-status` in a header or trailer block, if one is there and valid.
pub fn status_of(headers: &HeaderMap) -> Option<u16> {
    let v = headers.get("grpc-status")?.to_str().ok()?;
    v.parse().ok().filter(|&c: &u16| c <= 16)
}

/// A `grpc-message` value: percent-encoded where the protocol asks (bytes outside
/// printable ASCII, and `%`).
pub fn encode_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(name: &'static str, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn grpc_calls_are_told_by_their_content_type() {
        assert!(is_call(&with("content-type", "application/grpc")));
        assert!(is_call(&with("content-type", "application/grpc+proto")));
        assert!(is_call(&with("content-type", "Application/GRPC;charset=x")));
        assert!(!is_call(&with("content-type", "application/grpc-web")));
        assert!(!is_call(&with("content-type", "application/json")));
        assert!(!is_call(&HeaderMap::new()));
    }

    #[test]
    fn timeouts_parse_with_every_unit_and_refuse_the_malformed() {
        let t = |v| timeout(&with("grpc-timeout", v));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("2M"), Some(Duration::from_secs(120)));
        assert_eq!(t("3S"), Some(Duration::from_secs(3)));
        assert_eq!(t("300m"), Some(Duration::from_millis(300)));
        assert_eq!(t("5u"), Some(Duration::from_micros(5)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "100", "123456789S", "1.5S", "-1S", "10x"] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }

    #[test]
    fn statuses_and_messages() {
        assert_eq!(status_of(&with("grpc-status", "14")), Some(14));
        assert_eq!(status_of(&with("grpc-status", "17")), None);
        assert_eq!(status_of(&with("grpc-status", "x")), None);
        assert_eq!(encode_message("no route: 100%\n"), "no route: 100%25%0A");
    }
}
