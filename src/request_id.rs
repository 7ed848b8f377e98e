//! Request IDs: every request and tunnel carries one in `X-Request-Id`, to the
//! upstream and back to the client, and in its access line, so that one request can
//! be followed through the logs of sluice and its backends. A trusted proxy's ID is
//! kept; anyone else's is replaced.

use http::HeaderValue;

/// The longest ID taken from a trusted proxy; longer ones are replaced.
const MAX_LEN: usize = 200;

/// A new ID: 128 random bits as 32 lowercase hex digits (the shape of nginx's
/// `$request_id`).
pub fn new() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = fastrand::u128(..);
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((bits >> (124 - 4 * i)) & 0xF) as usize];
    }
    HeaderValue::from_bytes(&out).expect("hex digits are a valid header value")
}

/// Whether an incoming ID is kept: 1 to 200 visible ASCII characters, so that it
/// can sit in a log line as it is.
pub fn is_acceptable(id: &HeaderValue) -> bool {
    let b = id.as_bytes();
    !b.is_empty() && b.len() <= MAX_LEN && b.iter().all(|c| c.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_32_hex_digits_and_differ() {
        let a = new();
        let b = new();
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn only_short_visible_ids_are_kept() {
        assert!(is_acceptable(&HeaderValue::from_static("req-7f3a")));
        assert!(!is_acceptable(&HeaderValue::from_static("")));
        assert!(!is_acceptable(&HeaderValue::from_static("a b")));
        assert!(!is_acceptable(
            &HeaderValue::from_str(&"x".repeat(201)).unwrap()
        ));
    }
}
