//! Where WebSocket frames begin, for one direction of a tunnel (RFC 6455 §5).
//!
//! A [`Frames`] is told every byte that passes in order, and keeps only what it needs
//! to know where the next frame starts: the header being read (2 to 14 bytes), the
//! payload bytes left in the current frame, whether a fragmented message is open, its
//! opcode and its size so far. Data payloads are never looked at: a caller that moves
//! them without reading them (splice with an exact length, [`Frames::payload_left`])
//! reports them with [`Frames::skip`]. Control frames (at most 125 bytes of payload)
//! are collected whole, unmasked, and handed to the [`Observer`], which is how the
//! tunnel learns a Close's code or recognises its own Pong.
//!
//! permessage-deflate (RFC 7692) needs nothing here but leave to set RSV1 on the first
//! frame of a data message: payloads stay opaque. Anything else that breaks the
//! framing rules is a [`Violation`], and the tunnel answers it with a Close.
//!
//! It does no I/O and allocates only while a control frame's payload is split over
//! reads, so an idle tunnel's two trackers cost a few dozen bytes.

use std::fmt;

/// Who sends the frames a tracker sees: a client must mask every frame, a server
/// must mask none (RFC 6455 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    Client,
    Server,
}

/// A frame's opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// The kind's index in per-kind arrays, in declaration order.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }

    /// The label of the kind in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            OpCode::Continuation => "continuation",
            OpCode::Text => "text",
            OpCode::Binary => "binary",
            OpCode::Close => "close",
            OpCode::Ping => "ping",
            OpCode::Pong => "pong",
        }
    }
}

/// A frame header as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    /// RSV1..RSV3 as the top three bits of the first byte (0x40, 0x20, 0x10).
    pub rsv: u8,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub len: u64,
    /// The header's own length on the wire, 2 to 14 bytes.
    pub header_len: u8,
}

/// What a tracker tells as frames pass. Every method has an empty default.
pub trait Observer {
    /// A frame's header has been read; its payload follows.
    fn frame(&mut self, _header: &Header) {}
    /// The last frame of a text or binary message has been read whole.
    fn message(&mut self, _opcode: OpCode, _size: u64) {}
    /// A control frame has been read whole; `payload` is unmasked.
    fn control(&mut self, _opcode: OpCode, _payload: &[u8]) {}
    /// A new text or binary message begins: whether it may (a rate limit says no
    /// with `false`, which is [`Violation::RateLimited`]).
    fn admit(&mut self, _header: &Header) -> bool {
        true
    }
}

/// An observer that wants nothing.
impl Observer for () {}

/// Bounds a direction's frames and messages; `u64::MAX` is no bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_frame: u64,
    pub max_message: u64,
}

impl Limits {
    pub const NONE: Limits = Limits {
        max_frame: u64::MAX,
        max_message: u64::MAX,
    };
}

/// A break of the framing rules, found in a frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A reserved bit that the handshake did not negotiate.
    ReservedBits(u8),
    /// Opcodes 0x3-0x7 and 0xB-0xF are reserved.
    UnknownOpcode(u8),
    /// A client frame without a mask, or a server frame with one.
    Masking,
    /// A control frame with more than 125 bytes or without FIN.
    BadControl,
    /// A continuation frame with no message open.
    StrayContinuation,
    /// A new text or binary frame while a fragmented message is still open.
    UnfinishedMessage,
    /// A 64-bit length with its top bit set.
    LengthOverflow,
    /// A frame longer than [`Limits::max_frame`].
    FrameTooBig,
    /// A message longer than [`Limits::max_message`].
    MessageTooBig,
    /// A message beyond the sender's rate ([`Observer::admit`]).
    RateLimited,
}

impl Violation {
    /// The Close code the sender is told (RFC 6455 §7.4.1): 1009 for too much data,
    /// 1008 for a policy (the message rate), 1002 for a protocol error.
    pub fn close_code(self) -> u16 {
        match self {
            Violation::FrameTooBig | Violation::MessageTooBig => 1009,
            Violation::RateLimited => 1008,
            _ => 1002,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::ReservedBits(bits) => {
                write!(f, "reserved bits {bits:#04x} set without an extension")
            }
            Violation::UnknownOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            Violation::Masking => f.write_str("masking against the sender's role"),
            Violation::BadControl => f.write_str("a control frame over 125 bytes or fragmented"),
            Violation::StrayContinuation => f.write_str("a continuation with no message open"),
            Violation::UnfinishedMessage => f.write_str("a new message before the last ended"),
            Violation::LengthOverflow => f.write_str("a frame length over 2^63"),
            Violation::FrameTooBig => f.write_str("a frame over max_frame_bytes"),
            Violation::MessageTooBig => f.write_str("a message over max_message_bytes"),
            Violation::RateLimited => f.write_str("messages faster than max_messages_per_second"),
        }
    }
}

/// `allowed_rsv` when any reserved bits may be set (see [`Frames::any_rsv`]).
const ANY_RSV: u8 = 0xFF;

/// The longest control payload (RFC 6455 §5.5).
const MAX_CONTROL: usize = 125;

/// A control frame's payload, gathered until whole.
struct Control {
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    len: usize,
    payload: [u8; MAX_CONTROL],
}

/// A fragmented text or binary message that has begun.
#[derive(Debug, Clone, Copy)]
struct Message {
    opcode: OpCode,
    size: u64,
}

/// Frame tracking for one direction of a tunnel (see the module docs).
pub struct Frames {
    sender: Sender,
    /// Reserved bits the handshake allowed on a message's first frame (RSV1 with
    /// permessage-deflate).
    allowed_rsv: u8,
    limits: Limits,
    /// The header read so far; `have` of `need` bytes (`need` grows once the second
    /// byte tells the length's and the mask's size).
    head: [u8; 14],
    have: u8,
    need: u8,
    /// Payload bytes left in the current frame, once its header is read.
    left: u64,
    /// The current frame is a data frame whose end closes its message.
    fin: bool,
    /// An open message: the current frame belongs to it, or one is awaited.
    message: Option<Message>,
    /// The current frame's payload, when it is a control frame; boxed so that an idle
    /// tracker stays small.
    control: Option<Box<Control>>,
}

impl Frames {
    /// A tracker for frames from `sender`; `deflate` when the 101 negotiated
    /// permessage-deflate.
    pub fn new(sender: Sender, deflate: bool, limits: Limits) -> Frames {
        Frames {
            sender,
            allowed_rsv: if deflate { 0x40 } else { 0 },
            limits,
            head: [0; 14],
            have: 0,
            need: 2,
            left: 0,
            fin: false,
            message: None,
            control: None,
        }
    }

    /// Accepts any reserved bits anywhere: the 101 negotiated an extension sluice
    /// does not know, whose rules for them it cannot check.
    pub fn any_rsv(mut self) -> Frames {
        self.allowed_rsv = ANY_RSV;
        self
    }

    /// Who sends the frames this tracker sees.
    pub fn sender(&self) -> Sender {
        self.sender
    }

    /// Whether the next byte begins a frame.
    pub fn at_frame_boundary(&self) -> bool {
        self.have == 0 && self.left == 0 && self.control.is_none()
    }

    /// Whether the next byte begins a frame and no fragmented message is open: a Close
    /// written now interrupts nothing.
    pub fn at_message_boundary(&self) -> bool {
        self.at_frame_boundary() && self.message.is_none()
    }

    /// The bytes of a header begun but not yet whole (empty at a boundary or in a
    /// payload): the tail of what was scanned, which a caller holds back until the
    /// header is known to be good.
    pub fn partial_header(&self) -> &[u8] {
        &self.head[..usize::from(self.have)]
    }

    /// Whether a control frame's payload is being gathered.
    pub fn in_control(&self) -> bool {
        self.control.is_some()
    }

    /// Whether a fragmented message has begun and not ended.
    pub fn message_open(&self) -> bool {
        self.message.is_some()
    }

    /// Bytes of the current frame still to come, header bytes not yet read included
    /// as far as they are known; 0 at a frame boundary.
    pub fn frame_left(&self) -> u64 {
        if self.have > 0 {
            (self.need - self.have) as u64
        } else {
            self.left
        }
    }

    /// Data payload bytes that may pass unread: what is left of the current text,
    /// binary or continuation frame. 0 at a header or in a control frame, whose bytes
    /// must go through [`Frames::scan`].
    pub fn payload_left(&self) -> u64 {
        if self.have > 0 || self.control.is_some() {
            0
        } else {
            self.left
        }
    }

    /// Records `n` data payload bytes that passed unread; `n` must not exceed
    /// [`Frames::payload_left`].
    pub fn skip(&mut self, n: u64, observer: &mut impl Observer) {
        debug_assert!(n <= self.payload_left());
        let n = n.min(self.payload_left());
        self.left -= n;
        if n > 0 && self.left == 0 {
            self.frame_done(observer);
        }
    }

    /// Takes the next bytes of the stream, in order. Fails at the first header that
    /// breaks the rules; the bytes before it were good, and the tracker must not be
    /// used after.
    pub fn scan(&mut self, data: &[u8], observer: &mut impl Observer) -> Result<(), Violation> {
        self.scan_at(data, observer).map_err(|(v, _)| v)
    }

    /// As [`Frames::scan`], and on failure also where the bad header began in `data`:
    /// `None` when it began in an earlier call, in the bytes [`Frames::partial_header`]
    /// held. A caller that forwards only up to there never passes a bad header on.
    pub fn scan_at(
        &mut self,
        data: &[u8],
        observer: &mut impl Observer,
    ) -> Result<(), (Violation, Option<usize>)> {
        self.scan_inner(data, observer, false).map(|_| ())
    }

    /// As [`Frames::scan_at`], but stops where the current frame ends; returns how
    /// many bytes it took (all of `data` if the frame goes on past it).
    pub fn scan_frame(
        &mut self,
        data: &[u8],
        observer: &mut impl Observer,
    ) -> Result<usize, (Violation, Option<usize>)> {
        self.scan_inner(data, observer, true)
    }

    fn scan_inner(
        &mut self,
        data: &[u8],
        observer: &mut impl Observer,
        one_frame: bool,
    ) -> Result<usize, (Violation, Option<usize>)> {
        let mut pos = 0;
        while pos < data.len() {
            if one_frame && pos > 0 && self.at_frame_boundary() {
                break;
            }
            let rest = &data[pos..];
            if self.have == 0 && self.left == 0 && self.control.is_none() && rest.len() >= 2 {
                let len = usize::from(header_len(rest[1]));
                if rest.len() >= len {
                    // The common case, a whole header in the read: taken where it lies,
                    // not copied, and a data payload passed in the same step.
                    let header = parse(&rest[..len]).map_err(|v| (v, Some(pos)))?;
                    let start = pos;
                    pos += len;
                    // Most frames are whole messages, text or binary, with no reserved
                    // bit: checked in a few comparisons, and passed in this step when
                    // the payload is here too. 6.7 to 5.0 ns a frame scanned, 10.3 to
                    // 7.1 tracked and counted (benches/hot_paths.rs, frames).
                    if header.fin
                        && header.rsv == 0
                        && matches!(header.opcode, OpCode::Text | OpCode::Binary)
                        && self.message.is_none()
                        && header.mask.is_some() == (self.sender == Sender::Client)
                        && header.len <= self.limits.max_frame.min(self.limits.max_message)
                        && (data.len() - pos) as u64 >= header.len
                    {
                        if !observer.admit(&header) {
                            return Err((Violation::RateLimited, Some(start)));
                        }
                        observer.frame(&header);
                        pos += header.len as usize;
                        observer.message(header.opcode, header.len);
                        continue;
                    }
                    self.start_frame(header, observer)
                        .map_err(|v| (v, Some(start)))?;
                    if self.control.is_none() && self.left > 0 {
                        let take = self.left.min((data.len() - pos) as u64);
                        self.left -= take;
                        pos += take as usize;
                        if self.left == 0 {
                            self.frame_done(observer);
                        }
                    }
                    continue;
                }
            }
            if self.have > 0 || (self.left == 0 && self.control.is_none()) {
                let start = pos.checked_sub(usize::from(self.have));
                let take = usize::from(self.need - self.have).min(rest.len());
                let at = usize::from(self.have);
                self.head[at..at + take].copy_from_slice(&rest[..take]);
                self.have += take as u8;
                pos += take;
                if self.have == 2 {
                    self.need = header_len(self.head[1]);
                }
                if self.have == self.need {
                    self.begin_frame(observer).map_err(|v| (v, start))?;
                }
            } else if let Some(control) = &mut self.control {
                // `left` is at most 125 here.
                let left = self.left as usize;
                let take = left.min(rest.len());
                let at = control.len - left;
                control.payload[at..at + take].copy_from_slice(&rest[..take]);
                self.left -= take as u64;
                pos += take;
                if self.left == 0 {
                    self.frame_done(observer);
                }
            } else {
                let take = self.left.min(rest.len() as u64);
                self.left -= take;
                pos += take as usize;
                if self.left == 0 {
                    self.frame_done(observer);
                }
            }
        }
        Ok(pos)
    }

    /// The header is whole: checks it and sets up for its payload.
    fn begin_frame(&mut self, observer: &mut impl Observer) -> Result<(), Violation> {
        let header = parse(&self.head[..usize::from(self.need)]);
        self.have = 0;
        self.need = 2;
        self.start_frame(header?, observer)
    }

    /// A whole header has been read: checks it and sets up for its payload.
    // Inlined with `parse` into the scanning loop, the header stays in registers:
    // 20.7 ns a frame before, 6.7 after, with the fast path above (2.65 and 0.85 us
    // per 128 frames of 64 B, benches/hot_paths.rs, frames).
    #[inline(always)]
    fn start_frame(
        &mut self,
        header: Header,
        observer: &mut impl Observer,
    ) -> Result<(), Violation> {
        let rsv = header.rsv;
        let first_of_message = matches!(header.opcode, OpCode::Text | OpCode::Binary);
        if self.allowed_rsv != ANY_RSV
            && (rsv & !self.allowed_rsv != 0 || (rsv != 0 && !first_of_message))
        {
            return Err(Violation::ReservedBits(rsv));
        }
        if header.mask.is_some() != (self.sender == Sender::Client) {
            return Err(Violation::Masking);
        }
        if header.len > self.limits.max_frame {
            return Err(Violation::FrameTooBig);
        }
        if header.opcode.is_control() {
            if !header.fin || header.len > MAX_CONTROL as u64 {
                return Err(Violation::BadControl);
            }
        } else {
            let message = match (header.opcode, self.message) {
                (OpCode::Continuation, None) => return Err(Violation::StrayContinuation),
                (OpCode::Continuation, Some(m)) => m,
                (_, Some(_)) => return Err(Violation::UnfinishedMessage),
                (opcode, None) => Message { opcode, size: 0 },
            };
            let size = message.size.saturating_add(header.len);
            if size > self.limits.max_message {
                return Err(Violation::MessageTooBig);
            }
            if header.opcode != OpCode::Continuation && !observer.admit(&header) {
                return Err(Violation::RateLimited);
            }
            self.message = Some(Message { size, ..message });
            self.fin = header.fin;
        }
        observer.frame(&header);
        self.left = header.len;
        if header.opcode.is_control() {
            self.control = Some(Box::new(Control {
                opcode: header.opcode,
                mask: header.mask,
                len: header.len as usize,
                payload: [0; MAX_CONTROL],
            }));
        }
        if self.left == 0 {
            self.frame_done(observer);
        }
        Ok(())
    }

    /// The current frame's payload is through.
    fn frame_done(&mut self, observer: &mut impl Observer) {
        if let Some(mut control) = self.control.take() {
            let payload = &mut control.payload[..control.len];
            if let Some(mask) = control.mask {
                unmask(payload, mask);
            }
            observer.control(control.opcode, payload);
        } else if self.fin {
            if let Some(m) = self.message.take() {
                observer.message(m.opcode, m.size);
            }
            self.fin = false;
        }
    }
}

/// The header length the second byte announces.
pub fn header_len(second: u8) -> u8 {
    let ext = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if second & 0x80 != 0 { 4 } else { 0 }
}

/// Reads a whole header (its length already known from the second byte).
#[inline(always)]
pub fn parse(head: &[u8]) -> Result<Header, Violation> {
    let (first, second) = (head[0], head[1]);
    let opcode = OpCode::from_bits(first & 0x0F).ok_or(Violation::UnknownOpcode(first & 0x0F))?;
    let (len, mut at) = match second & 0x7F {
        126 => (u64::from(u16::from_be_bytes([head[2], head[3]])), 4),
        127 => {
            let len = u64::from_be_bytes(head[2..10].try_into().expect("8 bytes"));
            if len >> 63 != 0 {
                return Err(Violation::LengthOverflow);
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };
    let mask = (second & 0x80 != 0).then(|| {
        let m = [head[at], head[at + 1], head[at + 2], head[at + 3]];
        at += 4;
        m
    });
    Ok(Header {
        fin: first & 0x80 != 0,
        rsv: first & 0x70,
        opcode,
        mask,
        len,
        header_len: at as u8,
    })
}

/// XORs `payload` with `mask` (the same operation masks and unmasks).
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

#[cfg(test)]
pub(crate) mod tests;
