//! WebSocket awareness for one direction of a tunnel: where frames begin, what to
//! forward of each read, and the Close sluice writes when it ends a tunnel itself.
//!
//! A [`Track`] sits in each direction's pump, beside the bytes it moves. It never
//! copies a payload: it reads frame headers as they pass (holding back the few bytes
//! of a header split across reads until it is known to be good), counts frames and
//! messages, and tells the pump how much of a read to forward. When the tunnel must
//! end it lets the current frame finish, so that the Close it then writes lands on a
//! frame boundary, and from then on reads only to see the peer's own Close.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

mod control;
mod seen;

use self::control::ControlFrame;
use self::seen::{Bucket, Seen};
use super::Step;
use super::frames::{Frames, Limits, Sender, Violation};
use crate::metrics::websocket::{From, WsDirMetrics, WsMetrics};

/// Room kept before the bytes of each read for a held partial header (at most 13
/// bytes of a 14-byte header).
pub const HOLD: usize = 14;

/// A payload at least this long is worth a splice of its own; shorter ones ride in
/// the buffered reads. TODO(measure): figure from compare.sh.
pub const SPLICE_MIN: u64 = 16 * 1024;

/// Which reserved bits the 101 allowed (RFC 6455 §5.2, §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rsv {
    /// No extension: every reserved bit is an error.
    None,
    /// permessage-deflate: RSV1 on a message's first frame.
    Deflate,
    /// An extension sluice does not know: reserved bits are not checked.
    Any,
}

impl Rsv {
    /// Reads the `Sec-WebSocket-Extensions` the upstream's 101 (or 2xx) agreed to.
    pub fn from_headers(headers: &http::HeaderMap) -> Rsv {
        let mut rsv = Rsv::None;
        for value in headers.get_all(http::header::SEC_WEBSOCKET_EXTENSIONS) {
            let Ok(value) = value.to_str() else {
                return Rsv::Any;
            };
            for ext in value.split(',') {
                let name = ext.split(';').next().unwrap_or("").trim();
                if name.is_empty() {
                    continue;
                }
                if name.eq_ignore_ascii_case("permessage-deflate") {
                    rsv = Rsv::Deflate;
                } else {
                    return Rsv::Any;
                }
            }
        }
        rsv
    }
}

/// What a tunnel's frame tracking is set up with.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    pub rsv: Rsv,
    pub limits: Limits,
    /// The Close code sluice sends when it ends a tunnel (`close_code`).
    pub close_code: u16,
    /// `max_messages_per_second`, per direction.
    pub max_messages_per_second: Option<f64>,
}

/// Where a direction's reading is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// Frames pass.
    Forward,
    /// The tunnel is ending: the current frame passes, then nothing more.
    ToBoundary,
    /// Past the boundary: read only to see the peer's Close.
    Discard,
    /// The peer's Close was seen, or its frames broke the rules: nothing more is read.
    Done,
}

/// Frame tracking for one direction (see the module docs).
pub struct Track {
    frames: Frames,
    reading: Reading,
    /// Whether sluice's Close must now be written this way, after what is pending.
    pub close_due: bool,
    /// The code sluice's Close carries this way.
    close_code: u16,
    /// A Close has gone this way: the peer's own, forwarded, or sluice's.
    passed_close: bool,
    /// sluice wrote its own Close this way.
    sent_close: bool,
    /// The code of the reader's Close, once seen (1005 for a Close without one).
    pub peer_close: Option<u16>,
    /// Messages the reader sent.
    pub messages: u64,
    /// The last header announced a payload worth splicing (see [`SPLICE_MIN`]).
    pub big: bool,
    /// While ending: a fragmented message in flight is finished first, not just the
    /// frame in flight.
    whole: bool,
    /// Bytes came from the reader since the liveness check last looked.
    pub heard: bool,
    /// A Ping of sluice's (its token) to write this way at the next frame boundary.
    ping_due: Option<u32>,
    /// sluice Pinged the reader: the token whose Pong is taken out of the stream.
    awaiting_pong: Option<u32>,
    /// `max_messages_per_second`; boxed, as most routes have none.
    bucket: Option<Box<Bucket>>,
    /// The reader ended its stream without a Close of its own while frames passed
    /// (`Some(true)` by a reset): it vanished, and the tunnel ends the other way too
    /// (see `closing::vanished`).
    pub gone: Option<bool>,
    /// `close_code` answers a Close of the writer's peer ([`Track::answer`]).
    answering: bool,
}

/// What to do with one read.
pub struct Taken {
    /// The part of the buffer to forward.
    pub forward: Range<usize>,
    /// The reader broke the framing rules at the end of `forward`.
    pub violation: Option<Violation>,
}

impl Track {
    /// Tracking for the frames `sender` sends.
    pub fn new(sender: Sender, setup: &Setup) -> Track {
        let frames = Frames::new(sender, setup.rsv == Rsv::Deflate, setup.limits);
        Track {
            frames: if setup.rsv == Rsv::Any {
                frames.any_rsv()
            } else {
                frames
            },
            reading: Reading::Forward,
            close_due: false,
            close_code: setup.close_code,
            passed_close: false,
            sent_close: false,
            peer_close: None,
            messages: 0,
            big: false,
            whole: false,
            heard: false,
            ping_due: None,
            awaiting_pong: None,
            bucket: setup
                .max_messages_per_second
                .map(|r| Box::new(Bucket::new(r))),
            gone: None,
            answering: false,
        }
    }

    /// Pings the writer's peer at the next frame boundary; its Pong will come back
    /// through the other direction's tracker ([`Track::await_pong`]).
    pub fn ping(&mut self, token: u32) {
        self.ping_due = Some(token);
    }

    /// Whether a Ping of sluice's still waits to be written this way.
    pub fn ping_pending(&self) -> bool {
        self.ping_due.is_some()
    }

    /// sluice Pinged this tracker's reader with `token`: its Pong is not forwarded.
    pub fn await_pong(&mut self, token: u32) {
        self.awaiting_pong = Some(token);
    }

    /// Takes the Ping due this way, if one is and the writer is between frames (and
    /// the tunnel is not ending).
    pub fn take_ping(&mut self) -> Option<ControlFrame> {
        let between = self.frames.at_frame_boundary() || !self.frames.partial_header().is_empty();
        if self.reading != Reading::Forward || !between {
            return None;
        }
        let token = self.ping_due.take()?;
        Some(ControlFrame::ping(
            token,
            self.frames.sender() == Sender::Client,
        ))
    }

    /// The configured Close code.
    pub fn close_code(&self) -> u16 {
        self.close_code
    }

    /// The code of the Close sluice wrote this way, if it did.
    pub fn sent_close(&self) -> Option<u16> {
        self.sent_close.then_some(self.close_code)
    }

    /// Whether the reader should be read at all.
    pub fn reads(&self) -> bool {
        self.reading != Reading::Done
    }

    /// Whether frames are still forwarded (not yet ending).
    pub fn forwarding(&self) -> bool {
        matches!(self.reading, Reading::Forward | Reading::ToBoundary)
    }

    /// Whether the reader's next byte begins a frame that sluice forwards.
    pub fn between_frames(&self) -> bool {
        self.reading == Reading::Forward
            && self.frames.at_frame_boundary()
            && self.frames.partial_header().is_empty()
    }

    /// Data payload bytes that may be moved unread now (spliced with this length).
    pub fn payload_left(&self) -> u64 {
        if self.forwarding() {
            self.frames.payload_left()
        } else {
            0
        }
    }

    /// The tunnel is ending: finish the message in flight (see [`Track::frames_will_do`]),
    /// then write a Close with `code` (unless a Close already went this way) and read
    /// only for the peer's Close.
    pub fn begin_close(&mut self, code: u16) {
        if self.reading != Reading::Forward {
            return;
        }
        self.close_code = code;
        self.reading = Reading::ToBoundary;
        self.whole = true;
        if self.stops_here() {
            self.boundary();
        }
    }

    /// The message in flight is taking too long: stop at the end of the frame in
    /// flight instead (RFC 6455 lets a Close come between fragments).
    pub fn frames_will_do(&mut self) {
        self.whole = false;
        if self.reading == Reading::ToBoundary && self.stops_here() {
            self.boundary();
        }
    }

    /// Whether an ending direction has forwarded all it will: it is between frames
    /// (a partial header held back counts, it is never forwarded), and, while
    /// messages are finished whole, no fragmented message is open.
    fn stops_here(&self) -> bool {
        let between = self.frames.at_frame_boundary() || !self.frames.partial_header().is_empty();
        between && !(self.whole && self.frames.message_open())
    }

    /// The reader ended its stream. If the tunnel is ending and the writer is at a
    /// frame boundary, sluice's Close is still written (`close_due`).
    pub fn eof(&mut self) {
        self.ended(false);
    }

    /// The reader's stream failed (a reset): as [`Track::eof`].
    pub fn failed(&mut self) {
        self.ended(true);
    }

    fn ended(&mut self, reset: bool) {
        let at_boundary =
            self.frames.at_frame_boundary() || !self.frames.partial_header().is_empty();
        match self.reading {
            Reading::ToBoundary if at_boundary => self.boundary(),
            Reading::Forward if !self.passed_close => {
                // Gone without a Close (killed, crashed, cut off): the writer's peer
                // gets one from sluice in its place, unless the stream ended inside a
                // frame, where no Close can follow. An upstream that vanished is an
                // unexpected condition (1011: 1014, "bad gateway", is refused as a
                // protocol error by tungstenite 0.30's clients); a client that did is
                // going away (1001). A Close the writer's peer already sent is
                // answered with its own code instead.
                self.gone = Some(reset);
                if at_boundary {
                    if !self.answering {
                        self.close_code = match self.frames.sender() {
                            Sender::Server => 1011,
                            Sender::Client => 1001,
                        };
                    }
                    self.close_due = true;
                }
            }
            _ => {}
        }
        self.reading = Reading::Done;
    }

    /// The writer's peer sent a Close with `code`: should the reader vanish without
    /// answering it, sluice answers with the same code.
    pub fn answer(&mut self, code: u16) {
        if matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
            self.close_code = code;
            self.answering = true;
        }
    }

    /// The writer's peer vanished: nothing more goes to it, not even a Close; the
    /// reader is read only for its own Close, the end of the closing handshake.
    pub fn peer_gone(&mut self) {
        self.passed_close = true;
        self.close_due = false;
        self.ping_due = None;
        self.reading = if self.peer_close.is_some() || self.reading == Reading::Done {
            Reading::Done
        } else {
            Reading::Discard
        };
    }

    /// The frame in flight ended where the tunnel is ending.
    fn boundary(&mut self) {
        self.reading = Reading::Discard;
        if !self.passed_close {
            self.close_due = true;
        }
    }

    /// Takes a close frame to write (clearing `close_due`), counted as sluice's.
    pub fn take_close(&mut self, metrics: &WsMetrics) -> ControlFrame {
        self.close_due = false;
        self.passed_close = true;
        self.sent_close = true;
        metrics.close(Some(self.close_code), From::Sluice);
        ControlFrame::close(self.close_code, self.frames.sender() == Sender::Client)
    }

    /// `n` payload bytes moved unread (spliced); `n` at most [`Track::payload_left`].
    pub fn skip(&mut self, n: u64, m: &WsMetrics) {
        self.heard = true;
        let mut seen = Seen::new(self.dir_metrics(m));
        self.frames.skip(n, &mut seen);
        let summary = seen.flush();
        self.settle(summary, m);
        if self.reading == Reading::ToBoundary && self.stops_here() {
            self.boundary();
        }
    }

    /// Takes one read: `buf[HOLD..HOLD + n]` holds its bytes, and `buf[..HOLD]` is room
    /// for a partial header held from the read before, which is put back in front.
    /// Returns what of `buf` to forward.
    pub fn take(&mut self, buf: &mut [u8], n: usize, m: &WsMetrics) -> Taken {
        let held = self.frames.partial_header().len();
        let start = HOLD - held;
        let mut prefix = [0u8; HOLD];
        prefix[..held].copy_from_slice(self.frames.partial_header());
        buf[start..HOLD].copy_from_slice(&prefix[..held]);
        self.heard = true;
        let mut seen = Seen::new(self.dir_metrics(m))
            .with_bucket(self.bucket.as_deref_mut())
            .watching(self.awaiting_pong);
        if self.reading == Reading::Forward && self.awaiting_pong.is_some() {
            let taken = watch(&mut self.frames, buf, start, n, &mut seen);
            let pong_seen = seen.pong_seen;
            let summary = seen.flush();
            if taken.violation.is_some() {
                self.close_due = !self.passed_close;
                self.reading = Reading::Done;
            }
            let close = summary.close;
            self.settle(summary, m);
            if pong_seen {
                self.awaiting_pong = None;
            }
            if close.is_some() {
                self.passed_close = true;
            }
            return taken;
        }
        let data = &buf[HOLD..HOLD + n];
        let mut taken = Taken {
            forward: start..start,
            violation: None,
        };
        let mut rest = 0..0;
        match self.reading {
            Reading::Forward => match self.frames.scan_at(data, &mut seen) {
                Ok(()) => {
                    let now_held = self.frames.partial_header().len();
                    taken.forward = start..HOLD + n - now_held;
                }
                Err((violation, at)) => {
                    // The bad header is not forwarded, so the writer is at a boundary
                    // and its peer gets sluice's Close.
                    taken.forward = start..at.map_or(start, |a| HOLD + a);
                    taken.violation = Some(violation);
                    self.close_due = !self.passed_close;
                    self.reading = Reading::Done;
                }
            },
            Reading::ToBoundary => {
                // Frame by frame up to where the direction stops (`begin_close` and
                // `skip` move on when it is already there).
                let mut k = 0;
                let mut stopped = false;
                let mut bad = None;
                while k < n {
                    match self.frames.scan_frame(&data[k..], &mut seen) {
                        Ok(m) => k += m,
                        Err((_, at)) => {
                            // As in `Forward`: up to where the bad header began (in
                            // the held bytes when it began in an earlier read), and
                            // sluice's Close there.
                            bad = Some(at.map_or(start, |a| HOLD + k + a));
                            self.reading = Reading::Done;
                            self.close_due = !self.passed_close;
                            break;
                        }
                    }
                    if seen.close.is_some() {
                        self.passed_close = true;
                    }
                    let between =
                        self.frames.at_frame_boundary() || !self.frames.partial_header().is_empty();
                    if between && !(self.whole && self.frames.message_open()) {
                        stopped = true;
                        break;
                    }
                }
                taken.forward = start..bad.unwrap_or(HOLD + k - self.frames.partial_header().len());
                if stopped && self.reading == Reading::ToBoundary {
                    // As `boundary`, field by field: `seen` holds the bucket.
                    self.reading = Reading::Discard;
                    self.close_due = !self.passed_close;
                }
                rest = k..n;
            }
            Reading::Discard => rest = 0..n,
            Reading::Done => {}
        }
        if self.reading == Reading::Forward && seen.close.is_some() {
            // The peer's Close went on with the rest.
            self.passed_close = true;
        }
        if self.reading == Reading::Discard && !rest.is_empty() {
            // Past the boundary: only the peer's Close matters.
            if self.frames.scan(&data[rest], &mut seen).is_err() {
                self.reading = Reading::Done;
            }
            if seen.close.is_some() {
                self.reading = Reading::Done;
            }
        }
        let summary = seen.flush();
        self.settle(summary, m);
        taken
    }

    /// The metrics of the direction this tracker reads.
    fn dir_metrics<'m>(&self, m: &'m WsMetrics) -> &'m WsDirMetrics {
        match self.frames.sender() {
            Sender::Client => &m.up,
            Sender::Server => &m.down,
        }
    }

    /// Folds what an observer saw into the counts.
    fn settle(&mut self, seen: seen::Summary, m: &WsMetrics) {
        if let Some(len) = seen.last_len {
            self.big = len >= SPLICE_MIN;
        }
        if let Some(code) = seen.close
            && self.peer_close.is_none()
        {
            self.peer_close = Some(code);
            let from = match self.frames.sender() {
                Sender::Client => From::Client,
                Sender::Server => From::Upstream,
            };
            m.close(Some(code), from);
        }
        self.messages += seen.messages;
    }
}

/// Takes one read while a Pong to sluice's Ping is awaited from its reader: frame by
/// frame, so that the Pong, once whole, can be cut out of what is forwarded. The
/// bytes after it move down over it. Silent peers are the ones pinged, so this path
/// sees little. A Pong split across reads has had its first bytes forwarded already:
/// it goes on whole, as an unsolicited Pong, which peers ignore (RFC 6455 §5.5.3).
fn watch(
    frames: &mut Frames,
    buf: &mut [u8],
    start: usize,
    n: usize,
    seen: &mut Seen<'_>,
) -> Taken {
    let end = HOLD + n;
    let mut src = HOLD;
    // Where kept bytes go, and where the frame being read began there.
    let mut out = HOLD;
    let mut frame_begin = start;
    while src < end {
        if frames.at_frame_boundary() && frames.partial_header().is_empty() {
            frame_begin = out;
        }
        match frames.scan_frame(&buf[src..end], seen) {
            Ok(k) => {
                buf.copy_within(src..src + k, out);
                src += k;
                out += k;
                if seen.pong_seen && seen.pong.is_some() {
                    // sluice's Pong, whole in this read: drop it (once).
                    out = frame_begin;
                    seen.pong = None;
                }
            }
            Err((violation, at)) => {
                let good = at.map_or(frame_begin, |a| {
                    buf.copy_within(src..src + a, out);
                    out + a
                });
                return Taken {
                    forward: start..good,
                    violation: Some(violation),
                };
            }
        }
    }
    Taken {
        forward: start..out - frames.partial_header().len(),
        violation: None,
    }
}

/// The two directions' trackers apart, client to upstream first.
pub fn split(tracks: Option<[Track; 2]>) -> (Option<Track>, Option<Track>) {
    match tracks {
        Some([up, down]) => (Some(up), Some(down)),
        None => (None, None),
    }
}

/// Takes bytes read before the tunnel began (read ahead by hyper) as the stream's
/// first read; returns the part to forward.
pub fn take_all(track: &mut Track, early: &[u8], step: &mut Step<'_>) -> Vec<u8> {
    let mut buf = vec![0; HOLD + early.len()];
    buf[HOLD..].copy_from_slice(early);
    let taken = track.take(&mut buf, early.len(), step.ws_route());
    step.violation = step.violation.or(taken.violation);
    buf[taken.forward].to_vec()
}

/// Whether a refusal may be logged now: at most 10 lines a second for the process, so
/// that a flood of bad frames cannot flood the log.
pub fn log_allowed() -> bool {
    static WINDOW: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let window = WINDOW.load(Ordering::Relaxed);
    let (second, count) = (window >> 8, window & 0xFF);
    if second != now {
        WINDOW.store(now << 8 | 1, Ordering::Relaxed);
        return true;
    }
    if count < 10 {
        WINDOW.store(window + 1, Ordering::Relaxed);
        return true;
    }
    false
}

/// The refusal label of a violation.
pub fn reason(v: Violation) -> &'static str {
    match v {
        Violation::FrameTooBig => "frame_too_big",
        Violation::MessageTooBig => "message_too_big",
        Violation::RateLimited => "rate",
        _ => "protocol",
    }
}

#[cfg(test)]
mod tests;
