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

pub mod copy;
pub mod frames;
#[cfg(target_os = "linux")]
pub mod splice;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

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

/// What ends a tunnel besides its peers and its timers.
pub struct Stops {
    /// Cancelled when the tunnel must end: by shutdown's end of drain (`drain`), or by
    /// its server leaving the configuration (a child of `drain`).
    pub token: CancellationToken,
    /// Shutdown's own token, to tell the two apart.
    pub drain: CancellationToken,
    /// When the server leaves, the tunnel closes at a random moment within this, so
    /// that its clients do not all reconnect at once.
    pub spread: Duration,
    /// `max_tunnel_lifetime`.
    pub lifetime: Option<Duration>,
}

/// Splices two async streams until the tunnel ends (see the module docs).
pub fn run<C, U>(
    client: C,
    upstream: U,
    timers: Timers,
    counters: Counters,
    stops: Stops,
) -> Tunnel<copy::Copy<C, U>>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    Tunnel::new(
        copy::Copy::new(client, upstream, Bytes::new(), Bytes::new()),
        timers,
        counters,
        stops,
    )
}

/// Splices two upgraded HTTP connections, on the fastest transfer their transports
/// allow: `splice(2)` when both are plain sockets, the copying transfer otherwise
/// (TLS on either leg). Bytes hyper read past either handshake (a client's first
/// frame, an upstream's greeting sent with its 101) go to the other side first.
pub fn run_upgraded(
    client: hyper::upgrade::Upgraded,
    upstream: hyper::upgrade::Upgraded,
    timers: Timers,
    counters: Counters,
    stops: Stops,
) -> Tunnel<Transfers> {
    let (client, to_upstream) = Leg::client(client);
    let (upstream, to_client) = Leg::upstream(upstream);
    // Bytes hyper read past the handshakes came from a peer like all that follow, and
    // count the same (the transfers start their totals with them).
    counters.client_to_upstream.inc_by(to_upstream.len() as u64);
    counters.upstream_to_client.inc_by(to_client.len() as u64);
    let transfer = match (client, upstream) {
        #[cfg(target_os = "linux")]
        (Leg::Tcp(c), Leg::Tcp(u)) if splice::enabled() => {
            Transfers::Sockets(splice::Sockets::new(c, u, to_upstream, to_client))
        }
        (c, u) => Transfers::Copy(copy::Copy::new(c, u, to_upstream, to_client)),
    };
    Tunnel::new(transfer, timers, counters, stops)
}

/// The transfers a tunnel between upgraded connections can use.
pub enum Transfers {
    #[cfg(target_os = "linux")]
    Sockets(splice::Sockets),
    Copy(copy::Copy<Leg, Leg>),
}

impl Transfer for Transfers {
    fn poll_dir(
        &mut self,
        dir: Dir,
        cx: &mut Context<'_>,
        counter: &IntCounter,
        moved: &mut bool,
    ) -> Poll<Result<(), Side>> {
        match self {
            #[cfg(target_os = "linux")]
            Transfers::Sockets(t) => t.poll_dir(dir, cx, counter, moved),
            Transfers::Copy(t) => t.poll_dir(dir, cx, counter, moved),
        }
    }

    fn eof(&self, dir: Dir) -> bool {
        match self {
            #[cfg(target_os = "linux")]
            Transfers::Sockets(t) => t.eof(dir),
            Transfers::Copy(t) => t.eof(dir),
        }
    }

    fn total(&self, dir: Dir) -> u64 {
        match self {
            #[cfg(target_os = "linux")]
            Transfers::Sockets(t) => t.total(dir),
            Transfers::Copy(t) => t.total(dir),
        }
    }
}

/// A direction: client to upstream, or back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Up,
    Down,
}

/// Which side of a direction failed.
pub enum Side {
    Reader,
    Writer,
}

/// How bytes move between the two legs, one direction at a time.
pub trait Transfer: Unpin {
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

    /// The tunnel's report, ending for `end` with what moved so far.
    fn report(&self, end: End) -> Report {
        Report {
            end,
            client_to_upstream: self.total(Dir::Up),
            upstream_to_client: self.total(Dir::Down),
        }
    }
}

pin_project_lite::pin_project! {
    /// A running tunnel: the lifecycle common to every transfer (both directions,
    /// half-close, the idle timers, the stops). One hand-written future rather than
    /// nested `async` blocks: an idle tunnel's memory is mostly this future, and
    /// nested state machines keep copies of what they pass down.
    pub struct Tunnel<T> {
        transfer: T,
        done: [bool; 2],
        first_eof: Option<End>,
        timers: Timers,
        // The inactivity limit now in force: `idle`, then `half_closed`.
        limit: Duration,
        last_activity: Instant,
        // A hard end (lifetime, or a removed server's turn) and why.
        hard: Option<(Instant, End)>,
        // One timer for all of them. It is moved only when it fires, from
        // `last_activity`: moving it on every read would cost a timer-wheel update per
        // message.
        #[pin]
        timer: Sleep,
        counters: Counters,
        drain: CancellationToken,
        spread: Duration,
        #[pin]
        stop: WaitForCancellationFutureOwned,
        stopped: bool,
    }
}

impl<T: Transfer> Tunnel<T> {
    fn new(transfer: T, timers: Timers, counters: Counters, stops: Stops) -> Tunnel<T> {
        let now = Instant::now();
        let hard = stops.lifetime.map(|l| (now + l, End::MaxLifetime));
        Tunnel {
            transfer,
            done: [false; 2],
            first_eof: None,
            limit: timers.idle,
            timers,
            last_activity: now,
            hard,
            timer: tokio::time::sleep_until(wake_at(now + timers.idle, hard)),
            counters,
            drain: stops.drain,
            spread: stops.spread,
            stop: stops.token.cancelled_owned(),
            stopped: false,
        }
    }
}

impl<T: Transfer> Future for Tunnel<T> {
    type Output = Report;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Report> {
        let mut this = self.project();
        if !*this.stopped && this.stop.as_mut().poll(cx).is_ready() {
            *this.stopped = true;
            if this.drain.is_cancelled() {
                return Poll::Ready(this.transfer.report(End::Drain));
            }
            // The server was removed: close at a random moment within the spread.
            let at = Instant::now() + this.spread.mul_f64(fastrand::f64());
            if this.hard.is_none_or(|(h, _)| at < h) {
                *this.hard = Some((at, End::ServerRemoved));
                let idle_at = *this.last_activity + *this.limit;
                this.timer.as_mut().reset(wake_at(idle_at, *this.hard));
            }
        }

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
            let end = match this.transfer.poll_dir(dir, cx, counter, &mut moved) {
                Poll::Ready(Ok(())) => {
                    this.done[i] = true;
                    continue;
                }
                Poll::Ready(Err(Side::Reader)) => failed[0],
                Poll::Ready(Err(Side::Writer)) => failed[1],
                Poll::Pending => continue,
            };
            return Poll::Ready(this.transfer.report(end));
        }
        if this.first_eof.is_none() && (this.transfer.eof(Dir::Up) || this.transfer.eof(Dir::Down))
        {
            *this.first_eof = Some(if this.transfer.eof(Dir::Up) {
                End::ClientClosed
            } else {
                End::UpstreamClosed
            });
            *this.limit = this.timers.idle.min(this.timers.half_closed);
            let idle_at = (*this.last_activity).max(Instant::now()) + *this.limit;
            this.timer.as_mut().reset(wake_at(idle_at, *this.hard));
        }
        if *this.done == [true, true] {
            let end = this.first_eof.unwrap_or(End::ClientClosed);
            return Poll::Ready(this.transfer.report(end));
        }
        if moved {
            *this.last_activity = Instant::now();
        }
        while this.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if let Some((at, end)) = *this.hard
                && at <= now
            {
                return Poll::Ready(this.transfer.report(end));
            }
            let idle_at = *this.last_activity + *this.limit;
            if idle_at <= now {
                return Poll::Ready(this.transfer.report(End::Idle));
            }
            this.timer.as_mut().reset(wake_at(idle_at, *this.hard));
        }
        Poll::Pending
    }
}

/// When the tunnel's one timer must next fire: at the idle deadline, or at the hard
/// end if that comes first.
fn wake_at(idle_at: Instant, hard: Option<(Instant, End)>) -> Instant {
    hard.map_or(idle_at, |(at, _)| idle_at.min(at))
}

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
    fn client(up: hyper::upgrade::Upgraded) -> (Leg, Bytes) {
        use hyper_util::rt::TokioIo;
        match up.downcast::<TokioIo<tokio::net::TcpStream>>() {
            Ok(parts) => (Leg::Tcp(parts.io.into_inner()), parts.read_buf),
            Err(up) => (Leg::Stream(Box::new(TokioIo::new(up))), Bytes::new()),
        }
    }

    /// An upstream connection is a `TokioIo<net::Stream>`, plain or TLS.
    fn upstream(up: hyper::upgrade::Upgraded) -> (Leg, Bytes) {
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

    /// Stops that never fire, and the token that would end the tunnel as drained.
    fn stops() -> (Stops, CancellationToken) {
        let drain = CancellationToken::new();
        let stops = Stops {
            token: drain.child_token(),
            drain: drain.clone(),
            spread: Duration::from_secs(1),
            lifetime: None,
        };
        (stops, drain)
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
        let task = tokio::spawn(run(client, upstream, timers(60), c, stops().0));

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
        let task = tokio::spawn(run(client, upstream, timers(60), counters(), stops().0));
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
        let report = run(client, upstream, timers(5), counters(), stops().0).await;
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
            stops().0,
        ));
        client_peer.shutdown().await.unwrap();
        let report = run.await.unwrap();
        assert_eq!(report.end, End::Idle);
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_removed_server_does_not_postpone_the_idle_limit() {
        let (client, _c) = duplex(1024);
        let (upstream, _u) = duplex(1024);
        let (mut stops, _drain) = stops();
        // The server leaves with a long spread: the tunnel must still end by its own
        // idle limit if that comes first, whichever moment in the spread was drawn.
        stops.spread = Duration::from_secs(3600);
        stops.token.cancel();
        let started = Instant::now();
        let report = run(client, upstream, timers(5), counters(), stops).await;
        assert!(
            started.elapsed() <= Duration::from_secs(5),
            "ended after {:?} as {:?}",
            started.elapsed(),
            report.end
        );
    }

    #[tokio::test]
    async fn stop_ends_the_tunnel_as_drain() {
        let (client, _c) = duplex(1024);
        let (upstream, _u) = duplex(1024);
        let report = run(client, upstream, timers(60), counters(), {
            let (stops, drain) = stops();
            drain.cancel();
            stops
        })
        .await;
        assert_eq!(report.end, End::Drain);
    }
}
