//! `balance::HashKey`: parsing a `hash_key` setting, then reading the key from a
//! request's headers, query and client address, with oracles: a parsed key is one of
//! the four forms; a key read is never empty; a header key is the header's first
//! value, a query key the first parameter of the name (a plain re-statement), a cookie
//! key lies inside one of the Cookie lines, and a client key is 4 or 16 bytes.
//!
//! Input: lines; the `hash_key` setting, the client's address, `?` and the query (or
//! no `?` for none), then `name: value` header lines.
#![no_main]

use std::net::{IpAddr, Ipv6Addr};

use http::header::{COOKIE, HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sluice::balance::HashKey;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let spec = lines.next().unwrap_or_default();
    let client: IpAddr = lines
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or(IpAddr::V6(Ipv6Addr::LOCALHOST));
    let query = lines.next().and_then(|l| l.strip_prefix('?'));
    let Ok(key) = HashKey::parse(spec) else {
        return;
    };
    match &key {
        HashKey::ClientIp => assert_eq!(spec, "client_ip"),
        HashKey::Header(n) => assert!(spec.eq_ignore_ascii_case(&format!("header:{n}"))),
        HashKey::Cookie(n) => assert_eq!(spec, format!("cookie:{n}")),
        HashKey::Query(n) => assert_eq!(spec, format!("query:{n}")),
    }

    let mut headers = HeaderMap::new();
    for line in lines.take(16) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value.trim_start()),
        ) {
            headers.append(n, v);
        }
    }

    let mut scratch = [0u8; 16];
    let Some(got) = key.extract(&headers, query, client, &mut scratch) else {
        if let HashKey::Header(n) = &key {
            assert!(headers.get(n).is_none_or(|v| v.is_empty()));
        }
        return;
    };
    assert!(!got.is_empty());
    match &key {
        HashKey::ClientIp => {
            let expected = match client.to_canonical() {
                IpAddr::V4(v4) => v4.octets().to_vec(),
                IpAddr::V6(v6) => v6.octets().to_vec(),
            };
            assert_eq!(got, expected);
        }
        HashKey::Header(n) => assert_eq!(Some(got), headers.get(n).map(HeaderValue::as_bytes)),
        HashKey::Cookie(_) => assert!(
            headers
                .get_all(COOKIE)
                .iter()
                .any(|v| v.as_bytes().windows(got.len()).any(|w| w == got))
        ),
        HashKey::Query(n) => {
            let first = query
                .and_then(|q| q.split('&').find(|p| p.split('=').next() == Some(n)))
                .map(|p| p.split_once('=').map_or("", |(_, v)| v));
            assert_eq!(Some(got), first.map(str::as_bytes));
        }
    }
});
