//! The gRPC side of the backend: HTTP/2 with prior knowledge (h2c) on its own port,
//! answering any unary call with the message it was sent, for the gRPC row.
//!
//! A call is answered only when it is what a proxy should have passed on: HTTP/2,
//! `POST`, `content-type: application/grpc`, `te: trailers`, and a body that is one
//! whole uncompressed gRPC message. It then gets `200`, the same message back and a
//! `grpc-status: 0` trailer. Anything else gets gRPC's INVALID_ARGUMENT and is
//! counted apart. h2load sees HTTP statuses only, so the load generator reads these
//! counts (`GET /grpc-counts` on the plain port) at the edges of its measured
//! interval to check that the calls it counted as answered were answered here.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, TE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Version};
use http_body::{Body, Frame};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// What the gRPC port has done since it started.
pub struct Counts {
    /// Calls answered with their message and `grpc-status: 0`.
    ok: AtomicU64,
    /// Calls refused (not HTTP/2, not gRPC, or a malformed message).
    refused: AtomicU64,
    /// TCP connections accepted; the port speaks nothing but HTTP/2.
    connections: AtomicU64,
}

pub static COUNTS: Counts = Counts {
    ok: AtomicU64::new(0),
    refused: AtomicU64::new(0),
    connections: AtomicU64::new(0),
};

impl Counts {
    /// The body of `GET /grpc-counts`: one `name value` line each.
    pub fn text(&self) -> String {
        format!(
            "ok {}\nrefused {}\nconnections {}\n",
            self.ok.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.connections.load(Ordering::Relaxed)
        )
    }
}

/// Serves h2c connections until the process ends.
pub async fn serve(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                COUNTS.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let conn = http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service_fn(call));
                    // A connection's failure is its own; the server goes on.
                    let _ = conn.await;
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn call(req: Request<Incoming>) -> Result<Response<Reply>, Infallible> {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let grpc = req.version() == Version::HTTP_2
        && req.method() == Method::POST
        && header(CONTENT_TYPE).is_some_and(|v| v.starts_with("application/grpc"))
        && header(TE) == Some("trailers");
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    Ok(match body {
        Ok(message) if grpc && one_message(&message) => {
            COUNTS.ok.fetch_add(1, Ordering::Relaxed);
            reply(Some(message), "0")
        }
        _ => {
            COUNTS.refused.fetch_add(1, Ordering::Relaxed);
            // INVALID_ARGUMENT, as a trailers-only response.
            reply(None, "3")
        }
    })
}

/// Whether `b` is exactly one uncompressed length-prefixed gRPC message.
fn one_message(b: &[u8]) -> bool {
    match b {
        [0, a, b, c, d, rest @ ..] => u32::from_be_bytes([*a, *b, *c, *d]) as usize == rest.len(),
        _ => false,
    }
}

/// `200` with `message` and then `grpc-status` in trailers, or with no message the
/// status in the headers (gRPC's trailers-only form).
fn reply(message: Option<Bytes>, status: &'static str) -> Response<Reply> {
    let mut grpc_status = HeaderMap::new();
    grpc_status.insert("grpc-status", HeaderValue::from_static(status));
    let (head_extra, body) = match message {
        Some(m) => (
            HeaderMap::new(),
            Reply {
                data: Some(m),
                trailers: Some(grpc_status),
            },
        ),
        None => (
            grpc_status,
            Reply {
                data: None,
                trailers: None,
            },
        ),
    };
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.extend(head_extra);
    res
}

/// A response body of at most one data frame followed by trailers.
pub struct Reply {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for Reply {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let frame = match this.data.take() {
            Some(d) => Some(Frame::data(d)),
            None => this.trailers.take().map(Frame::trailers),
        };
        Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_one_whole_message() {
        assert!(one_message(&[0, 0, 0, 0, 2, b'h', b'i']));
        assert!(one_message(&[0, 0, 0, 0, 0]));
        // Compressed, short, long, or no prefix at all.
        assert!(!one_message(&[1, 0, 0, 0, 2, b'h', b'i']));
        assert!(!one_message(&[0, 0, 0, 0, 3, b'h', b'i']));
        assert!(!one_message(&[0, 0, 0, 0, 1, b'h', b'i']));
        assert!(!one_message(b"hi"));
    }
}
