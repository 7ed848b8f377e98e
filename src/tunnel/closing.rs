//! How a tracked tunnel ends well: the closing handshake sluice begins (for a stop, a
//! peer's bad frames, or a silent peer), and the Pings that find silent peers.

use std::time::Duration;

use tokio::time::Instant;

use super::frames::Violation;
use super::{Dir, End, Transfer, ws};
use crate::metrics::websocket::{From, WsMetrics};

/// Begins the closing handshake for `end`: each direction finishes the message in
/// flight (the frame, after half of `close_timeout`) and writes sluice's Close; the
/// tunnel is cut if it is not over within `close_timeout`.
pub(super) fn begin_closing<T: Transfer>(
    transfer: &mut T,
    end: End,
    closing: &mut Option<End>,
    hard: &mut Option<(Instant, End)>,
    close_timeout: Option<Duration>,
    now: Instant,
) {
    for dir in [Dir::Up, Dir::Down] {
        if let Some(track) = transfer.track(dir) {
            track.begin_close(track.close_code());
        }
    }
    ending(end, closing, hard, close_timeout, now);
}

/// The tunnel is ending for `end`: the hard timer is set first until messages in
/// flight should be finished, then (see the tunnel) until the cut.
fn ending(
    end: End,
    closing: &mut Option<End>,
    hard: &mut Option<(Instant, End)>,
    close_timeout: Option<Duration>,
    now: Instant,
) {
    *closing = Some(end);
    *hard = Some((
        now + close_timeout.unwrap_or(Duration::from_secs(5)) / 2,
        end,
    ));
}

/// A peer's frames broke the rules or a limit in `dir`: its reader stopped at the bad
/// header (and has its own Close to the other peer due); the violator gets a Close
/// with the violation's code, and the tunnel is cut if the closing handshake is not
/// over within `close_timeout`.
pub(super) fn refuse<T: Transfer>(
    transfer: &mut T,
    dir: Dir,
    v: Violation,
    ws: Option<&WsMetrics>,
    closing: &mut Option<End>,
    hard: &mut Option<(Instant, End)>,
    close_timeout: Option<Duration>,
) {
    let (from, end, back) = match dir {
        Dir::Up => (From::Client, End::ClientViolation, Dir::Down),
        Dir::Down => (From::Upstream, End::UpstreamViolation, Dir::Up),
    };
    if let Some(m) = ws {
        m.refusal(from, ws::reason(v));
    }
    if ws::log_allowed() {
        tracing::info!(from = from.as_str(), violation = %v, code = v.close_code(), "closing a tunnel for its frames");
    }
    if let Some(track) = transfer.track(back) {
        track.begin_close(v.close_code());
    }
    if closing.is_none() {
        ending(end, closing, hard, close_timeout, Instant::now());
    }
}

/// A peer ended its stream (or had it reset) without a Close, read in `dir`: its
/// reader has sluice's Close for the other peer due, in its place. Nothing more goes
/// to the vanished peer; the other is read only for its answer to that Close, and the
/// tunnel is cut if it does not come within `close_timeout`.
pub(super) fn vanished<T: Transfer>(
    transfer: &mut T,
    dir: Dir,
    reset: bool,
    ws: Option<&WsMetrics>,
    closing: &mut Option<End>,
    hard: &mut Option<(Instant, End)>,
    close_timeout: Option<Duration>,
) {
    let (from, end, back) = match (dir, reset) {
        (Dir::Up, false) => (From::Client, End::ClientClosed, Dir::Down),
        (Dir::Up, true) => (From::Client, End::ClientError, Dir::Down),
        (Dir::Down, false) => (From::Upstream, End::UpstreamClosed, Dir::Up),
        (Dir::Down, true) => (From::Upstream, End::UpstreamError, Dir::Up),
    };
    if let Some(m) = ws {
        // What the peer did: ended TCP without a Close (a 1006 to whoever saw it).
        m.close(None, from);
    }
    if let Some(track) = transfer.track(back) {
        track.peer_gone();
    }
    if closing.is_none() {
        ending(end, closing, hard, close_timeout, Instant::now());
    }
}

/// Records the first Close of the tunnel, from the peers' or sluice's.
pub(super) fn note_closes<T: Transfer>(transfer: &mut T, first: &mut Option<(u16, From)>) {
    if first.is_some() {
        return;
    }
    for (dir, from, back) in [
        (Dir::Up, From::Client, Dir::Down),
        (Dir::Down, From::Upstream, Dir::Up),
    ] {
        if let Some(track) = transfer.track(dir) {
            if let Some(code) = track.peer_close {
                *first = Some((code, from));
                if let Some(other) = transfer.track(back) {
                    other.answer(code);
                }
                return;
            }
            if let Some(code) = track.sent_close() {
                *first = Some((code, From::Sluice));
                return;
            }
        }
    }
}

/// sluice's Pings to peers that have gone silent (`ping_interval`, `ping_timeout`).
pub(super) struct Liveness {
    pub(super) interval: Duration,
    pub(super) timeout: Duration,
    /// When to look next.
    pub(super) next: Instant,
    /// For the client and the upstream: since when a Ping of sluice's is unanswered.
    pub(super) since: [Option<Instant>; 2],
}

impl Liveness {
    /// Looks at both peers: one that sent nothing since the last look gets a Ping,
    /// anything from it proves it alive, and one whose Ping went unanswered for
    /// `timeout` is named.
    pub(super) fn look<T: Transfer>(&mut self, transfer: &mut T, now: Instant) -> Option<From> {
        // The client is read by the Up direction and written by the Down one.
        let sides = [
            (Dir::Up, Dir::Down, From::Client),
            (Dir::Down, Dir::Up, From::Upstream),
        ];
        let mut dead = None;
        for (i, (reader, writer, who)) in sides.into_iter().enumerate() {
            if transfer.eof(reader) || transfer.eof(writer) {
                // Half-closed: the idle timers watch what is left.
                self.since[i] = None;
                continue;
            }
            if std::mem::take(&mut transfer.track(reader)?.heard) {
                self.since[i] = None;
                continue;
            }
            match self.since[i] {
                // A Ping still waiting for the writer's frame in flight to end has not
                // been sent: its clock starts again.
                Some(_) if transfer.track(writer).is_some_and(|t| t.ping_pending()) => {
                    self.since[i] = Some(now);
                }
                Some(at) if now >= at + self.timeout => dead = Some(who),
                Some(_) => {}
                None => {
                    let token = fastrand::u32(..);
                    if let Some(back) = transfer.track(reader) {
                        back.await_pong(token);
                    }
                    if let Some(out) = transfer.track(writer) {
                        out.ping(token);
                    }
                    self.since[i] = Some(now);
                }
            }
        }
        self.next = self
            .since
            .iter()
            .flatten()
            .map(|at| *at + self.timeout)
            .fold(now + self.interval, Instant::min);
        dead
    }
}
