//! The `http` mode: keep-alive `GET`s, one in flight per connection, each response
//! checked for status 200 and the expected body length; over TLS too (https).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, sleep_until, timeout};
use tokio_rustls::client::TlsStream;

use crate::frame::RecvBuf;
use crate::probe::{Probe, Usage};
use crate::stats::{Errors, Failure, Latencies, Recorder, Window};
use crate::ws::{Dial, Target};

#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// The body length every response must have; `None` accepts any.
    pub body_len: Option<usize>,
}

#[derive(Debug)]
pub struct Outcome {
    pub requests: u64,
    pub measured: Duration,
    /// Connections the server closed, so that a new one had to be opened.
    pub reconnects: u64,
    pub errors: Errors,
    pub latency: Latencies,
    pub usage: Usage,
}

/// The largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// The largest body accepted; bodies are read whole.
const MAX_BODY: usize = 16 * 1024 * 1024;

pub async fn run(target: Arc<Target>, p: Params, probe: &Probe) -> Outcome {
    let latency = Latencies::new();
    let request: Arc<[u8]> = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: sluice-loadgen\r\n\r\n",
        target.path, target.host
    )
    .into_bytes()
    .into();
    let w = Window::new(p.warmup, p.duration);
    let mut tasks = Vec::with_capacity(p.connections);
    for _ in 0..p.connections {
        let (target, request) = (target.clone(), request.clone());
        let rec = latency.recorder();
        tasks.push(if target.tls.is_some() {
            tokio::spawn(worker::<TlsStream<TcpStream>>(target, request, p, w, rec))
        } else {
            tokio::spawn(worker::<TcpStream>(target, request, p, w, rec))
        });
    }

    sleep_until(w.measure_from.into()).await;
    let before = probe.sample();
    sleep_until(w.until.into()).await;
    let after = probe.sample();

    let mut out = Outcome {
        requests: 0,
        measured: w.measured(),
        reconnects: 0,
        errors: Errors::default(),
        latency,
        usage: Usage::between(&before, &after),
    };
    for t in tasks {
        match t.await {
            Ok((n, r, e)) => {
                out.requests += n;
                out.reconnects += r;
                out.errors.merge(&e);
            }
            Err(e) => out.errors.add(&Failure::new("task", e.to_string())),
        }
    }
    out
}

/// One connection's requests, in turn, until the end of the run; a new connection
/// when the server closes one. Returns the responses counted, the reconnections,
/// and the errors.
async fn worker<S: Dial>(
    target: Arc<Target>,
    request: Arc<[u8]>,
    p: Params,
    w: Window,
    mut rec: Recorder,
) -> (u64, u64, Errors) {
    let (mut count, mut reconnects, mut errors) = (0u64, 0u64, Errors::default());
    let mut conn: Option<S> = None;
    let mut rbuf = RecvBuf::with_capacity(16 * 1024);
    while Instant::now() < w.until {
        let s = match conn.as_mut() {
            Some(s) => s,
            None => match S::dial(&target).await {
                Ok(s) => conn.insert(s),
                Err(f) => {
                    errors.add(&f);
                    sleep(Duration::from_millis(1)).await;
                    continue;
                }
            },
        };
        let t0 = Instant::now();
        match timeout(target.step, exchange(s, &mut rbuf, &request, p.body_len)).await {
            Ok(Ok(keep_alive)) => {
                let t1 = Instant::now();
                if w.measuring(t1) {
                    count += 1;
                    rec.record(t1 - t0);
                }
                if !keep_alive {
                    conn = None;
                    reconnects += 1;
                }
            }
            Ok(Err(f)) => {
                errors.add(&f);
                conn = None;
                rbuf = RecvBuf::with_capacity(16 * 1024);
            }
            Err(_) => {
                errors.add(&Failure::new("timeout", "no response in time"));
                conn = None;
                rbuf = RecvBuf::with_capacity(16 * 1024);
            }
        }
    }
    (count, reconnects, errors)
}

/// One request and its response; returns whether the connection stays open.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    rbuf: &mut RecvBuf,
    request: &[u8],
    body_len: Option<usize>,
) -> Result<bool, Failure> {
    s.write_all(request)
        .await
        .map_err(|e| Failure::new("io", format!("write: {e}")))?;
    loop {
        match parse_response(rbuf.filled())? {
            Parsed::Complete {
                len,
                status,
                body,
                keep_alive,
            } => {
                rbuf.consume(len);
                if status != 200 {
                    return Err(Failure::new("status", format!("status {status}")));
                }
                if let Some(want) = body_len
                    && body != want
                {
                    return Err(Failure::new(
                        "body",
                        format!("body of {body} bytes, expected {want}"),
                    ));
                }
                return Ok(keep_alive);
            }
            Parsed::Partial { need } => {
                let n = s
                    .read(rbuf.spare(need.max(4096)))
                    .await
                    .map_err(|e| Failure::new("io", format!("read: {e}")))?;
                if n == 0 {
                    return Err(Failure::new("closed", "closed before a whole response"));
                }
                rbuf.advance(n);
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// More bytes are needed; at least `need` more would help.
    Partial { need: usize },
    /// A whole response of `len` bytes with a body of `body` bytes.
    Complete {
        len: usize,
        status: u16,
        body: usize,
        keep_alive: bool,
    },
}

/// Parses one whole response at the start of `buf`.
fn parse_response(buf: &[u8]) -> Result<Parsed, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(Failure::new("protocol", "response head too long"));
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial { need: 1 }),
        Err(e) => return Err(Failure::new("protocol", format!("bad response: {e}"))),
    };
    let status = resp.code.unwrap_or(0);
    let mut content_length = None;
    let mut chunked = false;
    let mut keep_alive = resp.version == Some(1);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| Failure::new("protocol", "bad Content-Length"))?;
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = has_token(h.value, "chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            if has_token(h.value, "close") {
                keep_alive = false;
            } else if has_token(h.value, "keep-alive") {
                keep_alive = true;
            }
        }
    }
    let rest = &buf[head..];
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Parsed::Complete {
            len: head,
            status,
            body: 0,
            keep_alive,
        });
    }
    if chunked {
        return Ok(match chunked_body(rest)? {
            Some((used, body)) => Parsed::Complete {
                len: head + used,
                status,
                body,
                keep_alive,
            },
            None => Parsed::Partial { need: 1 },
        });
    }
    match content_length {
        Some(n) if n > MAX_BODY => Err(Failure::new("protocol", "body too long")),
        Some(n) if rest.len() >= n => Ok(Parsed::Complete {
            len: head + n,
            status,
            body: n,
            keep_alive,
        }),
        Some(n) => Ok(Parsed::Partial {
            need: n - rest.len(),
        }),
        // A body that runs to the end of the connection: not what a keep-alive
        // benchmark can use.
        None => Err(Failure::new(
            "protocol",
            "response without Content-Length or chunked",
        )),
    }
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Parses a whole chunked body; returns the bytes it spans and the body length, or
/// `None` when it is not all there yet.
fn chunked_body(buf: &[u8]) -> Result<Option<(usize, usize)>, Failure> {
    let bad = |what: &str| Failure::new("protocol", format!("bad chunked body: {what}"));
    let line_end = |from: usize| {
        buf.get(from..)
            .and_then(|b| b.windows(2).position(|w| w == b"\r\n"))
    };
    let (mut at, mut total) = (0usize, 0usize);
    loop {
        let Some(eol) = line_end(at) else {
            return Ok(None);
        };
        let line = &buf[at..at + eol];
        let size = line.split(|&b| b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(size)
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .ok_or_else(|| bad("chunk size"))?;
        at += eol + 2;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let Some(eol) = line_end(at) else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some((at, total)));
                }
            }
        }
        total = total
            .checked_add(size)
            .filter(|&t| t <= MAX_BODY)
            .ok_or_else(|| bad("too long"))?;
        let Some(end) = buf.get(at + size..at + size + 2) else {
            return Ok(None);
        };
        if end != b"\r\n" {
            return Err(bad("missing CRLF after a chunk"));
        }
        at += size + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_responses() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1";
        assert_eq!(
            parse_response(r).unwrap(),
            Parsed::Complete {
                len: 43,
                status: 200,
                body: 5,
                keep_alive: true
            }
        );
        let partial = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel";
        assert_eq!(
            parse_response(partial).unwrap(),
            Parsed::Partial { need: 2 }
        );
    }

    #[test]
    fn parses_chunked_responses() {
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        match parse_response(r).unwrap() {
            Parsed::Complete {
                len,
                body,
                keep_alive,
                ..
            } => {
                assert_eq!((len, body, keep_alive), (r.len(), 5, false));
            }
            p => panic!("{p:?}"),
        }
        assert_eq!(chunked_body(b"3\r\nab").unwrap(), None);
        assert!(chunked_body(b"3\r\nabcXX").is_err());
    }
}
