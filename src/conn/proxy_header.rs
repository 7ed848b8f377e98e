//! The PROXY protocol header (HAProxy's; v1 text, v2 binary) that a load balancer in
//! front of sluice sends first on each connection, on listeners with
//! `proxy_protocol = true`. Its source address becomes the client's.
//!
//! The header is peeked at until it is whole and only then consumed, so that not a
//! byte of what follows (a TLS ClientHello, a request) is read with it: the stream
//! goes on to TLS, HTTP and the tunnel's splice as a plain socket
//! ([`crate::net::peek_until`]: a stalled header costs nothing while it waits).
//! Parsing is the `ppp` crate's.

use std::io;
use std::net::SocketAddr;

use ppp::{PartialResult, v1, v2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest header taken. A v1 line is at most 107 bytes (the specification's
/// bound); v2 is 16 bytes, the addresses (at most 216, for UNIX sockets) and TLVs,
/// which load balancers keep short (AWS and GCP send well under 100 bytes).
const MAX_HEADER: usize = 1024;
/// The v1 bound: "PROXY TCP6 " and two full IPv6 addresses and ports, with CRLF.
const MAX_V1: usize = 107;

/// Why a connection's PROXY header was refused.
#[derive(Debug)]
pub enum HeaderError {
    Closed,
    Io(io::Error),
    /// Not a PROXY header at all: a client that came past the load balancer.
    Missing,
    Invalid(String),
    TooLong,
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Closed => f.write_str("closed before a PROXY header"),
            HeaderError::Io(e) => write!(f, "reading the PROXY header: {e}"),
            HeaderError::Missing => f.write_str("no PROXY header"),
            HeaderError::Invalid(why) => write!(f, "invalid PROXY header: {why}"),
            HeaderError::TooLong => write!(f, "PROXY header over {MAX_HEADER} bytes"),
        }
    }
}

/// What a whole header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// The header's length on the wire.
    pub len: usize,
    /// The client's address; `None` for v2's LOCAL command (the balancer's own health
    /// check) and for UNKNOWN or non-IP families: the TCP peer's address stands.
    pub source: Option<SocketAddr>,
}

/// Reads a PROXY header from the start of `stream` and consumes exactly it.
pub async fn read(stream: &mut TcpStream) -> Result<Parsed, HeaderError> {
    let parsed = crate::net::peek_until(stream, MAX_HEADER, |bytes| match parse(bytes) {
        Ok(None) => None,
        Ok(Some(p)) => Some(Ok(p)),
        Err(e) => Some(Err(e)),
    })
    .await
    .map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => HeaderError::Closed,
        _ => HeaderError::Io(e),
    })??;
    let mut header = [0u8; MAX_HEADER];
    stream
        .read_exact(&mut header[..parsed.len])
        .await
        .map_err(HeaderError::Io)?;
    Ok(parsed)
}

/// The first 12 bytes of every v2 header.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Parses the bytes at the start of a connection: `Ok(None)` while a header may still
/// be coming.
pub fn parse(bytes: &[u8]) -> Result<Option<Parsed>, HeaderError> {
    if bytes.starts_with(b"PROXY ") {
        // A v1 line is whole at its CRLF, which must come within 107 bytes; ppp is
        // given the line alone (it misreads a line cut between CR and LF).
        let within = &bytes[..bytes.len().min(MAX_V1)];
        let line = match within.windows(2).position(|w| w == b"\r\n") {
            Some(end) => &bytes[..end + 2],
            None if bytes.len() >= MAX_V1 => return Err(HeaderError::TooLong),
            None => return Ok(None),
        };
        let h = v1::Header::try_from(line).map_err(|e| HeaderError::Invalid(e.to_string()))?;
        return Ok(Some(Parsed {
            len: line.len(),
            source: match h.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            },
        }));
    }
    if !bytes.starts_with(V2_SIGNATURE) {
        return if V2_SIGNATURE.starts_with(bytes) || b"PROXY ".starts_with(bytes) {
            Ok(None)
        } else {
            Err(HeaderError::Missing)
        };
    }
    let h = match v2::Header::try_from(bytes) {
        Ok(h) => h,
        // The fixed part says how long the rest is.
        Err(v2::ParseError::Partial(_, need)) if 16 + need > MAX_HEADER => {
            return Err(HeaderError::TooLong);
        }
        Err(e) if e.is_incomplete() => return Ok(None),
        Err(e) => return Err(HeaderError::Invalid(e.to_string())),
    };
    Ok(Some(Parsed {
        len: h.len(),
        source: match (h.command, h.addresses) {
            (v2::Command::Local, _) => None,
            (_, v2::Addresses::IPv4(a)) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            (_, v2::Addresses::IPv6(a)) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            (_, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => None,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&((addresses.len() + tlvs.len()) as u16).to_be_bytes());
        h.extend_from_slice(addresses);
        h.extend_from_slice(tlvs);
        h
    }

    const V4: [u8; 12] = [203, 0, 113, 7, 10, 0, 0, 1, 0x30, 0x39, 0x01, 0xBB];

    #[test]
    fn v1_lines() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 12345 443\r\nGET / HTTP/1.1\r\n";
        let p = parse(line).unwrap().unwrap();
        assert_eq!(p.len, line.len() - b"GET / HTTP/1.1\r\n".len());
        assert_eq!(p.source, Some("203.0.113.7:12345".parse().unwrap()));
        let six = b"PROXY TCP6 2001:db8::1 2001:db8::2 5 6\r\n";
        assert_eq!(
            parse(six).unwrap().unwrap().source,
            Some("[2001:db8::1]:5".parse().unwrap())
        );
        let unknown = parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap();
        assert_eq!((unknown.len, unknown.source), (15, None));
    }

    #[test]
    fn v2_headers() {
        let h = v2(1, 0x11, &V4, &[0x04, 0, 1, 0]);
        let mut with_data = h.clone();
        with_data.extend_from_slice(b"\x16\x03\x01");
        let p = parse(&with_data).unwrap().unwrap();
        assert_eq!(p.len, h.len());
        assert_eq!(p.source, Some("203.0.113.7:12345".parse().unwrap()));
        // LOCAL (a balancer's health check) and UNSPEC keep the TCP peer's address.
        assert_eq!(parse(&v2(0, 0x11, &V4, &[])).unwrap().unwrap().source, None);
        assert_eq!(parse(&v2(1, 0x00, &[], &[])).unwrap().unwrap().source, None);
    }

    #[test]
    fn partial_headers_wait_and_bad_ones_fail() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 12345 443\r\n";
        for cut in 0..line.len() {
            assert!(parse(&line[..cut]).unwrap().is_none(), "v1 cut at {cut}");
        }
        let h = v2(1, 0x11, &V4, &[]);
        for cut in 0..h.len() {
            assert!(parse(&h[..cut]).unwrap().is_none(), "v2 cut at {cut}");
        }
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n"),
            Err(HeaderError::Missing)
        ));
        assert!(matches!(
            parse(b"\x16\x03\x01\x02\x00"),
            Err(HeaderError::Missing)
        ));
        // A v1 line without its CRLF in 107 bytes, and one ending in LF alone.
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 100]].concat();
        assert!(matches!(parse(&long), Err(HeaderError::TooLong)));
        assert!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\nGET")
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Err(HeaderError::Invalid(_))
        ));
        // A v2 header announcing more than sluice takes.
        let mut huge = v2(1, 0x11, &V4, &[]);
        huge[14..16].copy_from_slice(&4000u16.to_be_bytes());
        assert!(matches!(parse(&huge), Err(HeaderError::TooLong)));
        // Too short for its address family.
        assert!(matches!(
            parse(&v2(1, 0x11, &V4[..6], &[])),
            Err(HeaderError::Invalid(_))
        ));
    }
}
