//! A raw HTTP/2 client that writes frames byte for byte: for peers that misbehave on
//! purpose (floods, resets, windows of one byte), which a real client library would
//! never let a test be.

use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::support::within;

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_ENABLE_CONNECT_PROTOCOL: u16 = 0x8;

pub const CANCEL: u32 = 0x8;
pub const REFUSED_STREAM: u32 = 0x7;

/// One frame: the 9-byte header's fields and the payload.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Bytes,
}

impl Frame {
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// The error code of a RST_STREAM or GOAWAY.
    pub fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }

    /// The pairs of a SETTINGS frame.
    pub fn settings(&self) -> Vec<(u16, u32)> {
        self.payload
            .chunks_exact(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect()
    }
}

/// Encodes one frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A SETTINGS frame with `pairs`.
pub fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (id, value) in pairs {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &payload)
}

/// A RST_STREAM frame.
pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

/// An HPACK integer with an `n`-bit prefix, `high` holding the bits above it.
fn hpack_int(out: &mut Vec<u8>, high: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(high | value as u8);
        return;
    }
    out.push(high | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// An HPACK header block of `fields`, each a literal without indexing with a new
/// name and no Huffman coding: the simplest encoding every decoder accepts.
pub fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// A HEADERS frame (END_HEADERS set) for `fields`.
pub fn headers(stream: u32, fields: &[(&str, &str)], end_stream: bool) -> Vec<u8> {
    let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
    frame(HEADERS, flags, stream, &header_block(fields))
}

/// A GET of `path` at `authority` over h2c on `stream`, ending the stream.
pub fn get(stream: u32, authority: &str, path: &str) -> Vec<u8> {
    headers(
        stream,
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", authority),
            (":path", path),
        ],
        true,
    )
}

/// The `:status` of a response header block, when it is the first field and coded
/// as a static-table reference or a literal (digits plain or Huffman coded). Raw
/// clients set SETTINGS_HEADER_TABLE_SIZE to 0, so the server never refers to its
/// dynamic table.
pub fn status_of_block(block: &[u8]) -> Option<u16> {
    let mut b = block;
    // Dynamic table size updates (001xxxxx) come first.
    while let Some(&first) = b.first() {
        if first & 0xe0 != 0x20 {
            break;
        }
        let (_, used) = read_int(b, 5)?;
        b = &b[used..];
    }
    let first = *b.first()?;
    if first & 0x80 != 0 {
        let (index, _) = read_int(b, 7)?;
        return match index {
            8 => Some(200),
            9 => Some(204),
            10 => Some(206),
            11 => Some(304),
            12 => Some(400),
            13 => Some(404),
            14 => Some(500),
            _ => None,
        };
    }
    let prefix = if first & 0x40 != 0 { 6 } else { 4 };
    let (name, used) = read_int(b, prefix)?;
    if !(8..=14).contains(&name) {
        return None;
    }
    let b = &b[used..];
    let huffman = b.first()? & 0x80 != 0;
    let (len, used) = read_int(b, 7)?;
    let value = b.get(used..used + len)?;
    let text = if huffman {
        huffman_digits(value)?
    } else {
        String::from_utf8(value.to_vec()).ok()?
    };
    text.parse().ok()
}

fn read_int(b: &[u8], n: u32) -> Option<(usize, usize)> {
    let max = (1usize << n) - 1;
    let mut value = (*b.first()? as usize) & max;
    if value < max {
        return Some((value, 1));
    }
    let mut shift = 0;
    for (i, byte) in b[1..].iter().enumerate() {
        value += ((byte & 0x7f) as usize) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Some((value, i + 2));
        }
    }
    None
}

/// Decodes a Huffman-coded string of decimal digits (RFC 7541 appendix B: '0'-'2'
/// are 5-bit codes 0-2, '3'-'9' 6-bit codes 0x19-0x1f; padding is all ones).
fn huffman_digits(value: &[u8]) -> Option<String> {
    let bits: Vec<u8> = value
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let mut out = String::new();
    let mut at = 0;
    while at < bits.len() {
        let rest = &bits[at..];
        if rest.iter().all(|&b| b == 1) && rest.len() < 8 {
            break;
        }
        let code5 = rest.get(..5)?.iter().fold(0u8, |a, &b| a << 1 | b);
        if code5 <= 2 {
            out.push((b'0' + code5) as char);
            at += 5;
            continue;
        }
        let code6 = rest.get(..6)?.iter().fold(0u8, |a, &b| a << 1 | b);
        if (0x19..=0x1f).contains(&code6) {
            out.push((b'3' + code6 - 0x19) as char);
            at += 6;
            continue;
        }
        return None;
    }
    Some(out)
}

/// Reads frames from a connection.
pub struct FrameReader {
    io: OwnedReadHalf,
    buf: BytesMut,
}

impl FrameReader {
    /// The next frame; `None` at EOF or on a read error (a reset).
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let kind = self.buf[3];
                    let flags = self.buf[4];
                    let stream =
                        u32::from_be_bytes(self.buf[5..9].try_into().unwrap()) & 0x7fff_ffff;
                    self.buf.advance(9);
                    let payload = self.buf.split_to(len).freeze();
                    return Some(Frame {
                        kind,
                        flags,
                        stream,
                        payload,
                    });
                }
            }
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads frames until one matches `pred` (returned) or the connection ends
    /// (`None`), within [`super::STEP`].
    pub async fn until(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&Frame) -> bool,
    ) -> Option<Frame> {
        within(what, async {
            while let Some(f) = self.next().await {
                if pred(&f) {
                    return Some(f);
                }
            }
            None
        })
        .await
    }

    /// Reads to the end of the connection within [`super::STEP`]; returns the
    /// frames seen on the way.
    pub async fn until_closed(&mut self, what: &str) -> Vec<Frame> {
        within(what, async {
            let mut seen = Vec::new();
            while let Some(f) = self.next().await {
                seen.push(f);
            }
            seen
        })
        .await
    }
}

/// How a raw client's request ended.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// A response: its status (when decodable) and body.
    Response(Option<u16>, Vec<u8>),
    /// RST_STREAM with this error code.
    Reset(u32),
    /// GOAWAY with this error code, before the stream was answered.
    GoAway(u32),
    /// The connection ended first.
    Closed,
}

/// What happened next on one stream of a raw client.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// A header block: the status (when decodable), and whether it ended the stream.
    Head(Option<u16>, bool),
    /// Data, and whether it ended the stream.
    Data(Bytes, bool),
    /// RST_STREAM with this error code.
    Reset(u32),
    /// GOAWAY with this error code, not covering the stream.
    GoAway(u32),
    /// The connection ended.
    Closed,
}

/// A HEADERS frame opening a WebSocket by extended CONNECT over h2c on `stream`,
/// with `extra` fields; the stream stays open.
pub fn extended_connect_frame(
    stream: u32,
    authority: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let mut fields = vec![
        (":method", "CONNECT"),
        (":protocol", "websocket"),
        (":scheme", "http"),
        (":authority", authority),
        (":path", path),
        ("sec-websocket-version", "13"),
    ];
    fields.extend_from_slice(extra);
    headers(stream, &fields, false)
}

/// A raw HTTP/2 client over TCP: frames are written and read as they are.
pub struct RawH2 {
    pub r: FrameReader,
    pub w: OwnedWriteHalf,
}

impl RawH2 {
    /// Connects and writes the preface with a SETTINGS frame of `pairs` plus a
    /// header table size of 0 (see [`status_of_block`]).
    pub async fn connect(addr: SocketAddr, pairs: &[(u16, u32)]) -> RawH2 {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (r, w) = tcp.into_split();
        let mut raw = RawH2 {
            r: FrameReader {
                io: r,
                buf: BytesMut::new(),
            },
            w,
        };
        let mut all = vec![(SETTINGS_HEADER_TABLE_SIZE, 0)];
        all.extend_from_slice(pairs);
        let mut out = PREFACE.to_vec();
        out.extend(settings(&all));
        raw.send(&out).await;
        raw
    }

    /// Connects, reads the server's SETTINGS (failing the test when the first frame
    /// is anything else) and acknowledges them; returns them.
    pub async fn handshake(addr: SocketAddr, pairs: &[(u16, u32)]) -> (RawH2, Vec<(u16, u32)>) {
        let mut raw = RawH2::connect(addr, pairs).await;
        let first = within("server SETTINGS", raw.r.next())
            .await
            .expect("the server answers the preface");
        assert!(
            first.kind == SETTINGS && !first.has(ACK),
            "the first frame is not SETTINGS: {first:?}"
        );
        raw.send(&frame(SETTINGS, ACK, 0, &[])).await;
        (raw, first.settings())
    }

    /// Writes bytes; a failed write (the server hung up) is ignored, to be seen
    /// when reading.
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = within("raw h2 write", self.w.write_all(bytes)).await;
    }

    /// The next event on stream `id`, within [`super::STEP`]. Acknowledges SETTINGS,
    /// answers PINGs and gives back window for the data it reads, meanwhile.
    pub async fn event(&mut self, id: u32) -> Event {
        within("raw h2 event", async {
            loop {
                let Some(f) = self.r.next().await else {
                    return Event::Closed;
                };
                match f.kind {
                    SETTINGS if !f.has(ACK) => self.send(&frame(SETTINGS, ACK, 0, &[])).await,
                    PING if !f.has(ACK) => self.send(&frame(PING, ACK, 0, &f.payload)).await,
                    GOAWAY => {
                        // Streams up to the last one are still answered.
                        let last = u32::from_be_bytes(f.payload[..4].try_into().unwrap());
                        if last < id {
                            return Event::GoAway(f.error_code());
                        }
                    }
                    RST_STREAM if f.stream == id => return Event::Reset(f.error_code()),
                    HEADERS if f.stream == id => {
                        return Event::Head(status_of_block(&f.payload), f.has(END_STREAM));
                    }
                    DATA if f.stream == id => {
                        if !f.payload.is_empty() {
                            let n = (f.payload.len() as u32).to_be_bytes();
                            self.send(&frame(WINDOW_UPDATE, 0, 0, &n)).await;
                            if !f.has(END_STREAM) {
                                self.send(&frame(WINDOW_UPDATE, 0, id, &n)).await;
                            }
                        }
                        let end = f.has(END_STREAM);
                        return Event::Data(f.payload, end);
                    }
                    _ => {}
                }
            }
        })
        .await
    }

    /// Reads until stream `id` is answered (to its END_STREAM), reset, or the
    /// connection ends.
    pub async fn outcome(&mut self, id: u32) -> Outcome {
        let mut status = None;
        let mut body = Vec::new();
        loop {
            match self.event(id).await {
                Event::Head(s, end) => {
                    status = status.or(s);
                    if end {
                        return Outcome::Response(status, body);
                    }
                }
                Event::Data(d, end) => {
                    body.extend_from_slice(&d);
                    if end {
                        return Outcome::Response(status, body);
                    }
                }
                Event::Reset(code) => return Outcome::Reset(code),
                Event::GoAway(code) => return Outcome::GoAway(code),
                Event::Closed => return Outcome::Closed,
            }
        }
    }

    /// Reads the response head of stream `id`; fails the test if the stream ends
    /// otherwise.
    pub async fn head(&mut self, id: u32) -> Option<u16> {
        match self.event(id).await {
            Event::Head(status, _) => status,
            other => panic!("stream {id}: expected a response head, got {other:?}"),
        }
    }
}
