//! Opening a connection to an upstream server: TCP under the connect timeout, a PROXY
//! protocol header when the upstream wants one, then TLS when it asks for it.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio_rustls::TlsConnector;

use crate::config::{ProxyVersion, Tcp, UpstreamTls};
use crate::net::Stream;
use crate::tls::{TlsError, client_config, with_h2_alpn};

/// How an upstream's servers are connected to.
pub struct Connector {
    timeout: Duration,
    tcp: Tcp,
    tls: Option<TlsConnector>,
    /// The SNI name for every server, when the configuration sets one.
    sni: Option<ServerName<'static>>,
    /// Whether TLS must negotiate `h2`.
    h2: bool,
    /// The PROXY header every connection starts with.
    send_proxy: Option<ProxyVersion>,
}

/// Whom a connection is opened for: the client (as sluice knows it) and the address
/// it connected to. What a PROXY header tells the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxiedFor {
    pub client: SocketAddr,
    pub local: SocketAddr,
}

impl Connector {
    /// `h2` asks for HTTP/2 in ALPN, and [`Connector::connect`] then fails a server
    /// that does not agree to it.
    pub fn new(
        timeout: Duration,
        tcp: Tcp,
        tls: Option<&UpstreamTls>,
        h2: bool,
        send_proxy: Option<ProxyVersion>,
    ) -> Result<Connector, TlsError> {
        let (connector, sni) = match tls {
            Some(t) => {
                let sni = t
                    .sni
                    .as_deref()
                    .and_then(|s| ServerName::try_from(s.to_owned()).ok());
                let mut config = client_config(t)?;
                if h2 {
                    config = with_h2_alpn(&config);
                }
                (Some(TlsConnector::from(config)), sni)
            }
            None => (None, None),
        };
        Ok(Connector {
            timeout,
            tcp,
            tls: connector,
            sni,
            h2,
            send_proxy,
        })
    }

    /// Whether connections carry a PROXY header, and so belong to one client each.
    pub fn sends_proxy_header(&self) -> bool {
        self.send_proxy.is_some()
    }

    /// Connects to `addr`; with TLS, verifies the server as `host` (the server's
    /// configured host name) unless an SNI name is configured. The timeout covers
    /// the TLS handshake too. `proxied_for` goes in the PROXY header, when the
    /// upstream wants one; without it (a health check) the header says so (v2's
    /// LOCAL, v1's UNKNOWN).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        host: &str,
        proxied_for: Option<ProxiedFor>,
    ) -> io::Result<Stream> {
        let timed_out = || {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect timed out after {:?}", self.timeout),
            )
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut tcp = tokio::time::timeout_at(deadline, crate::net::connect(addr, &self.tcp))
            .await
            .map_err(|_| timed_out())??;
        if let Some(version) = self.send_proxy {
            // Before TLS, like a load balancer's: the server reads it off the socket.
            let header = proxy_header(version, proxied_for);
            tokio::time::timeout_at(deadline, tcp.write_all(&header))
                .await
                .map_err(|_| timed_out())??;
        }
        let Some(tls) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let name = match &self.sni {
            Some(n) => n.clone(),
            None => ServerName::try_from(host.to_owned()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("`{host}` cannot be verified as a TLS server name; set `sni`"),
                )
            })?,
        };
        let stream = tokio::time::timeout_at(deadline, tls.connect(name, tcp))
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake failed: {e}")))?;
        if self.h2 && stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the server did not agree to HTTP/2 (ALPN h2)",
            ));
        }
        Ok(Stream::Tls(Box::new(stream)))
    }
}

/// The PROXY header for a connection opened for `proxied_for`.
pub fn proxy_header(version: ProxyVersion, proxied_for: Option<ProxiedFor>) -> Vec<u8> {
    // Both addresses in one family: an IPv4 client of an IPv6 listener is written as
    // its IPv4-mapped address.
    let pair = proxied_for.map(|p| match (p.client, p.local) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
            (p.client, p.local)
        }
        (c, l) => (mapped(c), mapped(l)),
    });
    match (version, pair) {
        (ProxyVersion::V1, None) => b"PROXY UNKNOWN\r\n".to_vec(),
        (ProxyVersion::V1, Some((c, l))) => {
            let family = if c.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                c.ip(),
                l.ip(),
                c.port(),
                l.port()
            )
            .into_bytes()
        }
        (ProxyVersion::V2, None) => {
            // LOCAL, AF_UNSPEC, no addresses: the server keeps the TCP peer's.
            let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
            h.extend_from_slice(&[0x20, 0x00, 0, 0]);
            h
        }
        (ProxyVersion::V2, Some((c, l))) => ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (c, l),
        )
        .build()
        .expect("a header of two addresses fits in memory"),
    }
}

fn mapped(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    }
}

/// The host part of a `host:port` server name, for TLS verification.
pub fn host_of(server: &str) -> &str {
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}
