//! Trusted proxies (`trusted_proxies` on a listener): the peers whose
//! `X-Forwarded-For` (or `Forwarded`) and `X-Request-Id` sluice believes, as nginx's
//! `real_ip` with `real_ip_recursive on` and Caddy's `trusted_proxies` do.
//!
//! A request from a trusted peer names its client in the forwarding chain: the
//! right-most address that is not itself a trusted proxy (the ones to its right were
//! added by proxies that can be believed; the ones to its left were written by the
//! client, who may lie). From anyone else the chain is ignored and replaced, so a
//! client cannot choose its own address.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::FORWARDED;
use ipnet::IpNet;

use crate::headers::X_FORWARDED_FOR;

/// The networks a listener trusts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies { nets }
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client a request from the trusted peer `peer` names: the right-most address
    /// in its `X-Forwarded-For` (or, without one, `Forwarded`) that is not trusted.
    /// When every address is trusted, the left-most; where an entry cannot be read,
    /// the walk stops at the last address it could; with no chain at all, `peer`.
    pub fn client(&self, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
        let mut found = peer;
        let xff = headers.get_all(&X_FORWARDED_FOR);
        let entries: Vec<&str> = if xff.iter().next().is_some() {
            xff.iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .collect()
        } else {
            headers
                .get_all(FORWARDED)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(forwarded_for)
                .collect()
        };
        for entry in entries.iter().rev() {
            let Some(ip) = parse_node(entry) else {
                return found;
            };
            found = ip;
            if !self.contains(ip) {
                return ip;
            }
        }
        found
    }
}

/// The `for=` parameter of one `Forwarded` element (RFC 7239 §4), quotes removed.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("for")
            .then(|| v.trim().trim_matches('"'))
    })
}

/// An address as forwarding headers write it: `192.0.2.1`, `192.0.2.1:4711`,
/// `2001:db8::1` or `[2001:db8::1]:4711`.
fn parse_node(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| s.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
        .map(|ip: IpAddr| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()).collect())
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_right_most_untrusted_address_is_the_client() {
        let t = trusted(&["10.0.0.0/8", "192.0.2.1/32"]);
        let peer = ip("10.1.1.1");
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.5, 10.2.2.2")]);
        assert_eq!(t.client(&h, peer), ip("203.0.113.5"));
        // Over several lines, with a port and IPv6.
        let h = headers(&[
            ("x-forwarded-for", "[2001:db8::7]:4711"),
            ("x-forwarded-for", "192.0.2.1"),
        ]);
        assert_eq!(t.client(&h, peer), ip("2001:db8::7"));
        // All trusted: the left-most. None: the peer.
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.8.8.8")]);
        assert_eq!(t.client(&h, peer), ip("10.9.9.9"));
        assert_eq!(t.client(&HeaderMap::new(), peer), peer);
        // An unreadable entry stops the walk at the last good address.
        let h = headers(&[("x-forwarded-for", "203.0.113.5, garbage, 10.8.8.8")]);
        assert_eq!(t.client(&h, peer), ip("10.8.8.8"));
    }

    #[test]
    fn forwarded_is_read_when_there_is_no_x_forwarded_for() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = headers(&[(
            "forwarded",
            "for=198.51.100.17;proto=https, for=\"[2001:db8:cafe::17]:4711\";by=10.0.0.1, For=10.3.3.3",
        )]);
        assert_eq!(t.client(&h, ip("10.0.0.1")), ip("2001:db8:cafe::17"));
        let both = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=198.51.100.17"),
        ]);
        assert_eq!(t.client(&both, ip("10.0.0.1")), ip("203.0.113.9"));
    }

    #[test]
    fn mapped_addresses_match_their_ipv4_networks() {
        let t = trusted(&["127.0.0.1/32"]);
        assert!(t.contains(ip("::ffff:127.0.0.1")));
        assert!(!t.contains(ip("127.0.0.2")));
    }
}
