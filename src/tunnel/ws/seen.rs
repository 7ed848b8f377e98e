//! What a tracker's observer does with the frames of one read: counts them on the
//! stack and adds the counts to the shared metrics once per read, notes Closes and
//! sluice's own Pong, and holds messages to their rate.

use super::control::{PING_LEN, ping_payload};
use crate::metrics::websocket::{LocalSizes, WsDirMetrics};
use crate::tunnel::frames::{Header, Observer, OpCode};

/// `max_messages_per_second` for one direction: a token bucket holding a second's
/// worth (at least one message).
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: std::time::Instant,
}

impl Bucket {
    pub fn new(rate: f64) -> Bucket {
        let burst = rate.max(1.0);
        Bucket {
            rate,
            burst,
            tokens: burst,
            last: std::time::Instant::now(),
        }
    }

    fn admit(&mut self) -> bool {
        let now = std::time::Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Counts what one read's frames were, on the stack, and adds them to the shared
/// counters once per read rather than once per frame.
pub(super) struct Seen<'a> {
    m: &'a WsDirMetrics,
    frames: [u32; 6],
    messages: u32,
    /// Sizes gathered here: a read of a hundred small messages costs one update of
    /// the histogram, not a hundred.
    sizes: LocalSizes,
    pub(super) close: Option<u16>,
    pub(super) last_len: Option<u64>,
    /// `max_messages_per_second`, when set.
    pub(super) bucket: Option<&'a mut Bucket>,
    /// The payload of sluice's Ping whose Pong is awaited from this reader...
    pub(super) pong: Option<[u8; PING_LEN]>,
    /// ...and whether the frame just read was that Pong.
    pub(super) pong_seen: bool,
}

impl<'a> Seen<'a> {
    pub(super) fn new(m: &'a WsDirMetrics) -> Seen<'a> {
        Seen {
            m,
            frames: [0; 6],
            messages: 0,
            sizes: LocalSizes::default(),
            close: None,
            last_len: None,
            bucket: None,
            pong: None,
            pong_seen: false,
        }
    }

    /// Also holds new messages to `bucket`'s rate.
    pub(super) fn with_bucket(mut self, bucket: Option<&'a mut Bucket>) -> Seen<'a> {
        self.bucket = bucket;
        self
    }

    /// Also watches for the Pong to sluice's Ping with `token`.
    pub(super) fn watching(mut self, token: Option<u32>) -> Seen<'a> {
        self.pong = token.map(ping_payload);
        self
    }

    /// Adds the counts to the shared counters; returns what the tracker keeps.
    pub(super) fn flush(self) -> Summary {
        for (counter, &n) in self.m.frames.iter().zip(&self.frames) {
            if n > 0 {
                counter.inc_by(u64::from(n));
            }
        }
        if self.messages > 0 {
            self.m.messages.inc_by(u64::from(self.messages));
        }
        self.m.sizes.add(&self.sizes);
        Summary {
            messages: u64::from(self.messages),
            close: self.close,
            last_len: self.last_len,
        }
    }
}

/// What a read's frames leave the tracker to keep.
pub(super) struct Summary {
    pub(super) messages: u64,
    /// The first Close's code (1005 without one).
    pub(super) close: Option<u16>,
    /// The last data frame's length.
    pub(super) last_len: Option<u64>,
}

impl Observer for Seen<'_> {
    fn frame(&mut self, header: &Header) {
        self.frames[header.opcode.index()] += 1;
        if !header.opcode.is_control() {
            self.last_len = Some(header.len);
        }
    }

    fn message(&mut self, _opcode: OpCode, size: u64) {
        self.messages += 1;
        self.sizes.observe(size);
    }

    fn admit(&mut self, _header: &Header) -> bool {
        self.bucket.as_mut().is_none_or(|b| b.admit())
    }

    fn control(&mut self, opcode: OpCode, payload: &[u8]) {
        if opcode == OpCode::Pong && self.pong.is_some_and(|p| p[..] == *payload) {
            self.pong_seen = true;
        }
        if opcode == OpCode::Close && self.close.is_none() {
            self.close = Some(match payload {
                [hi, lo, ..] => u16::from_be_bytes([*hi, *lo]),
                _ => 1005,
            });
        }
    }
}
