//! A byte stream through `tunnel::frames::Frames`, the tunnel's WebSocket frame
//! tracker, fed in pieces of varying size, with payloads passed unread (`skip`, as
//! splice moves them) on half the runs. The oracle reads the whole stream at once with
//! tungstenite's `FrameHeader::parse` and applies RFC 6455's rules in a plain loop:
//! both must tell the same frames, messages and control payloads, and stop at the same
//! violation.
//!
//! The first byte chooses: bit 0 the sender (client frames are masked, server frames
//! not), bit 1 permessage-deflate (RSV1 allowed on a message's first frame), bit 2 small
//! limits (frames of 300 bytes, messages of 1000), bit 3 passing payloads unread, and
//! the rest seeds the piece sizes.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use sluice::tunnel::frames::{Frames, Header, Limits, Observer, OpCode, Sender, Violation};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode as TOpCode};

#[derive(Debug, PartialEq, Eq)]
enum Event {
    Frame(u8, bool, u64),
    Message(u8, u64),
    Control(u8, Vec<u8>),
    Violation(Violation),
}

fn code(op: OpCode) -> u8 {
    match op {
        OpCode::Continuation => 0,
        OpCode::Text => 1,
        OpCode::Binary => 2,
        OpCode::Close => 8,
        OpCode::Ping => 9,
        OpCode::Pong => 10,
    }
}

/// What the tracker told, in order.
#[derive(Default)]
struct Told(Vec<Event>);

impl Observer for Told {
    fn frame(&mut self, h: &Header) {
        self.0.push(Event::Frame(code(h.opcode), h.fin, h.len));
    }
    fn message(&mut self, opcode: OpCode, size: u64) {
        self.0.push(Event::Message(code(opcode), size));
    }
    fn control(&mut self, opcode: OpCode, payload: &[u8]) {
        self.0.push(Event::Control(code(opcode), payload.to_vec()));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, stream)) = data.split_first() else {
        return;
    };
    let sender = if cfg & 1 == 0 { Sender::Client } else { Sender::Server };
    let deflate = cfg & 2 != 0;
    let limits = if cfg & 4 != 0 {
        Limits {
            max_frame: 300,
            max_message: 1000,
        }
    } else {
        Limits::NONE
    };
    let expected = oracle(stream, sender, deflate, limits);
    let got = tracked(stream, sender, deflate, limits, cfg & 8 != 0, cfg >> 4);
    assert_eq!(got, expected);
});

/// The tracker fed in pieces of 1 to 16 bytes, or on odd seeds of up to 1,024 (whole
/// frames in one piece, as the tracker's one-step path takes them); the sizes cycle
/// from `seed`.
fn tracked(
    stream: &[u8],
    sender: Sender,
    deflate: bool,
    limits: Limits,
    unread: bool,
    seed: u8,
) -> Vec<Event> {
    let mut f = Frames::new(sender, deflate, limits);
    let mut events = Told::default();
    let mut at = 0;
    let mut size = usize::from(seed);
    while at < stream.len() {
        size = (size * 7 + 3) % if seed & 1 == 1 { 1024 } else { 16 } + 1;
        let piece = size.min(stream.len() - at);
        let left = f.payload_left() as usize;
        if unread && left > 0 {
            let n = piece.min(left);
            f.skip(n as u64, &mut events);
            at += n;
            continue;
        }
        if let Err(v) = f.scan(&stream[at..at + piece], &mut events) {
            events.0.push(Event::Violation(v));
            return events.0;
        }
        at += piece;
    }
    events.0
}

/// The rules as a plain loop over whole frames.
fn oracle(stream: &[u8], sender: Sender, deflate: bool, limits: Limits) -> Vec<Event> {
    let mut events = Vec::new();
    let mut cursor = Cursor::new(stream);
    // The open message: its opcode and size so far.
    let mut open: Option<(u8, u64)> = None;
    loop {
        let begins = cursor.position() as usize;
        let (h, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return events,
            Err(_) => {
                let op = stream[begins] & 0x0F;
                events.push(Event::Violation(Violation::UnknownOpcode(op)));
                return events;
            }
        };
        let op = u8::from(h.opcode);
        let rsv = (u8::from(h.rsv1) << 6) | (u8::from(h.rsv2) << 5) | (u8::from(h.rsv3) << 4);
        let control = matches!(h.opcode, TOpCode::Control(_));
        let first = matches!(h.opcode, TOpCode::Data(Data::Text | Data::Binary));
        let violation = if len >> 63 != 0 {
            Some(Violation::LengthOverflow)
        } else if h.rsv2 || h.rsv3 || (h.rsv1 && !(deflate && first)) {
            Some(Violation::ReservedBits(rsv))
        } else if h.mask.is_some() != (sender == Sender::Client) {
            Some(Violation::Masking)
        } else if len > limits.max_frame {
            Some(Violation::FrameTooBig)
        } else if control && (!h.is_final || len > 125) {
            Some(Violation::BadControl)
        } else if !control && op == 0 && open.is_none() {
            Some(Violation::StrayContinuation)
        } else if first && open.is_some() {
            Some(Violation::UnfinishedMessage)
        } else if !control && open.map_or(0, |(_, s)| s).saturating_add(len) > limits.max_message {
            Some(Violation::MessageTooBig)
        } else {
            None
        };
        if let Some(v) = violation {
            events.push(Event::Violation(v));
            return events;
        }
        events.push(Event::Frame(op, h.is_final, len));
        if !control {
            let (kind, size) = open.unwrap_or((op, 0));
            open = Some((kind, size + len));
        }
        let start = cursor.position() as usize;
        let available = (stream.len() - start) as u64;
        if available < len {
            return events;
        }
        let end = start + len as usize;
        cursor.set_position(end as u64);
        if control {
            let mut payload = stream[start..end].to_vec();
            if let Some(mask) = h.mask {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= mask[i % 4];
                }
            }
            debug_assert!(matches!(h.opcode, TOpCode::Control(Control::Close | Control::Ping | Control::Pong)));
            events.push(Event::Control(op, payload));
        } else if h.is_final {
            let (kind, size) = open.take().expect("a message is open");
            events.push(Event::Message(kind, size));
        }
    }
}
