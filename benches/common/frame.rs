//! WebSocket framing (RFC 6455 §5) at the byte level, shared by the load generator
//! and the echo backend.
//!
//! Both sides of the benchmark speak frames directly instead of through a WebSocket
//! library: the client precomputes its masked frames once and then only copies bytes,
//! and the backend unmasks and echoes without allocating per message, so that the
//! proxy in the middle, not the tools around it, is what runs out of CPU first.

// Each of the two programs uses its own half of this module.
#![allow(dead_code)]

use std::fmt;

/// Continuation of a fragmented message.
pub const OP_CONTINUATION: u8 = 0x0;
/// A text message.
pub const OP_TEXT: u8 = 0x1;
/// A binary message.
pub const OP_BINARY: u8 = 0x2;
/// Close.
pub const OP_CLOSE: u8 = 0x8;
/// Ping.
pub const OP_PING: u8 = 0x9;
/// Pong.
pub const OP_PONG: u8 = 0xA;

/// The longest header: 2 bytes, an 8-byte extended length, a 4-byte mask key.
pub const MAX_HEADER: usize = 14;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: u8,
    /// The mask key; clients must mask, servers must not.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub len: usize,
    /// Header length in bytes: the payload starts this far into the frame.
    pub header_len: usize,
}

impl Header {
    /// Header plus payload.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.len
    }
}

/// A frame that breaks the protocol; the connection carrying it cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// RSV1-3 set without an extension that defines them.
    ReservedBits,
    /// An opcode RFC 6455 does not define.
    UnknownOpcode(u8),
    /// A control frame longer than 125 bytes or fragmented.
    BadControlFrame,
    /// A payload over the caller's limit (or a length with the top bit set).
    TooLong(u64),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::ReservedBits => write!(f, "reserved bits set"),
            FrameError::UnknownOpcode(op) => write!(f, "unknown opcode {op:#x}"),
            FrameError::BadControlFrame => write!(f, "control frame too long or fragmented"),
            FrameError::TooLong(n) => write!(f, "payload of {n} bytes is over the limit"),
        }
    }
}

/// Parses the header at the start of `buf`. `Ok(None)` means more bytes are needed.
/// Payloads over `max_len` are refused so that a bad length cannot make the caller
/// allocate without bound.
pub fn parse_header(buf: &[u8], max_len: usize) -> Result<Option<Header>, FrameError> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    if !matches!(
        opcode,
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err(FrameError::UnknownOpcode(opcode));
    }
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                (u64::from_be_bytes(a), 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if opcode & 0x8 != 0 && (len > 125 || !fin) {
        return Err(FrameError::BadControlFrame);
    }
    let len = match usize::try_from(len) {
        Ok(n) if n <= max_len => n,
        _ => return Err(FrameError::TooLong(len)),
    };
    let mask = if masked {
        let Some(k) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some([k[0], k[1], k[2], k[3]])
    } else {
        None
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        len,
        header_len: at,
    }))
}

/// Appends a frame header to `out`.
pub fn write_header(out: &mut Vec<u8>, fin: bool, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    out.push(if fin { 0x80 } else { 0 } | (opcode & 0x0F));
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        // Fits in the 7-bit length field.
        out.push(mask_bit | len as u8);
    } else if let Ok(n) = u16::try_from(len) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(k) = mask {
        out.extend_from_slice(&k);
    }
}

/// Appends a whole frame; the payload is masked on the way in when `mask` is given.
pub fn write_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    write_header(out, true, opcode, payload.len(), mask);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(k) = mask {
        apply_mask(&mut out[start..], k);
    }
}

/// XORs `data` with the repeating mask key (masking and unmasking are the same).
/// Works eight bytes at a time: the echo backend unmasks every byte it receives.
pub fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ wide).to_ne_bytes());
    }
    // The tail starts at a multiple of 8, so the key lines up again at index 0.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// A receive buffer: bytes read but not yet consumed, with room to read more.
///
/// Frames are parsed straight out of it; consumed bytes are dropped by moving the
/// unconsumed tail to the front only when room is needed, which for small frames is
/// rare and short.
pub struct RecvBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl RecvBuf {
    pub fn with_capacity(cap: usize) -> Self {
        RecvBuf {
            data: vec![0; cap],
            start: 0,
            end: 0,
        }
    }

    /// The bytes read and not yet consumed.
    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// The same, writable (the backend unmasks in place).
    pub fn filled_mut(&mut self) -> &mut [u8] {
        &mut self.data[self.start..self.end]
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Drops the first `n` unconsumed bytes.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Room to read into: at least `want` bytes of free space, so that a frame of
    /// `want` bytes fits whole once read.
    pub fn spare(&mut self, want: usize) -> &mut [u8] {
        if self.data.len() - self.end < want.max(1) {
            if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.data.len() - self.end < want {
                self.data.resize(self.end + want, 0);
            }
        }
        &mut self.data[self.end..]
    }

    /// Marks `n` bytes of [`RecvBuf::spare`] as read.
    pub fn advance(&mut self, n: usize) {
        self.end = (self.end + n).min(self.data.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_all_length_forms() {
        for len in [0usize, 5, 125, 126, 65535, 65536, 100_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = Vec::new();
            write_frame(&mut out, OP_BINARY, &payload, Some([1, 2, 3, 4]));
            let h = parse_header(&out, 1 << 20).unwrap().unwrap();
            assert_eq!(h.len, len);
            assert_eq!(h.frame_len(), out.len());
            let mut body = out[h.header_len..].to_vec();
            apply_mask(&mut body, h.mask.unwrap());
            assert_eq!(body, payload);
        }
    }

    #[test]
    fn incomplete_headers_ask_for_more() {
        let mut out = Vec::new();
        write_frame(&mut out, OP_TEXT, &[0; 300], Some([9, 9, 9, 9]));
        for cut in 0..8 {
            assert_eq!(parse_header(&out[..cut], 1000), Ok(None));
        }
    }

    #[test]
    fn refuses_bad_frames() {
        assert_eq!(parse_header(&[0xC2, 0], 10), Err(FrameError::ReservedBits));
        assert_eq!(
            parse_header(&[0x83, 0], 10),
            Err(FrameError::UnknownOpcode(3))
        );
        assert_eq!(
            parse_header(&[0x09, 0], 10),
            Err(FrameError::BadControlFrame)
        );
        assert_eq!(parse_header(&[0x82, 20], 10), Err(FrameError::TooLong(20)));
    }
}
