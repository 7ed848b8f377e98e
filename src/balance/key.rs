//! The hash key of a request for consistent hashing: the client's address, a header,
//! a cookie or a query parameter, read without allocating.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, header::COOKIE};

/// Which part of a request [`Policy::Hash`] hashes, so that requests sharing it reach
/// the same server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client's address; an IPv4-mapped IPv6 address counts as the IPv4 address.
    ClientIp,
    /// A header's first value.
    Header(HeaderName),
    /// A cookie's value, without surrounding quotes.
    Cookie(String),
    /// A query parameter's raw (undecoded) value.
    Query(String),
}

impl HashKey {
    /// Parses "client_ip" | "header:NAME" | "cookie:NAME" | "query:NAME"; Err(message) otherwise.
    pub fn parse(s: &str) -> Result<HashKey, String> {
        const FORMS: &str = r#"expected "client_ip", "header:NAME", "cookie:NAME" or "query:NAME""#;
        if s == "client_ip" {
            return Ok(HashKey::ClientIp);
        }
        let bad = |why: &str| Err(format!("{s:?}: {why}"));
        let Some((kind, name)) = s.split_once(':') else {
            return bad(FORMS);
        };
        match kind {
            "header" => match HeaderName::from_bytes(name.as_bytes()) {
                Ok(name) => Ok(HashKey::Header(name)),
                Err(_) => bad("not a header name"),
            },
            "cookie" if is_cookie_name(name) => Ok(HashKey::Cookie(name.to_owned())),
            "cookie" => bad("a cookie name is one or more token characters"),
            "query" if is_query_name(name) => Ok(HashKey::Query(name.to_owned())),
            "query" => bad(
                "a query parameter name is one or more visible ASCII characters other than & = #",
            ),
            _ => bad(FORMS),
        }
    }

    /// The key bytes for a request, or None when the request lacks it.
    ///
    /// An empty value counts as lacking it, so that requests without a real key do not
    /// all land on one server. Only the first header, cookie or parameter of the name
    /// counts. `scratch` holds the address bytes for [`HashKey::ClientIp`], so nothing
    /// is allocated.
    pub fn extract<'a>(
        &self,
        headers: &'a HeaderMap,
        query: Option<&'a str>,
        client: IpAddr,
        scratch: &'a mut [u8; 16],
    ) -> Option<&'a [u8]> {
        let key = match self {
            HashKey::ClientIp => return Some(ip_bytes(client, scratch)),
            HashKey::Header(name) => headers.get(name)?.as_bytes(),
            HashKey::Cookie(name) => cookie(headers, name.as_bytes())?,
            HashKey::Query(name) => query_param(query?, name)?,
        };
        (!key.is_empty()).then_some(key)
    }
}

/// An address's 4 or 16 bytes, written into `scratch`.
fn ip_bytes(ip: IpAddr, scratch: &mut [u8; 16]) -> &[u8] {
    // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; they must hash like
    // the same clients on an IPv4 listener.
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            scratch[..4].copy_from_slice(&v4.octets());
            &scratch[..4]
        }
        IpAddr::V6(v6) => {
            *scratch = v6.octets();
            &scratch[..]
        }
    }
}

/// The first `name` cookie's value in any `Cookie` header (`a=1; b="2"`), unquoted.
fn cookie<'a>(headers: &'a HeaderMap, name: &[u8]) -> Option<&'a [u8]> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            // A pair without `=` is malformed and skipped, not taken as a name.
            let eq = pair.iter().position(|&b| b == b'=')?;
            let (n, v) = (&pair[..eq], &pair[eq + 1..]);
            (n.trim_ascii() == name).then(|| unquote(v.trim_ascii()))
        })
}

/// `"v"` -> `v` (RFC 6265 allows a quoted cookie value); anything else unchanged.
fn unquote(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

/// The first `name` parameter's raw value in `a=1&b=2`; a bare `name` has an empty one.
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a [u8]> {
    query.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        (n == name).then_some(v.as_bytes())
    })
}

/// RFC 6265's cookie-name: an RFC 9110 token.
fn is_cookie_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Raw, so what is configured is compared with the query exactly as sent.
fn is_query_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"&=#".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn hash_key_parses_the_four_forms() {
        assert_eq!(HashKey::parse("client_ip"), Ok(HashKey::ClientIp));
        assert_eq!(
            HashKey::parse("header:X-User"),
            Ok(HashKey::Header(HeaderName::from_static("x-user")))
        );
        assert_eq!(
            HashKey::parse("cookie:sid"),
            Ok(HashKey::Cookie("sid".into()))
        );
        assert_eq!(
            HashKey::parse("query:room%5Fid"),
            Ok(HashKey::Query("room%5Fid".into()))
        );
        for bad in [
            "",
            "client",
            "client_ip:x",
            "ip",
            "header:",
            "header:bad name",
            "cookie:",
            "cookie:a=b",
            "cookie:a;b",
            "query:",
            "query:a&b",
            "query:a=b",
            "query:a b",
            "Header:x",
            "body:x",
        ] {
            let err = HashKey::parse(bad).expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    fn extract(k: &HashKey, headers: &HeaderMap, query: Option<&str>, ip: &str) -> Option<Vec<u8>> {
        let mut scratch = [0; 16];
        k.extract(headers, query, ip.parse().unwrap(), &mut scratch)
            .map(<[u8]>::to_vec)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        h
    }

    #[test]
    fn client_ip_key_is_the_address_bytes() {
        let none = HeaderMap::new();
        let ip = |s| extract(&HashKey::ClientIp, &none, None, s);
        assert_eq!(ip("192.0.2.7"), Some(vec![192, 0, 2, 7]));
        assert_eq!(ip("::ffff:192.0.2.7"), ip("192.0.2.7"));
        let v6 = ip("2001:db8::1").unwrap();
        assert_eq!(v6.len(), 16);
        assert_eq!(v6[..4], [0x20, 0x01, 0x0d, 0xb8]);
    }

    #[test]
    fn header_key_is_the_first_non_empty_value() {
        let k = HashKey::parse("header:x-user").unwrap();
        let h = headers(&[("X-User", "alice"), ("x-user", "bob")]);
        assert_eq!(extract(&k, &h, None, "::1"), Some(b"alice".to_vec()));
        assert_eq!(extract(&k, &HeaderMap::new(), None, "::1"), None);
        assert_eq!(extract(&k, &headers(&[("x-user", "")]), None, "::1"), None);
    }

    #[test]
    fn cookie_key_is_found_across_cookie_headers_and_unquoted() {
        let k = HashKey::parse("cookie:sid").unwrap();
        let get = |pairs: &[&str]| {
            let h = headers(&pairs.iter().map(|v| ("cookie", *v)).collect::<Vec<_>>());
            extract(&k, &h, None, "::1").map(|v| String::from_utf8(v).unwrap())
        };
        assert_eq!(get(&["a=1; sid=abc; b=2"]), Some("abc".into()));
        assert_eq!(get(&["a=1", "b=2;sid=\"q v\""]), Some("q v".into()));
        assert_eq!(
            get(&["xsid=1; sid2=2; SID=3; sid=4"]),
            Some("4".into()),
            "exact name only"
        );
        assert_eq!(get(&["sid = spaced ;x=1"]), Some("spaced".into()));
        assert_eq!(get(&["sid=a=b"]), Some("a=b".into()), "the first = splits");
        assert_eq!(get(&["sid=1; sid=2"]), Some("1".into()));
        assert_eq!(
            get(&["sid=\""]),
            Some("\"".into()),
            "a lone quote is not a quoted value"
        );
        // Absent, empty and malformed.
        assert_eq!(get(&[]), None);
        assert_eq!(get(&["a=1; b=2"]), None);
        assert_eq!(get(&["sid="]), None);
        assert_eq!(get(&["sid=\"\""]), None);
        assert_eq!(get(&["sid; ;;=; ="]), None);
        assert_eq!(get(&[""]), None);
    }

    #[test]
    fn query_key_is_the_raw_value() {
        let k = HashKey::parse("query:room").unwrap();
        let h = HeaderMap::new();
        let get =
            |q: Option<&str>| extract(&k, &h, q, "::1").map(|v| String::from_utf8(v).unwrap());
        assert_eq!(
            get(Some("a=1&room=lobby%20one&b=2")),
            Some("lobby%20one".into())
        );
        assert_eq!(get(Some("room=1&room=2")), Some("1".into()));
        assert_eq!(get(Some("xroom=1&rooms=2&Room=3")), None, "exact name only");
        assert_eq!(get(Some("room=a=b")), Some("a=b".into()));
        // Absent, empty and malformed.
        assert_eq!(get(None), None);
        assert_eq!(get(Some("")), None);
        assert_eq!(get(Some("room")), None);
        assert_eq!(get(Some("room=")), None);
        assert_eq!(get(Some("&&=&room&=x")), None);
    }
}
