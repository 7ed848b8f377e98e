//! The client side of a WebSocket connection: connect (over TLS too, with `tls.rs`),
//! the opening handshake, and the simple (one operation at a time) reads and writes
//! that the handshake, idle and close paths use. The windowed hot loop lives in
//! `echo.rs`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;

use crate::frame::{self, Header, RecvBuf};
use crate::stats::Failure;
use crate::tls;

/// The largest response head accepted from the proxy.
const MAX_HEAD: usize = 16 * 1024;
/// The largest frame accepted from the proxy: well above any message size a run may
/// ask for, so that only a corrupt length hits it.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// The `Host` header.
    pub host: String,
    pub path: String,
    /// The limit for each single step (connect, handshake, one echo, close).
    pub step: Duration,
    /// TLS over each connection (wss://, https://), for the modes that can.
    pub tls: Option<Arc<tls::Client>>,
}

/// A stream a mode can open to the target: plain TCP, or TLS over it. The modes
/// that speak both are generic over it, so the plain path is what it always was.
pub trait Dial: AsyncRead + AsyncWrite + Unpin + Send + Sized + 'static {
    fn dial(t: &Target) -> impl Future<Output = Result<Self, Failure>> + Send;
}

impl Dial for TcpStream {
    async fn dial(t: &Target) -> Result<Self, Failure> {
        connect(t).await
    }
}

impl Dial for TlsStream<TcpStream> {
    async fn dial(t: &Target) -> Result<Self, Failure> {
        let Some(client) = &t.tls else {
            return Err(Failure::new("tls", "no TLS configuration"));
        };
        client.handshake(connect(t).await?, t.step).await
    }
}

/// Connects with `TCP_NODELAY`, as every WebSocket client that cares about latency does.
pub async fn connect(t: &Target) -> Result<TcpStream, Failure> {
    let s = match timeout(t.step, TcpStream::connect(t.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Failure::new("connect", e.to_string())),
        Err(_) => return Err(Failure::new("connect", "timed out")),
    };
    s.set_nodelay(true)
        .map_err(|e| Failure::new("connect", e.to_string()))?;
    Ok(s)
}

/// A small fast generator for handshake keys and mask keys; the values need to
/// differ, not to be secret.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Sends the opening handshake with a fresh key and checks the answer: status 101,
/// `Upgrade: websocket`, `Connection: upgrade` and the `Sec-WebSocket-Accept` for
/// that key. Bytes after the head (frames the server sent at once) stay in `rbuf`.
pub async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    rbuf: &mut RecvBuf,
    t: &Target,
    rng: &mut Rng,
) -> Result<(), Failure> {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&rng.next().to_le_bytes());
    raw[8..].copy_from_slice(&rng.next().to_le_bytes());
    let key = BASE64.encode(raw);
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        t.path, t.host
    );
    let step = async {
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| Failure::new("handshake", format!("write: {e}")))?;
        let head_len = read_head(s, rbuf).await?;
        let result = check_101(&rbuf.filled()[..head_len], &key);
        rbuf.consume(head_len);
        result
    };
    match timeout(t.step, step).await {
        Ok(r) => r,
        Err(_) => Err(Failure::new("handshake", "timed out")),
    }
}

/// Reads until `rbuf` holds a whole response head; returns its length.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S, rbuf: &mut RecvBuf) -> Result<usize, Failure> {
    let mut searched = 0usize;
    loop {
        let filled = rbuf.filled();
        if let Some(i) = find(&filled[searched.saturating_sub(3)..], b"\r\n\r\n") {
            return Ok(searched.saturating_sub(3) + i + 4);
        }
        searched = filled.len();
        if searched >= MAX_HEAD {
            return Err(Failure::new("handshake", "response head too long"));
        }
        let n = s
            .read(rbuf.spare(4096))
            .await
            .map_err(|e| Failure::new("handshake", format!("read: {e}")))?;
        if n == 0 {
            return Err(Failure::new(
                "handshake",
                "connection closed before a response",
            ));
        }
        rbuf.advance(n);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Checks a response head against the key sent.
fn check_101(head: &[u8], key: &str) -> Result<(), Failure> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(Failure::new("handshake", "partial head")),
        Err(e) => return Err(Failure::new("handshake", format!("bad response: {e}"))),
    }
    if resp.code != Some(101) {
        return Err(Failure::new(
            "handshake_status",
            format!("status {} instead of 101", resp.code.unwrap_or(0)),
        ));
    }
    let has = |name: &str, token: &str| {
        resp.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case(name)
                && h.value
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    if !has("upgrade", "websocket") || !has("connection", "upgrade") {
        return Err(Failure::new(
            "handshake",
            "101 without Upgrade: websocket and Connection: upgrade",
        ));
    }
    let expected = accept_for(key);
    let accept = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|h| h.value.trim_ascii());
    if accept != Some(expected.as_bytes()) {
        return Err(Failure::new(
            "handshake_accept",
            "Sec-WebSocket-Accept missing or wrong",
        ));
    }
    Ok(())
}

/// base64(SHA-1(key ++ GUID)), RFC 6455 §4.2.2.
pub fn accept_for(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    BASE64.encode(sha.finalize())
}

/// Reads until `rbuf` starts with one whole frame and returns its header: the caller
/// reads the payload at `rbuf.filled()[header_len..frame_len]` and then consumes it.
/// `Ok(None)` is a clean end of stream before any byte of a frame.
pub async fn read_frame<S: AsyncRead + Unpin>(
    s: &mut S,
    rbuf: &mut RecvBuf,
) -> Result<Option<Header>, Failure> {
    loop {
        let want = match frame::parse_header(rbuf.filled(), MAX_FRAME) {
            Err(e) => return Err(Failure::new("protocol", e.to_string())),
            Ok(Some(h)) if h.mask.is_some() => {
                return Err(Failure::new("protocol", "the server sent a masked frame"));
            }
            Ok(Some(h)) if rbuf.filled().len() >= h.frame_len() => {
                return Ok(Some(h));
            }
            Ok(Some(h)) => h.frame_len() - rbuf.filled().len(),
            Ok(None) => frame::MAX_HEADER,
        };
        let n = s
            .read(rbuf.spare(want.max(4096)))
            .await
            .map_err(|e| Failure::new("io", format!("read: {e}")))?;
        if n == 0 {
            if rbuf.is_empty() {
                return Ok(None);
            }
            return Err(Failure::new("closed", "end of stream inside a frame"));
        }
        rbuf.advance(n);
    }
}

/// Sends one masked message and checks that the next message back is the same bytes.
/// Pings met on the way are answered; anything else is an error.
pub async fn echo_once<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    rbuf: &mut RecvBuf,
    framed: &[u8],
    payload: &[u8],
    mask: [u8; 4],
    step: Duration,
) -> Result<(), Failure> {
    let run = async {
        s.write_all(framed)
            .await
            .map_err(|e| Failure::new("io", format!("write: {e}")))?;
        loop {
            let Some(h) = read_frame(s, rbuf).await? else {
                return Err(Failure::new("closed", "closed before the echo"));
            };
            let body = &rbuf.filled()[h.header_len..h.frame_len()];
            match h.opcode {
                frame::OP_PING => {
                    let mut pong = Vec::with_capacity(h.len + frame::MAX_HEADER);
                    frame::write_frame(&mut pong, frame::OP_PONG, body, Some(mask));
                    rbuf.consume(h.frame_len());
                    s.write_all(&pong)
                        .await
                        .map_err(|e| Failure::new("io", format!("write: {e}")))?;
                }
                frame::OP_PONG => rbuf.consume(h.frame_len()),
                frame::OP_CLOSE => {
                    return Err(Failure::new("closed", "close frame instead of the echo"));
                }
                _ if !h.fin => {
                    // Unfragmented messages are what a transparent proxy passes on; a
                    // split here would have to come from the echo, which never splits.
                    return Err(Failure::new("protocol", "fragmented echo"));
                }
                _ => {
                    let ok = body == payload;
                    rbuf.consume(h.frame_len());
                    return if ok {
                        Ok(())
                    } else {
                        Err(Failure::new("mismatch", "echo differs from what was sent"))
                    };
                }
            }
        }
    };
    match timeout(step, run).await {
        Ok(r) => r,
        Err(_) => Err(Failure::new("timeout", "no echo in time")),
    }
}

/// The closing handshake as a client does it: send a close frame, read up to the
/// server's close frame, then wait for the server to end the TCP connection first
/// (RFC 6455 §7.1.1), which leaves TIME_WAIT on the server's side. Over TLS the
/// server may end it with or without a close_notify first: both are an end.
pub async fn close<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    rbuf: &mut RecvBuf,
    mask: [u8; 4],
    step: Duration,
) -> Result<(), Failure> {
    let run = async {
        let mut out = Vec::with_capacity(8);
        frame::write_frame(
            &mut out,
            frame::OP_CLOSE,
            &1000u16.to_be_bytes(),
            Some(mask),
        );
        s.write_all(&out)
            .await
            .map_err(|e| Failure::new("close", format!("write: {e}")))?;
        loop {
            let Some(h) = read_frame(s, rbuf).await? else {
                return Err(Failure::new("close", "closed without a close frame"));
            };
            rbuf.consume(h.frame_len());
            match h.opcode {
                frame::OP_CLOSE => break,
                frame::OP_PING | frame::OP_PONG => {}
                _ => return Err(Failure::new("close", "a message after close")),
            }
        }
        let mut b = [0u8; 64];
        match s.read(&mut b).await {
            Ok(0) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(()),
            Ok(_) => Err(Failure::new("close", "bytes after the close frame")),
            Err(e) => Err(Failure::new("close", format!("read: {e}"))),
        }
    };
    match timeout(step, run).await {
        Ok(r) => r,
        Err(_) => Err(Failure::new("close", "timed out")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_matches_the_rfc_example() {
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn checks_101_heads() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let good = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert!(check_101(good, key).is_ok());
        let wrong = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAALMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert_eq!(check_101(wrong, key).unwrap_err().kind, "handshake_accept");
        let bad = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(check_101(bad, key).unwrap_err().kind, "handshake_status");
    }
}
