//! A tunnel: the two upgraded connections of a WebSocket, spliced in both directions.
//!
//! Each direction moves what is there and reads nothing more until it is written, so a
//! slow reader slows its writer instead of growing memory. An end of stream one way
//! shuts down the write side of the other while the opposite direction keeps flowing
//! (half-close). The tunnel ends when both directions have ended, on an error or reset
//! of either side, after `idle` with no bytes either way (`half_closed`, once one
//! direction has ended: a peer that never closes its side must not hold the tunnel for
//! the whole idle period), or when `stop` says so (drain, lifetime, removed server).
//!
//! Bytes move one of two ways, chosen per tunnel: between two plain sockets on Linux,
//! [`splice`] moves them through a borrowed pipe without copying them through user
//! space; otherwise [`copy`] reads into a per-thread scratch buffer. Either way an
//! idle tunnel holds no buffer and no pipe: its memory is its two sockets and this
//! state.

mod copy;
#[cfg(target_os = "linux")]
pub mod splice;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both directions finished; the client was the first to end its side.
    ClientClosed,
    /// Both directions finished; the upstream was the first to end its side.
    UpstreamClosed,
    /// No bytes either way for the idle timeout.
    Idle,
    /// Shutdown's drain period ran out.
    Drain,
    /// The tunnel reached `max_tunnel_lifetime`.
    MaxLifetime,
    /// A reload removed the tunnel's upstream server; its tunnels drained.
    ServerRemoved,
    /// A read or write failed on the client's side.
    ClientError,
    /// A read or write failed on the upstream's side.
    UpstreamError,
}

impl End {
    /// The label used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::UpstreamClosed => "upstream_closed",
            End::Idle => "idle_timeout",
            End::Drain => "drain",
            End::MaxLifetime => "max_lifetime",
            End::ServerRemoved => "server_removed",
            End::ClientError => "client_error",
            End::UpstreamError => "upstream_error",
        }
    }
}

/// What a finished tunnel reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub end: End,
    pub client_to_upstream: u64,
    pub upstream_to_client: u64,
}

/// How long a tunnel may go without moving a byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// While both directions are open.
    pub idle: Duration,
    /// Once one direction has ended.
    pub half_closed: Duration,
}

/// Live byte counters for the two directions.
pub struct Counters {
    pub client_to_upstream: IntCounter,
    pub upstream_to_client: IntCounter,
}

/// Splices two async streams until the tunnel ends (see the module docs), or until
/// `stop` resolves, with the reason it gives.
pub async fn run<C, U>(
    client: C,
    upstream: U,
    timers: Timers,
    counters: Counters,
    stop: impl Future<Output = End>,
) -> Report
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    drive(copy::Copy::new(client, upstream), timers, counters, stop).await
}

/// Like [`run`] for two plain sockets, moving bytes with `splice(2)`.
#[cfg(target_os = "linux")]
pub async fn run_sockets(
    client: tokio::net::TcpStream,
    upstream: tokio::net::TcpStream,
    timers: Timers,
    counters: Counters,
    stop: impl Future<Output = End>,
) -> Report {
    drive(
        splice::Sockets::new(client, upstream),
        timers,
        counters,
        stop,
    )
    .await
}

async fn drive<T: Transfer>(
    transfer: T,
    timers: Timers,
    counters: Counters,
    stop: impl Future<Output = End>,
) -> Report {
    let mut tunnel = Tunnel {
        transfer,
        done: [false; 2],
        first_eof: None,
        limit: timers.idle,
        timers,
        last_activity: Instant::now(),
        idle_timer: Box::pin(tokio::time::sleep(timers.idle)),
        counters,
    };
    let end = tokio::select! {
        end = &mut tunnel => end,
        end = stop => end,
    };
    Report {
        end,
        client_to_upstream: tunnel.transfer.total(Dir::Up),
        upstream_to_client: tunnel.transfer.total(Dir::Down),
    }
}

/// A direction: client to upstream, or back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    Up,
    Down,
}

/// Which side of a direction failed.
pub(crate) enum Side {
    Reader,
    Writer,
}

/// How bytes move between the two legs, one direction at a time.
pub(crate) trait Transfer: Unpin {
    /// Moves bytes one way until a side would block (`Pending`), the direction is
    /// finished, its writer shut down after end of stream (`Ready(Ok)`), or a side
    /// fails. Sets `moved` when bytes moved.
    fn poll_dir(
        &mut self,
        dir: Dir,
        cx: &mut Context<'_>,
        counter: &IntCounter,
        moved: &mut bool,
    ) -> Poll<Result<(), Side>>;
    /// Whether the direction's reader reached end of stream.
    fn eof(&self, dir: Dir) -> bool;
    /// Bytes moved that way so far.
    fn total(&self, dir: Dir) -> u64;
}

/// The lifecycle common to every transfer: both directions, half-close, idle timers.
struct Tunnel<T> {
    transfer: T,
    done: [bool; 2],
    first_eof: Option<End>,
    timers: Timers,
    /// The inactivity limit now in force: `idle`, then `half_closed`.
    limit: Duration,
    last_activity: Instant,
    // The timer is reset only when it fires, from `last_activity`: moving it on every
    // read would cost a timer-wheel update per message.
    idle_timer: Pin<Box<Sleep>>,
    counters: Counters,
}

impl<T: Transfer> Future for Tunnel<T> {
    type Output = End;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<End> {
        let this = self.get_mut();
        let mut moved = false;
        for (i, dir, counter, failed) in [
            (
                0,
                Dir::Up,
                &this.counters.client_to_upstream,
                [End::ClientError, End::UpstreamError],
            ),
            (
                1,
                Dir::Down,
                &this.counters.upstream_to_client,
                [End::UpstreamError, End::ClientError],
            ),
        ] {
            if this.done[i] {
                continue;
            }
            match this.transfer.poll_dir(dir, cx, counter, &mut moved) {
                Poll::Ready(Ok(())) => this.done[i] = true,
                Poll::Ready(Err(Side::Reader)) => return Poll::Ready(failed[0]),
                Poll::Ready(Err(Side::Writer)) => return Poll::Ready(failed[1]),
                Poll::Pending => {}
            }
        }
        if this.first_eof.is_none() && (this.transfer.eof(Dir::Up) || this.transfer.eof(Dir::Down))
        {
            this.first_eof = Some(if this.transfer.eof(Dir::Up) {
                End::ClientClosed
            } else {
                End::UpstreamClosed
            });
            this.limit = this.timers.idle.min(this.timers.half_closed);
            let deadline = this.last_activity.max(Instant::now()) + this.limit;
            this.idle_timer.as_mut().reset(deadline);
        }
        if this.done == [true, true] {
            return Poll::Ready(this.first_eof.unwrap_or(End::ClientClosed));
        }
        if moved {
            this.last_activity = Instant::now();
        }
        while this.idle_timer.as_mut().poll(cx).is_ready() {
            let deadline = this.last_activity + this.limit;
            if deadline <= Instant::now() {
                return Poll::Ready(End::Idle);
            }
            this.idle_timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

/// Runs the tunnel between two upgraded HTTP connections, on the fastest transfer
/// their transports allow: `splice(2)` when both are plain sockets, the copying
/// transfer otherwise (TLS on either leg).
pub async fn run_upgraded(
    client: hyper::upgrade::Upgraded,
    upstream: hyper::upgrade::Upgraded,
    timers: Timers,
    counters: Counters,
    stop: impl Future<Output = End>,
) -> Report {
    let mut client = Leg::client(client);
    let mut upstream = Leg::upstream(upstream);
    // Bytes hyper read past either handshake (a client's first frame, an upstream's
    // greeting sent with its 101) go to the other side before anything else.
    let early = async {
        let to_upstream = client.take_early();
        let to_client = upstream.take_early();
        upstream.write_early(&to_upstream).await?;
        client.write_early(&to_client).await?;
        io::Result::Ok((to_upstream.len() as u64, to_client.len() as u64))
    };
    let (up, down) = match tokio::time::timeout(timers.idle, early).await {
        Ok(Ok(n)) => n,
        Ok(Err(_)) | Err(_) => {
            return Report {
                end: End::ClientError,
                client_to_upstream: 0,
                upstream_to_client: 0,
            };
        }
    };
    counters.client_to_upstream.inc_by(up);
    counters.upstream_to_client.inc_by(down);
    let mut report = match (client, upstream) {
        #[cfg(target_os = "linux")]
        (Leg::Tcp(c, _), Leg::Tcp(u, _)) if splice::enabled() => {
            run_sockets(c, u, timers, counters, stop).await
        }
        (c, u) => run(c, u, timers, counters, stop).await,
    };
    report.client_to_upstream += up;
    report.upstream_to_client += down;
    report
}

/// Any async byte stream a leg can be.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// One leg of a tunnel, unwrapped from hyper's `Upgraded` where that is possible, with
/// the bytes hyper had read past the handshake.
enum Leg {
    Tcp(tokio::net::TcpStream, bytes::Bytes),
    Stream(Box<dyn Io>, bytes::Bytes),
}

impl Leg {
    /// A client connection is served over `TokioIo<TcpStream>` on plain listeners;
    /// on TLS listeners it stays behind hyper's wrapper, which replays its early bytes.
    fn client(up: hyper::upgrade::Upgraded) -> Leg {
        use hyper_util::rt::TokioIo;
        match up.downcast::<TokioIo<tokio::net::TcpStream>>() {
            Ok(parts) => Leg::Tcp(parts.io.into_inner(), parts.read_buf),
            Err(up) => Leg::Stream(Box::new(TokioIo::new(up)), bytes::Bytes::new()),
        }
    }

    /// An upstream connection is a `TokioIo<upstream::Stream>`, plain or TLS.
    fn upstream(up: hyper::upgrade::Upgraded) -> Leg {
        use hyper_util::rt::TokioIo;
        match up.downcast::<TokioIo<crate::upstream::Stream>>() {
            Ok(parts) => match parts.io.into_inner() {
                crate::upstream::Stream::Plain(tcp) => Leg::Tcp(tcp, parts.read_buf),
                tls => Leg::Stream(Box::new(tls), parts.read_buf),
            },
            Err(up) => Leg::Stream(Box::new(TokioIo::new(up)), bytes::Bytes::new()),
        }
    }

    fn take_early(&mut self) -> bytes::Bytes {
        match self {
            Leg::Tcp(_, early) | Leg::Stream(_, early) => std::mem::take(early),
        }
    }

    async fn write_early(&mut self, bytes: &[u8]) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        if !bytes.is_empty() {
            self.write_all(bytes).await?;
            self.flush().await?;
        }
        Ok(())
    }
}

impl AsyncRead for Leg {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Leg::Tcp(s, _) => Pin::new(s).poll_read(cx, buf),
            Leg::Stream(s, _) => Pin::new(s).poll_read(cx, buf),
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
            Leg::Tcp(s, _) => Pin::new(s).poll_write(cx, buf),
            Leg::Stream(s, _) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Leg::Tcp(s, _) => Pin::new(s).poll_flush(cx),
            Leg::Stream(s, _) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Leg::Tcp(s, _) => Pin::new(s).poll_shutdown(cx),
            Leg::Stream(s, _) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    fn timers(secs: u64) -> Timers {
        Timers {
            idle: Duration::from_secs(secs),
            half_closed: Duration::from_secs(secs),
        }
    }

    fn counters() -> Counters {
        Counters {
            client_to_upstream: IntCounter::new("a", "a").unwrap(),
            upstream_to_client: IntCounter::new("b", "b").unwrap(),
        }
    }

    #[tokio::test]
    async fn copies_both_ways_and_passes_half_close() {
        let (client, mut client_peer) = duplex(1024);
        let (upstream, mut upstream_peer) = duplex(1024);
        let c = counters();
        let up_counter = c.client_to_upstream.clone();
        let task = tokio::spawn(run(
            client,
            upstream,
            timers(60),
            c,
            std::future::pending::<End>(),
        ));

        client_peer.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        upstream_peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(up_counter.get(), 5);

        // The client ends its side; the upstream sees EOF but can still answer.
        client_peer.shutdown().await.unwrap();
        assert_eq!(upstream_peer.read(&mut buf).await.unwrap(), 0);
        upstream_peer.write_all(b"bye").await.unwrap();
        let mut got = [0u8; 3];
        client_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"bye");
        upstream_peer.shutdown().await.unwrap();

        let report = task.await.unwrap();
        assert_eq!(report.end, End::ClientClosed);
        assert_eq!(report.client_to_upstream, 5);
        assert_eq!(report.upstream_to_client, 3);
    }

    #[tokio::test]
    async fn a_slow_reader_bounds_what_is_buffered() {
        // The upstream side never reads: the pump must stop reading the client once its
        // one pending chunk is stuck, leaving the rest in the client's pipe.
        let (client, mut client_peer) = duplex(64 * 1024);
        let (upstream, _upstream_peer) = duplex(1024);
        let task = tokio::spawn(run(
            client,
            upstream,
            timers(60),
            counters(),
            std::future::pending::<End>(),
        ));
        let chunk = vec![7u8; 16 * 1024];
        let mut sent = 0usize;
        loop {
            match tokio::time::timeout(Duration::from_millis(200), client_peer.write_all(&chunk))
                .await
            {
                Ok(Ok(())) => sent += chunk.len(),
                _ => break,
            }
            assert!(sent < 1024 * 1024, "the pump kept reading without writing");
        }
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn idle_tunnels_close() {
        let (client, _c) = duplex(1024);
        let (upstream, _u) = duplex(1024);
        let report = run(
            client,
            upstream,
            timers(5),
            counters(),
            std::future::pending::<End>(),
        )
        .await;
        assert_eq!(report.end, End::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_half_closed_tunnel_closes_after_the_shorter_timer() {
        let (client, mut client_peer) = duplex(1024);
        let (upstream, _u) = duplex(1024);
        let started = Instant::now();
        let run = tokio::spawn(run(
            client,
            upstream,
            Timers {
                idle: Duration::from_secs(300),
                half_closed: Duration::from_secs(5),
            },
            counters(),
            std::future::pending::<End>(),
        ));
        client_peer.shutdown().await.unwrap();
        let report = run.await.unwrap();
        assert_eq!(report.end, End::Idle);
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn stop_ends_the_tunnel_as_drain() {
        let (client, _c) = duplex(1024);
        let (upstream, _u) = duplex(1024);
        let report = run(
            client,
            upstream,
            timers(60),
            counters(),
            std::future::ready(End::Drain),
        )
        .await;
        assert_eq!(report.end, End::Drain);
    }
}
