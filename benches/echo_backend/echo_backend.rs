//! echo_backend: the upstream of the benchmark. A WebSocket echo server working on
//! frames (each message comes back unmasked, pings get pongs, a close gets a close)
//! that also answers plain `GET`s with 200 and a small fixed body over keep-alive.
//! With `--grpc-listen` it also serves gRPC unary calls over h2c on a second port
//! (`grpc.rs`), and `GET /grpc-counts` on the first says what that port has done.
//!
//! It runs on one thread by default so that it can share a core with the load
//! generator and leave the other to the proxy under test.

#[path = "../common/frame.rs"]
mod frame;
mod grpc;

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::Parser;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::frame::RecvBuf;

/// A WebSocket echo and plain-HTTP backend for benchmarks (loopback only).
#[derive(Parser)]
#[command(about)]
struct Args {
    /// Where to listen; port 0 picks one. The address is printed on stdout.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Also serve gRPC over HTTP/2 with prior knowledge here (port 0 picks one).
    #[arg(long, value_name = "ADDR")]
    grpc_listen: Option<SocketAddr>,
    /// Runtime threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Length of the fixed body `GET` answers with.
    #[arg(long, default_value_t = 128)]
    body_len: usize,
    /// The largest frame accepted; larger closes the connection with 1009.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    max_frame: usize,
}

/// The longest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Read size while tunnelling: large messages arrive in few reads.
const READ: usize = 64 * 1024;

/// What every connection shares, made once.
struct Shared {
    /// The whole `200` response, head and body.
    ok_response: Vec<u8>,
    max_frame: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    for addr in std::iter::once(args.listen).chain(args.grpc_listen) {
        if !addr.ip().is_loopback() {
            eprintln!(
                "echo_backend: {addr} is not a loopback address; this server is for local benchmarks only"
            );
            return ExitCode::from(2);
        }
    }
    if !(1..=256).contains(&args.threads) || args.body_len > 1 << 20 {
        eprintln!("echo_backend: --threads must be 1 to 256 and --body-len at most 1 MiB");
        return ExitCode::from(2);
    }
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("echo_backend: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let body: Vec<u8> = (0..args.body_len).map(|i| b'a' + (i % 26) as u8).collect();
    let mut ok_response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    ok_response.extend_from_slice(&body);
    let shared: &'static Shared = Box::leak(Box::new(Shared {
        ok_response,
        max_frame: args.max_frame,
    }));
    let run = async {
        if let Some(addr) = args.grpc_listen {
            let listener = listen(addr)?;
            println!("grpc (h2c) listening on {}", listener.local_addr()?);
            tokio::spawn(grpc::serve(listener));
        }
        serve(listen(args.listen)?, shared).await
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo_backend: {e}");
            ExitCode::FAILURE
        }
    }
}

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    // A deep backlog: thousands of tunnels are opened at once through the proxy.
    socket.listen(4096)
}

async fn serve(listener: TcpListener, shared: &'static Shared) -> io::Result<()> {
    println!("listening on {}", listener.local_addr()?);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    // A connection's failure is its own; the server goes on.
                    let _ = connection(stream, shared).await;
                });
            }
            // Out of descriptors or similar: wait for some to be freed.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// What one request asks for.
enum Request {
    Upgrade {
        accept: String,
    },
    Get {
        keep_alive: bool,
    },
    /// `GET /grpc-counts`: answered with the gRPC port's counts, then closed.
    GrpcCounts,
    Refuse {
        status: &'static str,
    },
}

/// Serves HTTP requests until one upgrades the connection or it ends.
async fn connection(mut s: TcpStream, shared: &Shared) -> io::Result<()> {
    let mut rbuf = RecvBuf::with_capacity(4096);
    let mut out: Vec<u8> = Vec::new();
    loop {
        // Answer every whole request already here (pipelined ones too) in one write.
        while let Some((len, req)) = parse_request(rbuf.filled()) {
            rbuf.consume(len);
            match req {
                Request::Get { keep_alive } => {
                    out.extend_from_slice(&shared.ok_response);
                    if !keep_alive {
                        s.write_all(&out).await?;
                        return s.shutdown().await;
                    }
                }
                Request::Upgrade { accept } => {
                    out.extend_from_slice(
                        format!(
                            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                             Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                        )
                        .as_bytes(),
                    );
                    s.write_all(&out).await?;
                    out.clear();
                    return websocket(s, rbuf, out, shared).await;
                }
                Request::GrpcCounts => {
                    let counts = grpc::COUNTS.text();
                    out.extend_from_slice(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{counts}",
                            counts.len()
                        )
                        .as_bytes(),
                    );
                    s.write_all(&out).await?;
                    return s.shutdown().await;
                }
                Request::Refuse { status } => {
                    out.extend_from_slice(
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    );
                    s.write_all(&out).await?;
                    return s.shutdown().await;
                }
            }
        }
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
        }
        if rbuf.filled().len() >= MAX_HEAD {
            s.write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await?;
            return s.shutdown().await;
        }
        let n = s.read(rbuf.spare(4096)).await?;
        if n == 0 {
            return Ok(());
        }
        rbuf.advance(n);
    }
}

/// Parses one whole request head at the start of `buf`; `None` until it is whole
/// (a malformed head becomes a refusal, which ends the connection).
fn parse_request(buf: &[u8]) -> Option<(usize, Request)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return None,
        Err(_) => {
            return Some((
                buf.len(),
                Request::Refuse {
                    status: "400 Bad Request",
                },
            ));
        }
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let has_token = |name: &str, token: &str| {
        req.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case(name)
                && h.value
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    // Bodies are not part of this server's job; a request with one is refused rather
    // than misread as the start of the next.
    let has_body = header("transfer-encoding").is_some()
        || header("content-length").is_some_and(|v| v.iter().any(|&b| b != b'0'));
    let method = req.method.unwrap_or("");
    let request = if has_body {
        Request::Refuse {
            status: "400 Bad Request",
        }
    } else if method == "GET" && has_token("upgrade", "websocket") {
        match header("sec-websocket-key") {
            Some(key) if has_token("connection", "upgrade") => Request::Upgrade {
                accept: accept_for(key),
            },
            _ => Request::Refuse {
                status: "400 Bad Request",
            },
        }
    } else if method == "GET" && req.path == Some("/grpc-counts") {
        Request::GrpcCounts
    } else if method == "GET" || method == "HEAD" {
        let keep_alive = if has_token("connection", "close") {
            false
        } else {
            req.version == Some(1) || has_token("connection", "keep-alive")
        };
        Request::Get { keep_alive }
    } else {
        Request::Refuse {
            status: "405 Method Not Allowed",
        }
    };
    Some((len, request))
}

fn accept_for(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key.trim_ascii());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    BASE64.encode(sha.finalize())
}

/// Echoes frames until the client closes. Each data frame goes back as it came,
/// unmasked, with its FIN bit and opcode, so fragmented messages echo fragmented.
async fn websocket(
    mut s: TcpStream,
    mut rbuf: RecvBuf,
    mut out: Vec<u8>,
    shared: &Shared,
) -> io::Result<()> {
    let mut need = 0;
    loop {
        let mut done = false;
        loop {
            let buf = rbuf.filled_mut();
            let h = match frame::parse_header(buf, shared.max_frame) {
                Ok(Some(h)) => h,
                Ok(None) => {
                    need = frame::MAX_HEADER;
                    break;
                }
                Err(e) => {
                    let code: u16 = match e {
                        frame::FrameError::TooLong(_) => 1009,
                        _ => 1002,
                    };
                    frame::write_frame(&mut out, frame::OP_CLOSE, &code.to_be_bytes(), None);
                    done = true;
                    break;
                }
            };
            let Some(mask) = h.mask else {
                // Clients must mask (RFC 6455 §5.1).
                frame::write_frame(&mut out, frame::OP_CLOSE, &1002u16.to_be_bytes(), None);
                done = true;
                break;
            };
            if buf.len() < h.frame_len() {
                need = h.frame_len();
                break;
            }
            let payload = &mut buf[h.header_len..h.frame_len()];
            frame::apply_mask(payload, mask);
            match h.opcode {
                frame::OP_PING => frame::write_frame(&mut out, frame::OP_PONG, payload, None),
                frame::OP_PONG => {}
                frame::OP_CLOSE => {
                    // Answer with the status code the client sent, if any.
                    let code = payload.get(..2).unwrap_or(&[]);
                    frame::write_frame(&mut out, frame::OP_CLOSE, code, None);
                    done = true;
                }
                op => {
                    frame::write_header(&mut out, h.fin, op, payload.len(), None);
                    out.extend_from_slice(payload);
                }
            }
            rbuf.consume(h.frame_len());
            if done {
                break;
            }
        }
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
            if out.capacity() > 4 * READ {
                out.shrink_to(READ);
            }
        }
        if done {
            // The server ends the TCP connection first (RFC 6455 §7.1.1).
            return s.shutdown().await;
        }
        // Wait for bytes before taking read room: an idle tunnel keeps its buffer small.
        s.readable().await?;
        match s.try_read(rbuf.spare(need.max(READ))) {
            Ok(0) => return Ok(()),
            Ok(n) => rbuf.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_requests() {
        let up = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        match parse_request(up) {
            Some((n, Request::Upgrade { accept })) => {
                assert_eq!(n, up.len());
                assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
            }
            _ => panic!("not an upgrade"),
        }
        let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET";
        assert!(matches!(
            parse_request(get),
            Some((27, Request::Get { keep_alive: true }))
        ));
        let close = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n";
        assert!(matches!(
            parse_request(close),
            Some((_, Request::Get { keep_alive: false }))
        ));
        assert!(parse_request(b"GET / HTTP/1.1\r\nHost").is_none());
        assert!(matches!(
            parse_request(b"GET /grpc-counts HTTP/1.1\r\n\r\n"),
            Some((_, Request::GrpcCounts))
        ));
        let post = b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        assert!(matches!(
            parse_request(post),
            Some((_, Request::Refuse { .. }))
        ));
    }
}
