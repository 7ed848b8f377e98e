//! Opening a connection to an upstream server: TCP under the connect timeout, then TLS
//! when the upstream asks for it.

use std::io;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{Tcp, UpstreamTls};
use crate::net::{Stream, set_tcp_options};
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
}

impl Connector {
    /// `h2` asks for HTTP/2 in ALPN, and [`Connector::connect`] then fails a server
    /// that does not agree to it.
    pub fn new(
        timeout: Duration,
        tcp: Tcp,
        tls: Option<&UpstreamTls>,
        h2: bool,
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
        })
    }

    /// Connects to `addr`; with TLS, verifies the server as `host` (the server's
    /// configured host name) unless an SNI name is configured. The timeout covers
    /// the TLS handshake too.
    pub async fn connect(&self, addr: std::net::SocketAddr, host: &str) -> io::Result<Stream> {
        let timed_out = || {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect timed out after {:?}", self.timeout),
            )
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        let tcp = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
            .await
            .map_err(|_| timed_out())??;
        set_tcp_options(&tcp, &self.tcp)?;
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

/// The host part of a `host:port` server name, for TLS verification.
pub fn host_of(server: &str) -> &str {
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}
