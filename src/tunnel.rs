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
//! state. [`uring`] is an experiment behind `SLUICE_IO_URING=1`, for opaque tunnels.
//!
//! Both transfers can track WebSocket frames ([`ws`]): then a tunnel that sluice ends
//! itself (drain, a removed server, the lifetime limit, a peer breaking the framing
//! rules or a limit) ends with a Close to each peer at a frame boundary, and a wait of
//! up to `close_timeout` for their replies, instead of a TCP cut. A peer that ends its
//! stream (or fails) without a Close has vanished: the other gets sluice's Close in
//! its place and the same wait, and half-closes do not pass (they mean nothing to a
//! WebSocket); only opaque tunnels keep the half-close behaviour above.

mod closing;
pub mod copy;
mod end;
pub mod frames;
mod leg;
#[cfg(target_os = "linux")]
pub mod splice;
#[cfg(target_os = "linux")]
pub mod uring;
pub mod ws;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use self::closing::{Liveness, begin_closing, note_closes, refuse, vanished};
use self::end::report;
pub use self::end::{End, Report};
use self::frames::{Sender, Violation};
pub use self::leg::{Io, Leg, Transfers};
use crate::metrics::websocket::{From, WsMetrics};

/// How long a tunnel may go without moving a byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// While both directions are open.
    pub idle: Duration,
    /// Once one direction has ended.
    pub half_closed: Duration,
}

/// Live byte counters for the two directions, and the route's frame metrics when
/// frames are tracked.
pub struct Counters {
    pub client_to_upstream: IntCounter,
    pub upstream_to_client: IntCounter,
    pub ws: Option<Arc<WsMetrics>>,
}

/// What ends a tunnel besides its peers and its timers.
pub struct Stops {
    /// Cancelled when the tunnel must begin to end: when shutdown's drain begins, or
    /// when its server leaves the configuration (a child of `draining`).
    pub token: CancellationToken,
    /// Cancelled when the drain begins.
    pub draining: CancellationToken,
    /// Cancelled when the drain period is over: what still runs is cut.
    pub drain: CancellationToken,
    /// The drain period. A removed server's tunnels end at random moments within it,
    /// and a draining gateway's within its first half, so that their clients do not
    /// all reconnect at once.
    pub spread: Duration,
    /// `max_tunnel_lifetime`.
    pub lifetime: Option<Duration>,
}

/// WebSocket frame tracking for a tunnel.
#[derive(Debug, Clone, Copy)]
pub struct WsSetup {
    pub frames: ws::Setup,
    /// How long to wait for the peers' Closes once sluice sent its own.
    pub close_timeout: Duration,
    /// `ping_interval` and `ping_timeout`, when sluice pings silent peers.
    pub ping: Option<(Duration, Duration)>,
}

/// Whether tunnels track WebSocket frames; `SLUICE_WS_FRAMES=0` makes them opaque,
/// to compare the cost.
pub fn frames_enabled() -> bool {
    static ON: std::sync::LazyLock<bool> =
        std::sync::LazyLock::new(|| std::env::var("SLUICE_WS_FRAMES").map_or(true, |v| v != "0"));
    *ON
}

impl WsSetup {
    fn tracks(&self) -> [ws::Track; 2] {
        [
            ws::Track::new(Sender::Client, &self.frames),
            ws::Track::new(Sender::Server, &self.frames),
        ]
    }
}

/// Splices two async streams until the tunnel ends (see the module docs).
pub fn run<C, U>(
    client: C,
    upstream: U,
    timers: Timers,
    counters: Counters,
    stops: Stops,
    ws: Option<WsSetup>,
) -> Tunnel<copy::Copy<C, U>>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let ws = ws.filter(|_| counters.ws.is_some());
    let tracks = ws.map(|w| w.tracks());
    Tunnel::new(
        copy::Copy::new(client, upstream, Bytes::new(), Bytes::new(), tracks),
        timers,
        counters,
        stops,
        ws,
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
    ws: Option<WsSetup>,
) -> Tunnel<Transfers> {
    let (client, to_upstream) = Leg::client(client);
    let (upstream, to_client) = Leg::upstream(upstream);
    // Bytes hyper read past the handshakes came from a peer like all that follow, and
    // count the same (the transfers start their totals with them).
    counters.client_to_upstream.inc_by(to_upstream.len() as u64);
    counters.upstream_to_client.inc_by(to_client.len() as u64);
    let ws = ws.filter(|_| counters.ws.is_some());
    let tracks = ws.map(|w| w.tracks());
    let transfer = match (client, upstream) {
        // The io_uring experiment, for opaque tunnels only (see its module docs).
        #[cfg(target_os = "linux")]
        (Leg::Tcp(c), Leg::Tcp(u)) if tracks.is_none() && uring::enabled() && uring::ready() => {
            Transfers::Uring(uring::Sockets::new(c, u, to_upstream, to_client))
        }
        #[cfg(target_os = "linux")]
        (Leg::Tcp(c), Leg::Tcp(u)) if splice::enabled() => {
            Transfers::Sockets(splice::Sockets::new(c, u, to_upstream, to_client, tracks))
        }
        (c, u) => Transfers::Copy(copy::Copy::new(c, u, to_upstream, to_client, tracks)),
    };
    Tunnel::new(transfer, timers, counters, stops, ws)
}

/// A direction: client to upstream, or back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Up,
    Down,
}

impl Dir {
    /// The opposite direction.
    pub fn other(self) -> Dir {
        match self {
            Dir::Up => Dir::Down,
            Dir::Down => Dir::Up,
        }
    }
}

/// Which side of a direction failed.
pub enum Side {
    Reader,
    Writer,
}

/// What one poll of a direction reports beside its result.
pub struct Step<'a> {
    /// The direction's byte counter.
    pub counter: &'a IntCounter,
    /// The route's frame metrics, when frames are tracked.
    ws: Option<&'a WsMetrics>,
    /// Bytes moved.
    pub moved: bool,
    /// The reader broke the framing rules or a limit.
    pub violation: Option<Violation>,
}

impl<'a> Step<'a> {
    fn new(counter: &'a IntCounter, ws: Option<&'a WsMetrics>) -> Step<'a> {
        Step {
            counter,
            ws,
            moved: false,
            violation: None,
        }
    }

    /// The route's frame metrics; a tracked direction always has them.
    pub fn ws_route(&self) -> &'a WsMetrics {
        self.ws.expect("tracked tunnels have frame metrics")
    }
}

/// How bytes move between the two legs, one direction at a time.
pub trait Transfer: Unpin {
    /// Moves bytes one way until a side would block (`Pending`), the direction is
    /// finished, its writer shut down after end of stream (`Ready(Ok)`), or a side
    /// fails. Reports what moved in `step`.
    fn poll_dir(
        &mut self,
        dir: Dir,
        cx: &mut Context<'_>,
        step: &mut Step<'_>,
    ) -> Poll<Result<(), Side>>;
    /// Whether the direction's reader reached end of stream.
    fn eof(&self, dir: Dir) -> bool;
    /// Bytes moved that way so far.
    fn total(&self, dir: Dir) -> u64;
    /// The direction's frame tracking, when on.
    fn track(&mut self, dir: Dir) -> Option<&mut ws::Track>;
}

pin_project_lite::pin_project! {
    /// A running tunnel: the lifecycle common to every transfer (both directions,
    /// half-close, the idle timers, the stops, the closing handshake). One
    /// hand-written future rather than nested `async` blocks: an idle tunnel's memory
    /// is mostly this future, and nested state machines keep copies of what they pass
    /// down.
    pub struct Tunnel<T> {
        transfer: T,
        done: [bool; 2],
        first_eof: Option<End>,
        timers: Timers,
        // The inactivity limit now in force: `idle`, then `half_closed`.
        limit: Duration,
        last_activity: Instant,
        // A hard end (lifetime, or a removed server's turn) and why. With frame
        // tracking it is when the closing handshake begins, and once it has begun,
        // when the tunnel is cut if the peers have not answered.
        hard: Option<(Instant, End)>,
        // One timer for all of them. It is moved only when it fires, from
        // `last_activity`: moving it on every read would cost a timer-wheel update per
        // message.
        #[pin]
        timer: Sleep,
        counters: Counters,
        draining: CancellationToken,
        drain: CancellationToken,
        spread: Duration,
        // `close_timeout` when frames are tracked.
        close_timeout: Option<Duration>,
        // Why sluice is ending the tunnel, once its closing handshake has begun.
        closing: Option<End>,
        // Half of close_timeout has gone since it began (see `ws::Track::frames_will_do`).
        halfway: bool,
        // sluice's Pings to silent peers, when configured.
        liveness: Option<Box<Liveness>>,
        first_close: Option<(u16, From)>,
        #[pin]
        stop: WaitForCancellationFutureOwned,
        stopped: bool,
    }
}

impl<T: Transfer> Tunnel<T> {
    fn new(
        transfer: T,
        timers: Timers,
        counters: Counters,
        stops: Stops,
        ws: Option<WsSetup>,
    ) -> Tunnel<T> {
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
            timer: tokio::time::sleep_until(wake_at(
                now + timers.idle,
                hard,
                ws.and_then(|w| w.ping).map(|(interval, _)| now + interval),
            )),
            counters,
            draining: stops.draining,
            drain: stops.drain,
            spread: stops.spread,
            close_timeout: ws.map(|w| w.close_timeout),
            closing: None,
            halfway: false,
            liveness: ws.and_then(|w| w.ping).map(|(interval, timeout)| {
                Box::new(Liveness {
                    interval,
                    timeout,
                    next: now + interval,
                    since: [None; 2],
                })
            }),
            first_close: None,
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
                return Poll::Ready(report(this.transfer, End::Drain, *this.first_close));
            }
            // Draining, or the server was removed: end at a random moment within the
            // spread, so that clients reconnect elsewhere a few at a time.
            let now = Instant::now();
            let spread = *this.spread;
            let (at, end) = match (this.draining.is_cancelled(), *this.close_timeout) {
                // With frames tracked, the Closes go out within the drain's first
                // half, leaving each closing handshake its time, and the handshake is
                // cut when the drain ends.
                (true, Some(close)) => {
                    let window = (spread / 2).min(spread.saturating_sub(close));
                    let wait = window.mul_f64(fastrand::f64());
                    *this.close_timeout = Some(close.min(spread - wait));
                    (now + wait, End::Drain)
                }
                // Opaque tunnels cannot be closed cleanly: they run to the drain's end.
                (true, None) => (now + spread, End::Drain),
                (false, _) => (now + spread.mul_f64(fastrand::f64()), End::ServerRemoved),
            };
            if this.hard.is_none_or(|(h, _)| at < h) {
                *this.hard = Some((at, end));
                rearm(
                    this.timer.as_mut(),
                    *this.last_activity + *this.limit,
                    this.hard,
                    this.liveness,
                    this.closing,
                );
            }
        }

        let mut moved = false;
        let ws = this.counters.ws.as_deref();
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
            let mut step = Step::new(counter, ws);
            let mut polled = this.transfer.poll_dir(dir, cx, &mut step);
            moved |= step.moved;
            if ws.is_some()
                && let Poll::Ready(Err(side)) = &polled
            {
                // With frames tracked, a failed side is a peer gone: the tracker that
                // reads it takes it as an end of stream (a vanished peer, answered by
                // sluice below), and only a direction whose writer failed is over.
                let reads_it = match side {
                    Side::Reader => dir,
                    Side::Writer => {
                        this.done[i] = true;
                        dir.other()
                    }
                };
                if let Some(track) = this.transfer.track(reads_it) {
                    track.failed();
                }
                polled = Poll::Pending;
                cx.waker().wake_by_ref();
            }
            if let Some(v) = step.violation {
                refuse(
                    this.transfer,
                    dir,
                    v,
                    ws,
                    this.closing,
                    this.hard,
                    *this.close_timeout,
                );
                rearm(
                    this.timer.as_mut(),
                    *this.last_activity + *this.limit,
                    this.hard,
                    this.liveness,
                    this.closing,
                );
                // The other direction now has a Close to write.
                cx.waker().wake_by_ref();
            }
            let end = match polled {
                Poll::Ready(Ok(())) => {
                    this.done[i] = true;
                    continue;
                }
                Poll::Ready(Err(Side::Reader)) => failed[0],
                Poll::Ready(Err(Side::Writer)) => failed[1],
                Poll::Pending => continue,
            };
            let end = this.closing.unwrap_or(end);
            note_closes(this.transfer, this.first_close);
            return Poll::Ready(report(this.transfer, end, *this.first_close));
        }
        if ws.is_some() {
            if this.closing.is_none()
                && let Some((dir, reset)) = [Dir::Up, Dir::Down]
                    .into_iter()
                    .find_map(|d| Some((d, this.transfer.track(d)?.gone?)))
            {
                vanished(
                    this.transfer,
                    dir,
                    reset,
                    ws,
                    this.closing,
                    this.hard,
                    *this.close_timeout,
                );
                rearm(
                    this.timer.as_mut(),
                    *this.last_activity + *this.limit,
                    this.hard,
                    this.liveness,
                    this.closing,
                );
                // Each direction has its part of the closing handshake to play.
                cx.waker().wake_by_ref();
            }
            note_closes(this.transfer, this.first_close);
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
            rearm(
                this.timer.as_mut(),
                idle_at,
                this.hard,
                this.liveness,
                this.closing,
            );
        }
        if *this.done == [true, true] {
            let end = this
                .closing
                .or(*this.first_eof)
                .unwrap_or(End::ClientClosed);
            return Poll::Ready(report(this.transfer, end, *this.first_close));
        }
        if moved {
            *this.last_activity = Instant::now();
        }
        while this.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if let Some((at, end)) = *this.hard
                && at <= now
            {
                match *this.close_timeout {
                    Some(close) if this.closing.is_none() => {
                        begin_closing(
                            this.transfer,
                            end,
                            this.closing,
                            this.hard,
                            Some(close),
                            now,
                        );
                        cx.waker().wake_by_ref();
                    }
                    Some(close) if !*this.halfway => {
                        // Half of close_timeout gone: a message still in flight gets
                        // the Close between its fragments; the rest is the peers'.
                        *this.halfway = true;
                        for dir in [Dir::Up, Dir::Down] {
                            if let Some(track) = this.transfer.track(dir) {
                                track.frames_will_do();
                            }
                        }
                        *this.hard = Some((now + close - close / 2, end));
                        cx.waker().wake_by_ref();
                    }
                    _ => return Poll::Ready(report(this.transfer, end, *this.first_close)),
                }
            }
            if this.closing.is_none()
                && let Some(liveness) = this.liveness.as_deref_mut()
                && liveness.next <= now
            {
                if let Some(who) = liveness.look(this.transfer, now) {
                    if ws::log_allowed() {
                        tracing::info!(
                            peer = who.as_str(),
                            "closing a tunnel: no answer to sluice's Ping"
                        );
                    }
                    begin_closing(
                        this.transfer,
                        End::LivenessTimeout,
                        this.closing,
                        this.hard,
                        *this.close_timeout,
                        now,
                    );
                }
                // A Ping or a Close to write.
                cx.waker().wake_by_ref();
            }
            let idle_at = *this.last_activity + *this.limit;
            if idle_at <= now {
                let end = this.closing.unwrap_or(End::Idle);
                return Poll::Ready(report(this.transfer, end, *this.first_close));
            }
            rearm(
                this.timer.as_mut(),
                idle_at,
                this.hard,
                this.liveness,
                this.closing,
            );
        }
        Poll::Pending
    }
}

/// When the tunnel's one timer must next fire: at the idle deadline, or at the hard
/// end or the next liveness look if one comes first.
fn wake_at(idle_at: Instant, hard: Option<(Instant, End)>, look: Option<Instant>) -> Instant {
    let at = hard.map_or(idle_at, |(at, _)| idle_at.min(at));
    look.map_or(at, |l| at.min(l))
}

/// Sets the tunnel's one timer for `idle_at` and what else is due (see [`wake_at`]).
fn rearm(
    timer: Pin<&mut Sleep>,
    idle_at: Instant,
    hard: &Option<(Instant, End)>,
    liveness: &Option<Box<Liveness>>,
    closing: &Option<End>,
) {
    timer.reset(wake_at(idle_at, *hard, next_look(liveness, closing)));
}

/// The next liveness look; none once the tunnel is closing.
fn next_look(liveness: &Option<Box<Liveness>>, closing: &Option<End>) -> Option<Instant> {
    match closing {
        Some(_) => None,
        None => liveness.as_ref().map(|l| l.next),
    }
}

#[cfg(test)]
mod tests;
