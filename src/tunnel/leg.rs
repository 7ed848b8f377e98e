//! A tunnel's legs: the upgraded connections hyper hands over, unwrapped to plain
//! sockets where that is possible, so that the splice transfer can use them; and the
//! transfers a pair of legs can use.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Dir, Side, Step, Transfer, copy, ws};
#[cfg(target_os = "linux")]
use super::{splice, uring};

/// Any async byte stream a leg can be.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// One leg of a tunnel, unwrapped from hyper's `Upgraded` where that is possible.
pub enum Leg {
    Tcp(tokio::net::TcpStream),
    Stream(Box<dyn Io>),
}

impl Leg {
    /// A client connection is served over `TokioIo<TcpStream>` on plain listeners;
    /// on TLS listeners it stays behind hyper's wrapper, which replays its early
    /// bytes itself. Returns the leg and the bytes hyper read past the handshake.
    pub(super) fn client(up: hyper::upgrade::Upgraded) -> (Leg, Bytes) {
        use hyper_util::rt::TokioIo;
        match up.downcast::<TokioIo<tokio::net::TcpStream>>() {
            Ok(parts) => (Leg::Tcp(parts.io.into_inner()), parts.read_buf),
            Err(up) => (Leg::Stream(Box::new(TokioIo::new(up))), Bytes::new()),
        }
    }

    /// An upstream connection is a `TokioIo<net::Stream>`, plain or TLS.
    pub(super) fn upstream(up: hyper::upgrade::Upgraded) -> (Leg, Bytes) {
        use hyper_util::rt::TokioIo;
        match up.downcast::<TokioIo<crate::net::Stream>>() {
            Ok(parts) => match parts.io.into_inner() {
                crate::net::Stream::Plain(tcp) => (Leg::Tcp(tcp), parts.read_buf),
                tls => (Leg::Stream(Box::new(tls)), parts.read_buf),
            },
            Err(up) => (Leg::Stream(Box::new(TokioIo::new(up))), Bytes::new()),
        }
    }
}

impl AsyncRead for Leg {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Leg::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Leg::Stream(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Leg {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Leg::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Leg::Stream(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Leg::Tcp(s) => Pin::new(s).poll_flush(cx),
            Leg::Stream(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Leg::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Leg::Stream(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The transfers a tunnel between upgraded connections can use.
pub enum Transfers {
    #[cfg(target_os = "linux")]
    Sockets(splice::Sockets),
    /// The io_uring experiment (`SLUICE_IO_URING=1`), opaque tunnels only.
    #[cfg(target_os = "linux")]
    Uring(uring::Sockets),
    Copy(copy::Copy<Leg, Leg>),
}

impl Transfer for Transfers {
    fn poll_dir(
        &mut self,
        dir: Dir,
        cx: &mut Context<'_>,
        step: &mut Step<'_>,
    ) -> Poll<Result<(), Side>> {
        match self {
            #[cfg(target_os = "linux")]
            Transfers::Sockets(t) => t.poll_dir(dir, cx, step),
            #[cfg(target_os = "linux")]
            Transfers::Uring(t) => t.poll_dir(dir, cx, step),
            Transfers::Copy(t) => t.poll_dir(dir, cx, step),
        }
    }

    fn eof(&self, dir: Dir) -> bool {
        match self {
            #[cfg(target_os = "linux")]
            Transfers::Sockets(t) => t.eof(dir),
            #[cfg(target_os = "linux")]
            Transfers::Uring(t) => t.eof(dir),
            Transfers::Copy(t) => t.eof(dir),
        }
    }

    fn total(&self, dir: Dir) -> u64 {
        match self {
            #[cfg(target_os = "linux")]
            Transfers::Sockets(t) => t.total(dir),
            #[cfg(target_os = "linux")]
            Transfers::Uring(t) => t.total(dir),
            Transfers::Copy(t) => t.total(dir),
        }
    }

    fn track(&mut self, dir: Dir) -> Option<&mut ws::Track> {
        match self {
            #[cfg(target_os = "linux")]
            Transfers::Sockets(t) => t.track(dir),
            #[cfg(target_os = "linux")]
            Transfers::Uring(t) => t.track(dir),
            Transfers::Copy(t) => t.track(dir),
        }
    }
}
