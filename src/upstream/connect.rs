//! Opening a connection to an upstream server: TCP under the connect timeout, then TLS
//! when the upstream asks for it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::{Tcp, UpstreamTls};
use crate::tls::{TlsError, client_config};

/// A connection to an upstream server.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// How an upstream's servers are connected to.
pub struct Connector {
    timeout: Duration,
    tcp: Tcp,
    tls: Option<TlsConnector>,
    /// The SNI name for every server, when the configuration sets one.
    sni: Option<ServerName<'static>>,
}

impl Connector {
    pub fn new(
        timeout: Duration,
        tcp: Tcp,
        tls: Option<&UpstreamTls>,
    ) -> Result<Connector, TlsError> {
        let (connector, sni) = match tls {
            Some(t) => {
                let sni = t
                    .sni
                    .as_deref()
                    .and_then(|s| ServerName::try_from(s.to_owned()).ok());
                (Some(TlsConnector::from(client_config(t)?)), sni)
            }
            None => (None, None),
        };
        Ok(Connector {
            timeout,
            tcp,
            tls: connector,
            sni,
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
        crate::server::set_tcp_options(&tcp, &self.tcp)?;
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
        Ok(Stream::Tls(Box::new(stream)))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The host part of a `host:port` server name, for TLS verification.
pub fn host_of(server: &str) -> &str {
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}
