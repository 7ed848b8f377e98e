//! WebSocket frames (RFC 6455 §5) byte by byte, for tests whose peers write and read
//! a tunnel's bytes themselves: sluice tracks the frames in its tunnels, so whatever
//! such a peer sends must be real frames, masked from a client and unmasked from a
//! server.
//!
//! Not glob-imported: [`frame`] and [`Frame`] share their names with the raw HTTP/2
//! client's (`support::h2`), so tests name what they use.

use tokio::io::{AsyncRead, AsyncReadExt};

/// The bytes a frame of `len` payload bytes takes on the wire: a header of 2, 4 or
/// 10 bytes, a client's 4-byte mask, and the payload.
pub fn frame_len(len: usize, masked: bool) -> u64 {
    let ext = match len {
        0..=125 => 0,
        126..=65535 => 2,
        _ => 8,
    };
    (2 + ext + if masked { 4 } else { 0 } + len) as u64
}

/// The FIN bit of a frame's first byte: the last frame of its message.
pub const FIN: u8 = 0x80;
pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The masking key of [`client_text`], [`client_binary`] and [`client_close`].
pub const CLIENT_MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// The longest payload [`read_frame`] accepts, so that a garbage length fails the
/// test instead of exhausting memory.
const MAX_READ: u64 = 256 << 20;

/// Encodes one frame: `first` as given (FIN, RSV1-3 and the opcode), the payload's
/// length in the shortest of the 7-, 16- and 64-bit encodings, and the payload,
/// masked with `mask` (which also sets the MASK bit) when there is one.
pub fn frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut out = Vec::with_capacity(14 + payload.len());
    out.push(first);
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A whole text message as a client sends it: one FIN frame masked with
/// [`CLIENT_MASK`].
pub fn client_text(payload: &[u8]) -> Vec<u8> {
    frame(FIN | OP_TEXT, payload, Some(CLIENT_MASK))
}

/// A whole binary message as a client sends it: one FIN frame masked with
/// [`CLIENT_MASK`].
pub fn client_binary(payload: &[u8]) -> Vec<u8> {
    frame(FIN | OP_BINARY, payload, Some(CLIENT_MASK))
}

/// A whole text message as a server sends it: one FIN frame, unmasked.
pub fn server_text(payload: &[u8]) -> Vec<u8> {
    frame(FIN | OP_TEXT, payload, None)
}

/// A whole binary message as a server sends it: one FIN frame, unmasked.
pub fn server_binary(payload: &[u8]) -> Vec<u8> {
    frame(FIN | OP_BINARY, payload, None)
}

/// A Close frame carrying `code` (and no reason), masked with `mask` if given.
pub fn close(code: u16, mask: Option<[u8; 4]>) -> Vec<u8> {
    frame(FIN | OP_CLOSE, &code.to_be_bytes(), mask)
}

/// A client's Close with `code`, masked with [`CLIENT_MASK`].
pub fn client_close(code: u16) -> Vec<u8> {
    close(code, Some(CLIENT_MASK))
}

/// One frame as read: its first byte, its payload (unmasked), and whether it came
/// masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub first: u8,
    pub payload: Vec<u8>,
    pub masked: bool,
}

impl Frame {
    /// The opcode (the low four bits of the first byte).
    pub fn opcode(&self) -> u8 {
        self.first & 0x0F
    }

    pub fn fin(&self) -> bool {
        self.first & FIN != 0
    }

    /// The code of a Close frame: 1005 for a Close without one, `None` for any other
    /// frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode() == OP_CLOSE).then(|| match self.payload[..] {
            [hi, lo, ..] => u16::from_be_bytes([hi, lo]),
            _ => 1005,
        })
    }
}

/// The header fields after the first byte: the length and the masking key.
fn length_and_mask(second: u8, ext: &[u8], key: Option<&[u8]>) -> (u64, Option<[u8; 4]>) {
    let len = match second & 0x7F {
        126 => u64::from(u16::from_be_bytes([ext[0], ext[1]])),
        127 => u64::from_be_bytes(ext[..8].try_into().unwrap()),
        n => u64::from(n),
    };
    (len, key.map(|k| [k[0], k[1], k[2], k[3]]))
}

/// The bytes of the extended length the second byte announces.
fn ext_len(second: u8) -> usize {
    match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    }
}

fn unmasked(mut payload: Vec<u8>, mask: Option<[u8; 4]>) -> Vec<u8> {
    if let Some(key) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    payload
}

/// Reads exactly one frame from `r`, unmasking its payload. The end of the stream
/// before a whole frame is an `UnexpectedEof` error.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Frame> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await?;
    let mut ext = [0u8; 8];
    let ext = &mut ext[..ext_len(head[1])];
    r.read_exact(ext).await?;
    let mut key = [0u8; 4];
    let masked = head[1] & 0x80 != 0;
    if masked {
        r.read_exact(&mut key).await?;
    }
    let (len, mask) = length_and_mask(head[1], ext, masked.then_some(&key[..]));
    if len > MAX_READ {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes: not a frame a test sends"),
        ));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    Ok(Frame {
        first: head[0],
        payload: unmasked(payload, mask),
        masked,
    })
}

fn partial(bytes: &[u8]) -> ! {
    panic!("a partial frame at the end of {bytes:?}")
}

/// Splits `bytes` into the whole frames it holds, unmasking their payloads. Panics
/// if it ends in the middle of a frame.
pub fn parse_frames(bytes: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let [first, second, ..] = *rest else {
            partial(bytes)
        };
        let masked = second & 0x80 != 0;
        let header = 2 + ext_len(second) + if masked { 4 } else { 0 };
        if rest.len() < header {
            partial(bytes);
        }
        let ext = &rest[2..2 + ext_len(second)];
        let key = masked.then(|| &rest[header - 4..header]);
        let (len, mask) = length_and_mask(second, ext, key);
        let Some(end) = usize::try_from(len)
            .ok()
            .and_then(|len| header.checked_add(len))
            .filter(|&end| end <= rest.len())
        else {
            partial(bytes)
        };
        frames.push(Frame {
            first,
            payload: unmasked(rest[header..end].to_vec(), mask),
            masked,
        });
        rest = &rest[end..];
    }
    frames
}
