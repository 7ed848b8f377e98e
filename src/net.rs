//! Sockets as both legs use them: the TCP options every connection gets, and the
//! stream an upstream connection is (plain or TLS). Below everything that opens or
//! moves bytes on a connection.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::config::Tcp;

/// Sets the TCP options every connection gets: no Nagle delay, keepalive probes and
/// the user timeout, which notice a peer that vanished without a FIN or RST (a dead
/// host, a NAT that forgot the flow) that no read would ever report.
///
/// On a listening socket they are inherited by every accepted connection, which saves
/// six `setsockopt` calls per connection: measured, 12 of the 41 system calls of a
/// WebSocket handshake's life were these.
///
/// Quick ACKs are turned off, so that the ACK of what the peer sent rides on sluice's
/// answer rather than going alone: on a listener (inherited) a request's ACK goes
/// with its response, and on an upstream socket, set before it connects, the
/// handshake's last ACK goes with the request (HAProxy's tcp-smart-accept and
/// tcp-smart-connect). Measured: 33.7 TCP segments per WebSocket handshake through
/// sluice before, 30.0 after (HAProxy 31.8), pure ACKs 7.2 to 4.9 (nstat in a
/// network namespace of its own, 2026-12-07).
pub fn set_tcp_options(socket: impl std::os::fd::AsFd, tcp: &Tcp) -> io::Result<()> {
    let sock = socket2::SockRef::from(&socket);
    sock.set_tcp_nodelay(true)?;
    #[cfg(target_os = "linux")]
    sock.set_tcp_quickack(false)?;
    if let Some(idle) = tcp.keepalive {
        let mut ka = socket2::TcpKeepalive::new().with_time(idle);
        if let Some(i) = tcp.keepalive_interval {
            ka = ka.with_interval(i);
        }
        if let Some(n) = tcp.keepalive_probes {
            ka = ka.with_retries(n);
        }
        sock.set_tcp_keepalive(&ka)?;
    }
    #[cfg(target_os = "linux")]
    if let Some(t) = tcp.user_timeout {
        sock.set_tcp_user_timeout(Some(t))?;
    }
    Ok(())
}

/// Opens a TCP connection to `addr` with the options of [`set_tcp_options`], set
/// before it connects.
///
/// tokio's own connect asks every socket for its error once it turns writable
/// (getsockopt SO_ERROR); here only a socket that also reports an error or a hang-up
/// is asked, which spares a system call per upstream connection: one of the 33 of a
/// WebSocket handshake's life (strace -c, 2026-12-07). The socket is made
/// non-blocking as it is created, with no fcntl.
pub async fn connect(addr: SocketAddr, tcp: &Tcp) -> io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.nonblocking(),
        Some(socket2::Protocol::TCP),
    )?;
    set_tcp_options(&socket, tcp)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    let ready = stream
        .ready(tokio::io::Interest::WRITABLE | tokio::io::Interest::ERROR)
        .await?;
    if ready.is_error() || ready.is_write_closed() {
        return Err(stream.take_error()?.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::ConnectionRefused, "the connection failed")
        }));
    }
    Ok(stream)
}

/// Whether an error says the process is out of descriptors or memory: a local
/// condition, to back off from, not a fault of the peer.
pub fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// A connection to an upstream server.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
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

/// Peeks at the start of what a client sent, without consuming it, until `decide`
/// can tell from the bytes so far (it returns `None` while it needs more). Between
/// peeks the socket's readiness is cleared, so a client that sends a little and
/// stalls costs nothing until its next segment arrives. Fails when the client closes
/// first; `decide` must decide by `max` bytes.
pub async fn peek_until<T>(
    stream: &TcpStream,
    max: usize,
    mut decide: impl FnMut(&[u8]) -> Option<T>,
) -> io::Result<T> {
    let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); max];
    loop {
        stream.readable().await?;
        let peeked = stream.try_io(tokio::io::Interest::READABLE, || {
            let n = socket2::SockRef::from(stream).peek(&mut buf)?;
            // SAFETY: peek initialised the first `n` bytes. (socket2 peeks into
            // uninitialised memory only; the allowance is for this line alone.)
            #[allow(unsafe_code)]
            let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
            if n == 0 {
                return Ok(Err(io::Error::from(io::ErrorKind::UnexpectedEof)));
            }
            match decide(bytes) {
                Some(t) => Ok(Ok(t)),
                None if n >= max => Ok(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "undecided after the longest prefix looked at",
                ))),
                // Wait for more: a WouldBlock clears the readiness peek left set.
                None => Err(io::ErrorKind::WouldBlock.into()),
            }
        });
        match peeked {
            Ok(result) => return result,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}
